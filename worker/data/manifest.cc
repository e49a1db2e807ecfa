#include "worker/data/manifest.h"

#include "absl/strings/str_cat.h"
#include "common/fs.h"
#include "common/status.h"

namespace llmt::data {
namespace {

absl::StatusOr<std::vector<ManifestShard>> ReadShards(const json::Value& splits,
                                                      const std::string& name,
                                                      const std::string& where) {
  std::vector<ManifestShard> out;
  const json::Value* split = splits.Find(name);
  if (split == nullptr) return out;  // a split may be absent (e.g. no val)
  const std::string w = absl::StrCat(where, ": splits.", name);
  const json::Value* shards = split->Find("shards");
  if (!split->is_object() || shards == nullptr || !shards->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(w, ": expected an object with a shards array"));
  }
  for (size_t i = 0; i < shards->array().size(); ++i) {
    const json::Value& s = shards->array()[i];
    const std::string ws = absl::StrCat(w, ".shards[", i, "]");
    ManifestShard m;
    ASSIGN_OR_RETURN(m.file, json::GetString(s, "file", ws));
    if (m.file.empty() || m.file.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          ws, ": file must be a plain name inside the data dir, got \"", m.file, "\""));
    }
    ASSIGN_OR_RETURN(m.tokens, json::GetUint64(s, "tokens", ws));
    ASSIGN_OR_RETURN(m.bytes, json::GetUint64(s, "bytes", ws));
    ASSIGN_OR_RETURN(m.sha256, json::GetString(s, "sha256", ws));
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace

absl::StatusOr<Manifest> ReadManifest(const std::string& data_dir) {
  Manifest m;
  m.path = fs::JoinPath(data_dir, "manifest.json");
  auto text = fs::ReadFile(m.path);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      return absl::NotFoundError(absl::StrCat("data dir ", data_dir,
                                              " has no manifest.json (run `llmt prepare --out ",
                                              data_dir, "`)"));
    }
    return text.status();
  }
  auto v = json::Parse(*text);
  if (!v.ok()) return Annotate(v.status(), m.path);
  if (!v->is_object()) return absl::InvalidArgumentError(absl::StrCat(m.path, ": not an object"));
  const std::string& w = m.path;
  ASSIGN_OR_RETURN(std::string format, json::GetString(*v, "format", w));
  if (format != kManifestFormat) {
    return absl::InvalidArgumentError(
        absl::StrCat(w, ": format is \"", format, "\", expected \"", kManifestFormat, "\""));
  }
  ASSIGN_OR_RETURN(int64_t version, json::GetInt64(*v, "version", w));
  if (version != kManifestVersion) {
    return absl::FailedPreconditionError(absl::StrCat(w, ": unsupported manifest version ", version,
                                                      " (this build reads ", kManifestVersion,
                                                      "); re-run llmt prepare"));
  }
  ASSIGN_OR_RETURN(int64_t vocab, json::GetInt64(*v, "vocab_size", w));
  if (vocab <= 0 || vocab > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError(absl::StrCat(w, ": bad vocab_size ", vocab));
  }
  m.vocab_size = static_cast<int>(vocab);
  ASSIGN_OR_RETURN(int64_t bos, json::GetInt64(*v, "bos_id", w));
  ASSIGN_OR_RETURN(int64_t eos, json::GetInt64(*v, "eos_id", w));
  m.bos_id = static_cast<int>(bos);
  m.eos_id = static_cast<int>(eos);
  ASSIGN_OR_RETURN(std::string dtype, json::GetString(*v, "dtype", w));
  if (dtype == "uint16") {
    m.token_bytes = 2;
  } else if (dtype == "uint32") {
    m.token_bytes = 4;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(w, ": dtype is \"", dtype, "\", expected uint16 or uint32"));
  }
  ASSIGN_OR_RETURN(m.tokenizer_hash, json::GetString(*v, "tokenizer_hash", w));
  const json::Value* splits = v->Find("splits");
  if (splits == nullptr || !splits->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(w, ": missing object field \"splits\""));
  }
  ASSIGN_OR_RETURN(m.train, ReadShards(*splits, "train", w));
  ASSIGN_OR_RETURN(m.val, ReadShards(*splits, "val", w));
  m.raw = std::move(*v);
  return m;
}

}  // namespace llmt::data
