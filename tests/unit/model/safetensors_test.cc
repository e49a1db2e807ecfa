// storage/safetensors: round trip, other dtypes, and rejection of corrupt files
// with errors that name the file and the tensor.
#include "storage/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace llmt::storage {
namespace {

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/st_" + std::to_string(::getpid()) + "_" + name;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A file from a raw header string and data bytes.
std::string MakeFile(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out + header + data;
}

TEST(SafetensorsTest, RoundTripF32WithMetadata) {
  const std::string path = TempPath("rt.safetensors");
  std::vector<float> a = {1.f, -2.5f, 3.25f, 1e-30f, NAN, INFINITY};
  std::vector<float> b = {42.f};
  std::vector<TensorRef> ts = {{"h.0.attn.c_attn.weight", {2, 3}, a.data()},
                               {"scalar", {}, b.data()},
                               {"empty", {0, 4}, nullptr},
                               {"quote\"name\\with\nescapes", {1}, b.data()}};
  ASSERT_TRUE(WriteSafetensors(path, ts, {{"format", "pt"}, {"step", "12"}}).ok());
  // 8-byte aligned data section, as the format recommends.
  const std::string raw = ReadBytes(path);
  uint64_t hlen;
  std::memcpy(&hlen, raw.data(), 8);
  EXPECT_EQ(hlen % 8, 0u);
  EXPECT_EQ(raw.size(), 8 + hlen + 4 * (6 + 1 + 0 + 1));

  auto r = ReadSafetensors(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->metadata.at("format"), "pt");
  EXPECT_EQ(r->metadata.at("step"), "12");
  ASSERT_EQ(r->tensors.size(), 4u);
  const Tensor& ta = r->tensors.at("h.0.attn.c_attn.weight");
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(ta.data.size(), 6u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(ta.data[i], a[i]);
  EXPECT_TRUE(std::isnan(ta.data[4]));
  EXPECT_EQ(ta.data[5], INFINITY);
  EXPECT_TRUE(r->tensors.at("scalar").shape.empty());
  EXPECT_EQ(r->tensors.at("scalar").data, std::vector<float>{42.f});
  EXPECT_TRUE(r->tensors.at("empty").data.empty());
  EXPECT_EQ(r->tensors.at("quote\"name\\with\nescapes").data, std::vector<float>{42.f});
}

TEST(SafetensorsTest, ReadsF16AndBf16) {
  // F16: 1.0 = 0x3C00, -2.0 = 0xC000, smallest subnormal 0x0001 = 2^-24, inf 0x7C00.
  // BF16: 1.0 = 0x3F80, -0.5 = 0xBF00.
  const std::string data = std::string("\x00\x3C\x00\xC0\x01\x00\x00\x7C", 8) +
                           std::string("\x80\x3F\x00\xBF", 4);
  const std::string header =
      "{\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]},"
      " \"b\" : {\"shape\":[2,1],\"dtype\":\"BF16\",\"data_offsets\":[8,12]}}";
  const std::string path = TempPath("half.safetensors");
  WriteBytes(path, MakeFile(header, data));
  auto r = ReadSafetensors(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tensors.at("h").data,
            (std::vector<float>{1.f, -2.f, std::ldexp(1.f, -24), INFINITY}));
  EXPECT_EQ(r->tensors.at("b").data, (std::vector<float>{1.f, -0.5f}));
  EXPECT_EQ(r->tensors.at("b").shape, (std::vector<int64_t>{2, 1}));
}

void ExpectError(const std::string& name, const std::string& bytes,
                 const std::vector<std::string>& needles) {
  const std::string path = TempPath(name);
  WriteBytes(path, bytes);
  auto r = ReadSafetensors(path);
  ASSERT_FALSE(r.ok()) << name;
  const std::string msg(r.status().message());
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  for (const std::string& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << msg;
}

TEST(SafetensorsTest, TruncatedFileNamesFileAndTensor) {
  const std::string path = TempPath("full.safetensors");
  std::vector<float> a(100, 1.f), b(50, 2.f);
  ASSERT_TRUE(WriteSafetensors(path, {{"first", {100}, a.data()}, {"second", {5, 10}, b.data()}})
                  .ok());
  const std::string raw = ReadBytes(path);
  ExpectError("trunc.safetensors", raw.substr(0, raw.size() - 7), {"second", "truncated"});
  ExpectError("tiny.safetensors", raw.substr(0, 5), {"too short"});
  ExpectError("header.safetensors", raw.substr(0, 20), {"header length"});
  auto missing = ReadSafetensors(TempPath("does-not-exist"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, RejectsBadHeaders) {
  const std::string d8(8, '\0');
  ExpectError("json.st", MakeFile("{\"a\":{\"dtype\":\"F32\",", d8), {"header JSON"});
  ExpectError("notobj.st", MakeFile("[1,2]", ""), {"not an object"});
  ExpectError("dtype.st",
              MakeFile("{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", d8),
              {"tensor a", "unsupported dtype I64"});
  ExpectError("shape.st",
              MakeFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", d8),
              {"tensor a", "needs 12 bytes"});
  ExpectError("neg.st",
              MakeFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", d8),
              {"tensor a", "non-negative"});
  ExpectError("overlap.st",
              MakeFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                       d8),
              {"tensor b", "overlap"});
  ExpectError("tail.st",
              MakeFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", d8),
              {"not covered"});
  ExpectError("field.st",
              MakeFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],"
                       "\"extra\":1}}",
                       d8),
              {"tensor a", "unknown field"});
  ExpectError("dup.st",
              MakeFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                       d8),
              {"tensor a", "duplicate"});
  ExpectError("meta.st", MakeFile("{\"__metadata__\":{\"k\":3}}", ""), {"__metadata__.k"});
  std::string huge(8, '\xff');
  ExpectError("huge.st", huge + "{}", {"exceeds 100 MB"});
}

TEST(SafetensorsTest, WriterRejectsBadInput) {
  std::vector<float> a(2);
  const std::string path = TempPath("w.safetensors");
  EXPECT_FALSE(WriteSafetensors(path, {{"x", {2}, a.data()}, {"x", {2}, a.data()}}).ok());
  EXPECT_FALSE(WriteSafetensors(path, {{"__metadata__", {2}, a.data()}}).ok());
  EXPECT_FALSE(WriteSafetensors(path, {{"x", {2}, nullptr}}).ok());
  auto st = WriteSafetensors("/nonexistent-dir/x.safetensors", {{"x", {2}, a.data()}});
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("/nonexistent-dir/x.safetensors"), std::string::npos);
}

}  // namespace
}  // namespace llmt::storage
