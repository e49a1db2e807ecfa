// A small argument parser for `llmt <command> [positional...] [--flag value]`.
// Flags may repeat (--input a --input b) and may be written --flag=value.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace llmt::cli {

class Args {
 public:
  // `bool_flags` take no value; any other flag requires one.
  static absl::StatusOr<Args> Parse(int argc, char** argv, int first,
                                    const std::vector<std::string>& value_flags,
                                    const std::vector<std::string>& bool_flags);
  bool Has(const std::string& f) const { return values_.count(f) > 0; }
  std::string Get(const std::string& f, const std::string& def = "") const;
  std::vector<std::string> GetAll(const std::string& f) const;
  absl::StatusOr<int64_t> GetInt(const std::string& f, int64_t def) const;
  absl::StatusOr<double> GetDouble(const std::string& f, double def) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

}  // namespace llmt::cli
