// Status helpers used across module boundaries (absl::Status / StatusOr, no
// exceptions crossing them).
#pragma once

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define LLMT_CONCAT_INNER_(a, b) a##b
#define LLMT_CONCAT_(a, b) LLMT_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` yields a non-OK status.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::absl::Status _llmt_st = (expr);              \
    if (!_llmt_st.ok()) return _llmt_st;           \
  } while (0)

// ASSIGN_OR_RETURN(auto x, Foo()); binds the value or returns the error.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(LLMT_CONCAT_(_llmt_sor_, __LINE__), lhs, rexpr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                           \
  if (!tmp.ok()) return tmp.status();           \
  lhs = std::move(tmp).value()

namespace llmt {

// Prefixes a status message with context ("reading shard x.bin: ...").
inline absl::Status Annotate(const absl::Status& s, absl::string_view context) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

}  // namespace llmt
