// Tokenizer on top of SentencePiece, which is loaded at run time from the
// shim libllmt_spm.so (spm_shim.cc explains why: Debian's libsentencepiece
// bundles its own protobuf, which crashes a process that also uses
// libprotobuf unless it is isolated with RTLD_DEEPBIND). Errors travel as
// std::string, as in tokenizer.h.
#include "worker/data/tokenizer.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_map>
#include <vector>

#include <mutex>

#include <openssl/evp.h>

namespace llmt::data {
namespace {

std::string Sha256Hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(2 * len);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

bool ReadWhole(const std::string& path, std::string* out, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = "cannot open " + path + ": " + std::strerror(errno);
    return false;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) {
    *error = "cannot read " + path;
    return false;
  }
  *out = ss.str();
  return true;
}

// Writes and fsyncs `data` to `path` (the caller's staging directory is
// renamed into place later, so no temp-file dance is needed here).
bool WriteSynced(const std::string& path, const std::string& data, std::string* error) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    *error = "cannot create " + path + ": " + std::strerror(errno);
    return false;
  }
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      *error = "cannot write " + path + ": " + std::strerror(errno);
      ::close(fd);
      return false;
    }
    done += static_cast<size_t>(n);
  }
  bool ok = ::fsync(fd) == 0;
  if (::close(fd) != 0) ok = false;
  if (!ok) *error = "cannot sync " + path + ": " + std::strerror(errno);
  return ok;
}

// The shim's C ABI (see spm_shim.cc), resolved once per process.
struct SpmApi {
  void* (*load)(const char*, size_t, char**);
  void (*free_handle)(void*);
  void (*free_buf)(void*);
  void (*encode)(void*, const char*, size_t, int32_t**, size_t*);
  char* (*decode)(void*, const int32_t*, size_t, size_t*);
  int (*piece_size)(void*);
  int (*bos_id)(void*);
  int (*eos_id)(void*);
  char* (*id_to_piece)(void*, int);
  float (*score)(void*, int);
  int (*train)(const char* const*, const char* const*, int, const char*, unsigned, char**, size_t*,
               char**);
};

std::string ExeDir() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string p(buf, static_cast<size_t>(n));
  return p.substr(0, p.rfind('/'));
}

// Finds and loads libllmt_spm.so: $LLMT_SPM_LIB, next to the executable, the
// install layout (<prefix>/lib/llmt), then the build tree.
const SpmApi* Api(std::string* error) {
  static std::once_flag once;
  static SpmApi api;
  static std::string load_error;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("LLMT_SPM_LIB")) candidates.push_back(env);
    const std::string exe = ExeDir();
    candidates.push_back(exe + "/libllmt_spm.so");
    candidates.push_back(exe + "/../lib/llmt/libllmt_spm.so");
    candidates.push_back("/usr/local/lib/llmt/libllmt_spm.so");
    candidates.push_back("/usr/lib/llmt/libllmt_spm.so");
#ifdef LLMT_SPM_BUILD_PATH
    candidates.push_back(LLMT_SPM_BUILD_PATH);
#endif
    void* h = nullptr;
    std::string tried;
    for (const auto& c : candidates) {
      if (::access(c.c_str(), R_OK) != 0) {
        tried += " " + c;
        continue;
      }
      h = ::dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (h) break;
      tried += " " + c + " (" + ::dlerror() + ")";
    }
    if (!h) {
      load_error = "cannot load the SentencePiece shim libllmt_spm.so (set LLMT_SPM_LIB); tried:" + tried;
      return;
    }
    bool ok = true;
    auto sym = [&](const char* name) {
      void* p = ::dlsym(h, name);
      if (!p) ok = false;
      return p;
    };
    api.load = reinterpret_cast<decltype(api.load)>(sym("llmt_spm_load"));
    api.free_handle = reinterpret_cast<decltype(api.free_handle)>(sym("llmt_spm_free"));
    api.free_buf = reinterpret_cast<decltype(api.free_buf)>(sym("llmt_spm_free_buf"));
    api.encode = reinterpret_cast<decltype(api.encode)>(sym("llmt_spm_encode"));
    api.decode = reinterpret_cast<decltype(api.decode)>(sym("llmt_spm_decode"));
    api.piece_size = reinterpret_cast<decltype(api.piece_size)>(sym("llmt_spm_piece_size"));
    api.bos_id = reinterpret_cast<decltype(api.bos_id)>(sym("llmt_spm_bos_id"));
    api.eos_id = reinterpret_cast<decltype(api.eos_id)>(sym("llmt_spm_eos_id"));
    api.id_to_piece = reinterpret_cast<decltype(api.id_to_piece)>(sym("llmt_spm_id_to_piece"));
    api.score = reinterpret_cast<decltype(api.score)>(sym("llmt_spm_score"));
    api.train = reinterpret_cast<decltype(api.train)>(sym("llmt_spm_train"));
    if (!ok) load_error = "libllmt_spm.so lacks an expected symbol (stale build?)";
  });
  if (!load_error.empty()) {
    if (error) *error = load_error;
    return nullptr;
  }
  return &api;
}

std::string TakeString(const SpmApi* api, char* p) {
  std::string s = p ? p : "";
  api->free_buf(p);
  return s;
}

}  // namespace

