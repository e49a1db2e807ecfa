// A small JSON DOM shared by the data pipeline (JSONL corpora, the dataset
// manifest, loader state) and storage (checkpoint manifest.json, safetensors
// headers). Debian 12 ships no C++ JSON library we may use here, and
// protobuf's Struct parses every number as a double, which would corrupt
// 64-bit RNG words and token counts; this parser keeps a number's text so
// integers round-trip exactly. It depends on Abseil only, so libraries that
// link no protobuf (the checkpoint and safetensors code the engine uses
// standalone) can use it without widening their dependency graph.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace llmt::json {

class Value {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  Value() = default;
  static Value Null() { return Value(); }
  static Value Bool(bool b);
  static Value Int(int64_t v);
  static Value Uint(uint64_t v);
  static Value Double(double v);
  static Value String(std::string s);
  static Value Array();
  static Value Object();

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }

  bool bool_value() const { return bool_; }
  // For strings: the decoded UTF-8 text; for numbers: the literal text.
  const std::string& str() const { return str_; }
  const std::vector<Value>& array() const { return array_; }
  const std::vector<std::pair<std::string, Value>>& object() const { return object_; }

  // Object member lookup (first match); nullptr when absent or not an object.
  const Value* Find(std::string_view key) const;
  // Builders (no-ops on the wrong type).
  Value& Set(std::string key, Value v);  // appends or replaces; returns *this
  Value& Push(Value v);                  // arrays

  // Typed reads. Integers accept a JSON integer literal or a string holding
  // one (how protobuf's JSON mapping writes 64-bit values).
  absl::StatusOr<uint64_t> AsUint64() const;
  absl::StatusOr<int64_t> AsInt64() const;
  absl::StatusOr<double> AsDouble() const;

  // Compact when indent < 0, otherwise pretty-printed with `indent` spaces.
  std::string Serialize(int indent = -1) const;

 private:
  friend class Parser;
  void SerializeTo(std::string* out, int indent, int depth) const;

  Type type_ = Type::kNull;
  bool bool_ = false;
  std::string str_;
  std::vector<Value> array_;
  std::vector<std::pair<std::string, Value>> object_;
};

struct ParseOptions {
  // Deepest nesting of arrays/objects accepted (the top-level value is depth
  // 0). The parser is recursive, so this bounds its stack use on hostile input.
  int max_depth = 256;
  // Reject an object that repeats a key ("duplicate key \"k\""). RFC 8259
  // leaves duplicates to the reader; where a repeated field could make two
  // readers disagree about a value (a checkpoint manifest), refuse them.
  bool reject_duplicate_keys = false;
};

// Parses one complete JSON text (RFC 8259; surrounding whitespace allowed).
// Errors read "invalid JSON at line L, column C: <what>".
absl::StatusOr<Value> Parse(std::string_view text, const ParseOptions& options = {});

// Appends `s` as a quoted JSON string (escaping quotes, backslashes and
// control characters; other UTF-8 is written as is).
void AppendQuoted(std::string* out, std::string_view s);

// Field helpers for reading objects; errors name `where` and the key.
absl::StatusOr<uint64_t> GetUint64(const Value& obj, std::string_view key, std::string_view where);
absl::StatusOr<int64_t> GetInt64(const Value& obj, std::string_view key, std::string_view where);
absl::StatusOr<std::string> GetString(const Value& obj, std::string_view key,
                                      std::string_view where);

}  // namespace llmt::json
