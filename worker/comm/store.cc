#include "worker/comm/store.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/fs.h"
#include "common/status.h"

namespace llmt::comm {
namespace {

using Clock = std::chrono::steady_clock;

std::string MissingKeysError(const std::vector<std::string>& missing) {
  std::vector<std::string> quoted;
  for (const auto& k : missing) quoted.push_back(absl::StrCat("'", k, "'"));
  return absl::StrJoin(quoted, ", ");
}

// Percent-encodes everything but [A-Za-z0-9_-] and non-leading '.', so any
// key is one safe file name that cannot collide with our ".tmp-" files.
std::string EncodeKey(const std::string& key) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (size_t i = 0; i < key.size(); ++i) {
    const unsigned char c = key[i];
    if (isalnum(c) || c == '_' || c == '-' || (c == '.' && i > 0)) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  if (out.empty()) out.push_back('%');  // the empty key
  // NAME_MAX is 255 on the filesystems we care about; long keys are hashed.
  if (out.size() > 200) out = "%h" + fs::Sha256Hex(key);
  return out;
}

// Reads `path` if it exists: value, NOT_FOUND if absent, or another error.
absl::StatusOr<std::string> ReadIfExists(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(path);
    return absl::UnavailableError(absl::StrCat("opening ", path, ": ", strerror(errno)));
  }
  std::string out;
  char buf[65536];
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(fd);
      return absl::UnavailableError(absl::StrCat("reading ", path, ": ", strerror(e)));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

}  // namespace

// ---- FileStore --------------------------------------------------------------

absl::StatusOr<std::unique_ptr<FileStore>> FileStore::Open(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("file store: empty directory path");
  RETURN_IF_ERROR(Annotate(fs::MakeDirs(dir), "file store"));
  return std::unique_ptr<FileStore>(new FileStore(dir));
}

std::string FileStore::PathOf(const std::string& key) const {
  return fs::JoinPath(dir_, EncodeKey(key));
}

absl::Status FileStore::Set(const std::string& key, const std::string& value) {
  static std::atomic<uint64_t> counter{0};
  const std::string path = PathOf(key);
  const std::string tmp = fs::JoinPath(
      dir_, absl::StrCat(".tmp-", getpid(), "-", counter.fetch_add(1), "-", EncodeKey(key)));
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("file store: creating ", tmp, ": ", strerror(errno)));
  }
  size_t done = 0;
  while (done < value.size()) {
    ssize_t n = write(fd, value.data() + done, value.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(fd);
      unlink(tmp.c_str());
      return absl::UnavailableError(absl::StrCat("file store: writing ", tmp, ": ", strerror(e)));
    }
    done += static_cast<size_t>(n);
  }
  // No fsync: rendezvous state only matters while the ranks run, and rename
  // alone already makes the value appear atomically to readers.
  if (close(fd) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    unlink(tmp.c_str());
    return absl::UnavailableError(
        absl::StrCat("file store: publishing key '", key, "' at ", path, ": ", strerror(e)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FileStore::Get(const std::string& key,
                                           std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  const std::string path = PathOf(key);
  auto sleep = std::chrono::microseconds(500);
  while (true) {
    absl::StatusOr<std::string> v = ReadIfExists(path);
    if (v.ok() || !absl::IsNotFound(v.status())) return v;
    if (Clock::now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("key '", key, "' was not set in ", Describe(),
                                                      " within ", timeout.count(), " ms"));
    }
    std::this_thread::sleep_for(std::min<std::chrono::microseconds>(
        sleep, std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now()) +
                   std::chrono::microseconds(100)));
    sleep = std::min<std::chrono::microseconds>(sleep * 2, std::chrono::milliseconds(20));
  }
}

absl::Status FileStore::Wait(const std::vector<std::string>& keys,
                             std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  auto sleep = std::chrono::microseconds(500);
  std::vector<std::string> missing = keys;
  while (true) {
    std::vector<std::string> still;
    for (const auto& k : missing) {
      if (access(PathOf(k).c_str(), F_OK) != 0) still.push_back(k);
    }
    missing.swap(still);
    if (missing.empty()) return absl::OkStatus();
    if (Clock::now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("keys ", MissingKeysError(missing),
                                                      " were not set in ", Describe(), " within ",
                                                      timeout.count(), " ms"));
    }
    std::this_thread::sleep_for(sleep);
    sleep = std::min<std::chrono::microseconds>(sleep * 2, std::chrono::milliseconds(20));
  }
}

// ---- MemoryStore ------------------------------------------------------------

void MemoryStore::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

absl::Status MemoryStore::Set(const std::string& key, const std::string& value) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return absl::UnavailableError("store is closed");
    kv_[key] = value;
  }
  cv_.notify_all();
  return absl::OkStatus();
}

absl::StatusOr<std::string> MemoryStore::Get(const std::string& key,
                                             std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return closed_ || kv_.count(key) > 0; });
  if (closed_) return absl::UnavailableError("store is closed");
  if (!kv_.count(key)) {
    return absl::DeadlineExceededError(absl::StrCat("key '", key, "' was not set in ", Describe(),
                                                    " within ", timeout.count(), " ms"));
  }
  return kv_[key];
}

absl::Status MemoryStore::Wait(const std::vector<std::string>& keys,
                               std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  auto all = [&] {
    return std::all_of(keys.begin(), keys.end(),
                       [&](const std::string& k) { return kv_.count(k) > 0; });
  };
  cv_.wait_for(lock, timeout, [&] { return closed_ || all(); });
  if (closed_) return absl::UnavailableError("store is closed");
  if (!all()) {
    std::vector<std::string> missing;
    for (const auto& k : keys) {
      if (!kv_.count(k)) missing.push_back(k);
    }
    return absl::DeadlineExceededError(absl::StrCat("keys ", MissingKeysError(missing),
                                                    " were not set in ", Describe(), " within ",
                                                    timeout.count(), " ms"));
  }
  return absl::OkStatus();
}

// ---- PrefixStore ------------------------------------------------------------

absl::Status PrefixStore::Wait(const std::vector<std::string>& keys,
                               std::chrono::milliseconds timeout) {
  std::vector<std::string> full;
  full.reserve(keys.size());
  for (const auto& k : keys) full.push_back(prefix_ + k);
  return base_->Wait(full, timeout);
}

}  // namespace llmt::comm