struct Tokenizer::Impl {
  const SpmApi* api = nullptr;
  void* sp = nullptr;
  int piece_size = 0, bos = -1, eos = -1;
  ~Impl() {
    if (sp) api->free_handle(sp);
  }
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::Load(const std::string& model_path, std::string* error) {
  std::string bytes, err;
  if (!ReadWhole(model_path, &bytes, &err)) {
    if (error) *error = "tokenizer model: " + err;  // err names the file
    return nullptr;
  }
  const SpmApi* api = Api(error);
  if (!api) return nullptr;
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  char* cerr = nullptr;
  t->impl_->api = api;
  t->impl_->sp = api->load(bytes.data(), bytes.size(), &cerr);
  if (!t->impl_->sp) {
    if (error) {
      *error = model_path + " is not a SentencePiece model (" + TakeString(api, cerr) + ")";
    }
    return nullptr;
  }
  t->impl_->piece_size = api->piece_size(t->impl_->sp);
  t->impl_->bos = api->bos_id(t->impl_->sp);
  t->impl_->eos = api->eos_id(t->impl_->sp);
  t->hash_ = Sha256Hex(bytes);
  return t;
}

std::vector<int32_t> Tokenizer::Encode(const std::string& text) const {
  int32_t* ids = nullptr;
  size_t n = 0;
  // Encode only fails on an unloaded model, which Load rules out.
  impl_->api->encode(impl_->sp, text.data(), text.size(), &ids, &n);
  std::vector<int32_t> out(ids, ids + n);
  impl_->api->free_buf(ids);
  return out;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  const int n = impl_->piece_size;
  std::vector<int32_t> in;
  in.reserve(ids.size());
  // A sampled or corrupt id outside the vocabulary would make SentencePiece
  // fail the whole call; dropping it keeps the rest of the text readable.
  for (int32_t id : ids) {
    if (id >= 0 && id < n) in.push_back(id);
  }
  size_t len = 0;
  char* p = impl_->api->decode(impl_->sp, in.data(), in.size(), &len);
  std::string out(p, len);
  impl_->api->free_buf(p);
  return out;
}

int Tokenizer::vocab_size() const { return impl_->piece_size; }
int Tokenizer::bos_id() const { return impl_->bos; }
int Tokenizer::eos_id() const { return impl_->eos; }

bool TrainTokenizer(const TokenizerTrainOptions& opts, std::string* error) {
  std::string err;
  auto fail = [&](const std::string& msg) {
    if (error) *error = msg;
    return false;
  };
  if (opts.vocab_size <= 0) return fail("vocab_size must be > 0");
  const SpmApi* api = Api(&err);
  if (!api) return fail(err);
  // Byte-level BPE: 256 byte pieces guarantee every string is encodable, so
  // NFKC-normalised text decodes back exactly. Whitespace is normalised by our
  // cleaner (not SentencePiece's), and newlines are kept: they reach the model
  // as the <0x0A> byte piece, as in Llama's tokenizer.
  std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(opts.vocab_size)},
      {"byte_fallback", "true"},
      {"character_coverage", "0.9995"},
      {"normalization_rule_name", "nfkc"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "false"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"num_threads", std::to_string(opts.num_threads > 0 ? opts.num_threads : 1)},
      {"input_sentence_size", std::to_string(opts.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"max_sentence_length", "65536"},
      // A small corpus may not support the requested vocabulary; take what it
      // supports instead of failing (the manifest records the real size).
      {"hard_vocab_limit", "false"},
      // Silences INFO and WARNING. Besides the noise, this is load-bearing:
      // the shim is dlopen()ed with RTLD_DEEPBIND, so SentencePiece's
      // std::cerr binds to libstdc++'s own, never-constructed copy whenever
      // the executable holds a copy relocation of std::cerr (any binary that
      // uses it, e.g. GoogleTest's), and its first log line would crash
      // (seen: BPE's "No valid symbol found" warning on small corpora).
      {"minloglevel", "2"},
  };
  // SentencePiece samples and shuffles sentences with a process-global
  // generator; seeding it makes the trained model (and its hash) reproducible.
  unsigned int seed = static_cast<unsigned int>(opts.seed ^ (opts.seed >> 32));
  if (seed == static_cast<unsigned int>(-1)) seed = 0;  // -1 means "random device"
  std::vector<const char*> keys, values;
  for (const auto& [k, v] : args) {
    keys.push_back(k.c_str());
    values.push_back(v.c_str());
  }
  char* model_buf = nullptr;
  size_t model_n = 0;
  char* cerr = nullptr;
  if (api->train(keys.data(), values.data(), static_cast<int>(keys.size()), opts.input_file.c_str(),
                 seed, &model_buf, &model_n, &cerr) != 0) {
    return fail("SentencePiece training on " + opts.input_file + " failed: " + TakeString(api, cerr));
  }
  std::string model(model_buf, model_n);
  api->free_buf(model_buf);

  const std::string model_path = opts.model_prefix + ".model";
  if (!WriteSynced(model_path, model, &err)) return fail(err);

  // The .vocab file (piece<TAB>score) is for people reading the vocabulary.
  void* sp = api->load(model.data(), model.size(), &cerr);
  if (!sp) return fail("trained tokenizer does not load: " + TakeString(api, cerr));
  std::string vocab;
  for (int i = 0; i < api->piece_size(sp); ++i) {
    vocab += TakeString(api, api->id_to_piece(sp, i));
    vocab += '\t';
    vocab += std::to_string(api->score(sp, i));
    vocab += '\n';
  }
  api->free_handle(sp);
  if (!WriteSynced(opts.model_prefix + ".vocab", vocab, &err)) return fail(err);
  return true;
}

}  // namespace llmt::data
