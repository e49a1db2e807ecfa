#include "cli/args.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace llmt::cli {

absl::StatusOr<Args> Args::Parse(int argc, char** argv, int first,
                                 const std::vector<std::string>& value_flags,
                                 const std::vector<std::string>& bool_flags) {
  auto known = [](const std::vector<std::string>& v, const std::string& f) {
    return std::find(v.begin(), v.end(), f) != v.end();
  };
  Args a;
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.size() > 2 && arg.rfind("--", 0) == 0) {
      std::string name = arg.substr(2), value;
      bool has_inline = false;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_inline = true;
      }
      if (known(bool_flags, name)) {
        if (has_inline) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
        a.values_[name].push_back("true");
      } else if (known(value_flags, name)) {
        if (!has_inline) {
          if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
          value = argv[++i];
        }
        a.values_[name].push_back(value);
      } else {
        return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " (see --help)"));
      }
    } else {
      a.positional_.push_back(arg);
    }
  }
  return a;
}

std::string Args::Get(const std::string& f, const std::string& def) const {
  auto it = values_.find(f);
  return it == values_.end() ? def : it->second.back();
}

std::vector<std::string> Args::GetAll(const std::string& f) const {
  auto it = values_.find(f);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

absl::StatusOr<int64_t> Args::GetInt(const std::string& f, int64_t def) const {
  if (!Has(f)) return def;
  int64_t v;
  if (!absl::SimpleAtoi(Get(f), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", f, ": expected an integer, got '", Get(f), "'"));
  }
  return v;
}

absl::StatusOr<double> Args::GetDouble(const std::string& f, double def) const {
  if (!Has(f)) return def;
  double v;
  if (!absl::SimpleAtod(Get(f), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", f, ": expected a number, got '", Get(f), "'"));
  }
  return v;
}

}  // namespace llmt::cli
