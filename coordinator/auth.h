// Bearer-token authentication for the gRPC services. Tokens are read from a
// file: one token per line; blank lines and lines starting with '#' are
// ignored. JobService and WorkerService use separate files, so a worker token
// cannot submit jobs and a user token cannot impersonate a worker.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace llmt::coord {

class TokenSet {
 public:
  // An empty set authenticates nothing; use `enabled()` to tell "no auth
  // configured" apart.
  static absl::StatusOr<TokenSet> LoadFile(const std::string& path);
  static TokenSet Disabled() { return TokenSet(); }
  static TokenSet FromTokens(std::vector<std::string> tokens);

  bool enabled() const { return enabled_; }
  size_t size() const { return tokens_.size(); }
  // `authorization` is the metadata value ("Bearer <token>"). Compares in
  // time independent of where a guess differs.
  bool Check(const std::string& authorization) const;

 private:
  bool enabled_ = false;
  std::vector<std::string> tokens_;
};

}  // namespace llmt::coord
