#include "common/json.h"

#include <gtest/gtest.h>

namespace llmt::json {
namespace {

TEST(JsonTest, ParsesNestedValues) {
  auto v = Parse(R"( {"a": [1, -2.5e3, true, false, null], "b": {"c": "d"}, "e": ""} )");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_TRUE(v->is_object());
  const Value* a = v->Find("a");
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->array().size(), 5u);
  EXPECT_EQ(*a->array()[0].AsInt64(), 1);
  EXPECT_DOUBLE_EQ(*a->array()[1].AsDouble(), -2500.0);
  EXPECT_TRUE(a->array()[2].bool_value());
  EXPECT_FALSE(a->array()[3].bool_value());
  EXPECT_TRUE(a->array()[4].is_null());
  EXPECT_EQ(v->Find("b")->Find("c")->str(), "d");
  EXPECT_EQ(v->Find("e")->str(), "");
  EXPECT_EQ(v->Find("zzz"), nullptr);
}

TEST(JsonTest, DecodesEscapesAndSurrogatePairs) {
  auto v = Parse(R"("q\" b\\ s\/ \b\f\n\r\t \u00e9 \u20AC \ud83d\ude00")");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->str(), "q\" b\\ s/ \b\f\n\r\t \xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
}

TEST(JsonTest, RejectsMalformedInputWithPosition) {
  struct Case {
    const char* text;
    const char* want;
  } cases[] = {
      {R"({"a": 1,})", "expected a string key"},
      {R"({"a" 1})", "expected ':'"},
      {R"([1 2])", "expected ',' or ']'"},
      {R"("abc)", "unterminated string"},
      {"\"a\nb\"", "unescaped control character"},
      {R"("\ud83d")", "unpaired high surrogate"},
      {R"("\ude00")", "unpaired low surrogate"},
      {R"("\u12g4")", "bad hex digit"},
      {R"("\x")", "bad escape"},
      {R"(01)", "unexpected data after"},
      {R"(1.)", "digits expected after '.'"},
      {R"(tru)", "expected true"},
      {R"({} {})", "unexpected data after"},
      {"", "unexpected end of input"},
  };
  for (const auto& c : cases) {
    auto v = Parse(c.text);
    ASSERT_FALSE(v.ok()) << c.text;
    EXPECT_NE(v.status().message().find(c.want), std::string::npos)
        << c.text << " -> " << v.status().message();
    EXPECT_NE(v.status().message().find("line 1, column"), std::string::npos);
  }
  auto v = Parse("{\n  \"a\": [1,\n   ?]}");
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("line 3, column 4"), std::string::npos)
      << v.status().message();
}

TEST(JsonTest, Uint64RoundTripsExactly) {
  const uint64_t big = 18446744073709551615ull;  // not representable as a double
  Value o = Value::Object();
  o.Set("n", Value::Uint(big)).Set("s", Value::String(std::to_string(big - 1)));
  auto back = Parse(o.Serialize());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back->Find("n")->AsUint64(), big);
  EXPECT_EQ(*back->Find("s")->AsUint64(), big - 1);              // strings hold integers too
  EXPECT_FALSE(Parse("18446744073709551616")->AsUint64().ok());  // overflow
  EXPECT_FALSE(Parse("-1")->AsUint64().ok());
  EXPECT_FALSE(Parse("1.5")->AsInt64().ok());
  EXPECT_EQ(*Parse("-9223372036854775808")->AsInt64(), INT64_MIN);
}

TEST(JsonTest, SerializeEscapesAndReparses) {
  Value o = Value::Object();
  o.Set("text", Value::String("a\"b\\c\nd\x01 \xC3\xA9"))
      .Set("list", Value::Array().Push(Value::Int(-3)).Push(Value::Double(0.25)))
      .Set("empty", Value::Object());
  for (int indent : {-1, 2}) {
    std::string s = o.Serialize(indent);
    EXPECT_NE(s.find("\\u0001"), std::string::npos);
    auto back = Parse(s);
    ASSERT_TRUE(back.ok()) << s;
    EXPECT_EQ(back->Find("text")->str(), "a\"b\\c\nd\x01 \xC3\xA9");
    EXPECT_EQ(*back->Find("list")->array()[0].AsInt64(), -3);
    EXPECT_DOUBLE_EQ(*back->Find("list")->array()[1].AsDouble(), 0.25);
    EXPECT_TRUE(back->Find("empty")->is_object());
    EXPECT_EQ(back->Serialize(indent), s);
  }
}

std::string Nested(int n) { return std::string(n, '[') + std::string(n, ']'); }

TEST(JsonTest, NestingLimit) {
  // n nested arrays reach depth n - 1 (the top-level value is depth 0).
  EXPECT_TRUE(Parse(Nested(257)).ok());
  auto deep = Parse(Nested(258));
  ASSERT_FALSE(deep.ok());
  EXPECT_NE(deep.status().message().find("nesting too deep"), std::string::npos)
      << deep.status().message();
  const ParseOptions shallow{.max_depth = 64};
  EXPECT_TRUE(Parse(Nested(65), shallow).ok());
  EXPECT_FALSE(Parse(Nested(66), shallow).ok());
  auto obj = Parse(R"({"a": {"b": [1]}})", ParseOptions{.max_depth = 1});
  ASSERT_FALSE(obj.ok());
  EXPECT_NE(obj.status().message().find("nesting too deep"), std::string::npos);
  EXPECT_TRUE(Parse(R"({"a": {"b": 1}})", ParseOptions{.max_depth = 2}).ok());
}

TEST(JsonTest, DuplicateKeys) {
  // Allowed by default; Find returns the first.
  auto v = Parse(R"({"a": 1, "a": 2})");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->object().size(), 2u);
  EXPECT_EQ(*v->Find("a")->AsInt64(), 1);

  const ParseOptions strict{.reject_duplicate_keys = true};
  auto dup = Parse("{\"a\": 1,\n \"b\": 2, \"a\": 3}", strict);
  ASSERT_FALSE(dup.ok());
  // Points at the repeated key.
  EXPECT_NE(dup.status().message().find("line 2, column 10: duplicate key \"a\""),
            std::string::npos)
      << dup.status().message();
  auto nested = Parse(R"({"x": {"k": 1, "k": 2}})", strict);
  ASSERT_FALSE(nested.ok());
  EXPECT_NE(nested.status().message().find("duplicate key \"k\""), std::string::npos);
  // Keys compare after unescaping.
  EXPECT_FALSE(Parse(R"({"k": 1, "\u006b": 2})", strict).ok());
  // The same key in different objects, and many distinct keys, are fine.
  EXPECT_TRUE(Parse(R"({"k": {"k": 1}, "l": [{"k": 1}, {"k": 2}]})", strict).ok());
  std::string many = "{";
  for (int i = 0; i < 1000; ++i) many += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":0";
  many += "}";
  auto m = Parse(many, strict);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->object().size(), 1000u);
}

TEST(JsonTest, FieldHelpersNameWhereAndKey) {
  auto v = Parse(R"({"a": "x", "n": 3})");
  ASSERT_TRUE(v.ok());
  auto missing = GetUint64(*v, "b", "m.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message(), "m.json: missing field \"b\"");
  auto wrong = GetString(*v, "n", "m.json");
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().message(), "m.json: field \"n\" is not a string");
  EXPECT_EQ(*GetInt64(*v, "n", "m.json"), 3);
}

}  // namespace
}  // namespace llmt::json
