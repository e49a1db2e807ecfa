// Debian's libsentencepiece carries a private protobuf-lite that exports the
// same symbols as libprotobuf; a process loading both used to crash. The
// tokenizer therefore reaches SentencePiece through a dlopen()ed shim. This
// binary links libprotobuf, uses it, and then trains, loads and runs a
// tokenizer in the same process.
#include <google/protobuf/struct.pb.h>
#include <gtest/gtest.h>

#include "data_test_util.h"
#include "worker/data/prepare.h"

namespace llmt::data {
namespace {

TEST(DataTokenizerWithProtobufTest, TrainEncodeDecodeAlongsideLibprotobuf) {
  google::protobuf::Struct s;
  (*s.mutable_fields())["k"].set_string_value("v");
  std::string wire = s.SerializeAsString();
  google::protobuf::Struct back;
  ASSERT_TRUE(back.ParseFromString(wire));
  EXPECT_EQ(back.fields().at("k").string_value(), "v");

  const std::string root = testing::FreshDir("pb");
  std::string corpus;
  for (int i = 0; i < 50; ++i) {
    corpus += "Paragraph " + std::to_string(i) + " says the quick brown fox jumps over dogs.\n\n";
  }
  testing::WriteText(fs::JoinPath(root, "c.txt"), corpus);
  PrepareOptions o;
  o.inputs = {fs::JoinPath(root, "c.txt")};
  o.out_dir = fs::JoinPath(root, "out");
  o.vocab_size = 400;
  auto rep = Prepare(o);
  ASSERT_TRUE(rep.ok()) << rep.status();
  std::string err;
  auto tok = Tokenizer::Load(fs::JoinPath(o.out_dir, "tokenizer.model"), &err);
  ASSERT_TRUE(tok) << err;
  const std::string text = "The quick brown fox,\nagain: caf\xC3\xA9 \xF0\x9F\x98\x80!";
  auto ids = tok->Encode(text);
  EXPECT_FALSE(ids.empty());
  EXPECT_EQ(tok->Decode(ids), text);
  EXPECT_EQ(tok->hash(), rep->tokenizer_hash);
}

}  // namespace
}  // namespace llmt::data
