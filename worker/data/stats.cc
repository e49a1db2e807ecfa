#include "worker/data/stats.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/fs.h"
#include "common/status.h"
#include "worker/data/manifest.h"
#include "worker/data/shard.h"

namespace llmt::data {

absl::StatusOr<double> UnigramEntropyNats(const std::string& data_dir, const std::string& split) {
  ASSIGN_OR_RETURN(Manifest m, ReadManifest(data_dir));
  const auto* shards = m.split(split);
  if (shards == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown split '", split, "'"));
  std::vector<uint64_t> counts(static_cast<size_t>(std::max(1, m.vocab_size)), 0);
  uint64_t total = 0;
  for (const auto& s : *shards) {
    ASSIGN_OR_RETURN(auto reader, ShardReader::Open(fs::JoinPath(data_dir, s.file)));
    for (uint64_t i = 0; i < reader->size(); ++i) {
      uint32_t t = reader->token(i);
      if (t < counts.size()) ++counts[t];
    }
    total += reader->size();
  }
  if (total == 0) return absl::FailedPreconditionError(absl::StrCat(data_dir, ": split '", split, "' is empty"));
  double h = 0;
  for (uint64_t c : counts) {
    if (c == 0) continue;
    const double p = static_cast<double>(c) / static_cast<double>(total);
    h -= p * std::log(p);
  }
  return h;
}

}  // namespace llmt::data
