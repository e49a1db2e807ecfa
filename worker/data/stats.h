// Corpus statistics over prepared shards.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace llmt::data {

// Entropy (nats/token) of the unigram distribution of `split`'s tokens: the
// loss of the best model that ignores context, so the bar a trained model's
// validation loss must clear.
absl::StatusOr<double> UnigramEntropyNats(const std::string& data_dir, const std::string& split);

}  // namespace llmt::data
