#include "common/spec.h"

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/fs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace llmt::spec {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::llmt::v1::JobSpec;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kBase[] = R"(
name: tiny-gpt2
model:
  family: gpt2
  d_model: 64
  n_layer: 2
  n_head: 4
  max_seq_len: 128
data:
  dir: /data/tiny
train:
  batch_size: 8
  max_steps: 100
  seed: 1234
optim:
  lr: 3e-4
  weight_decay: 0.1
  grad_clip: 1.0
schedule:
  warmup_steps: 10
  min_lr_ratio: 0.1
checkpoint:
  every_steps: 50
  keep_last: 2
labels:
  team: ml
  owner: "42"
  project: abc
)";

std::string Message(const absl::StatusOr<JobSpec>& s) {
  return s.ok() ? std::string("OK") : std::string(s.status().message());
}

std::vector<std::string> Lines(const absl::Status& st) {
  return absl::StrSplit(std::string(st.message()), '\n');
}

TEST(SpecTest, ParsesValidYamlWithDefaults) {
  auto s = ParseYaml(kBase, "spec.yaml");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->name(), "tiny-gpt2");
  EXPECT_EQ(s->model().d_model(), 64);
  EXPECT_EQ(s->train().max_steps(), 100);
  EXPECT_EQ(s->train().seed(), 1234u);
  EXPECT_DOUBLE_EQ(s->optim().lr(), 3e-4);
  EXPECT_EQ(s->labels().at("owner"), "42");  // quoted number stays a string
  EXPECT_EQ(s->checkpoint().keep_last(), 2);
  // Defaults were applied.
  EXPECT_EQ(s->model().d_ff(), 256);
  EXPECT_EQ(s->train().seq_len(), 128);
  EXPECT_EQ(s->train().device(), "cpu");
}

TEST(SpecTest, YamlAndJsonRoundTrip) {
  auto s = ParseYaml(kBase, "spec.yaml");
  ASSERT_TRUE(s.ok()) << s.status();

  const std::string yaml = ToYaml(*s);
  auto from_yaml = ParseYaml(yaml, "roundtrip.yaml");
  ASSERT_TRUE(from_yaml.ok()) << from_yaml.status() << "\n" << yaml;
  EXPECT_TRUE(MessageDifferencer::Equals(*s, *from_yaml)) << yaml;
  EXPECT_THAT(yaml, HasSubstr("max_steps: 100\n"));  // int64 as a plain number in YAML
  EXPECT_THAT(yaml, HasSubstr("owner: \"42\""));     // number-like string quoted

  const std::string json = ToJson(*s);
  auto from_json = ParseJson(json, "roundtrip.json");
  ASSERT_TRUE(from_json.ok()) << from_json.status() << "\n" << json;
  EXPECT_TRUE(MessageDifferencer::Equals(*s, *from_json)) << json;
  EXPECT_EQ(ToJson(*from_json), json);
  // Canonical: proto field names, int64 as a string, map keys sorted.
  EXPECT_THAT(json, HasSubstr("\"max_steps\":\"100\""));
  EXPECT_THAT(json, HasSubstr("\"labels\":{\"owner\":\"42\",\"project\":\"abc\",\"team\":\"ml\"}"));
  EXPECT_THAT(json, Not(HasSubstr("force_queue")));  // zero fields omitted

  // protobuf's own printer output is read too (the gRPC / trainer_state form).
  std::string pb_json;
  google::protobuf::util::JsonPrintOptions po;
  po.preserve_proto_field_names = false;  // camelCase names
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(*s, &pb_json, po).ok());
  auto from_pb = ParseJson(pb_json, "pb.json");
  ASSERT_TRUE(from_pb.ok()) << from_pb.status() << "\n" << pb_json;
  EXPECT_TRUE(MessageDifferencer::Equals(*s, *from_pb));
}

TEST(SpecTest, ToJsonIsCanonicalForEqualSpecs) {
  JobSpec a, b;
  const std::vector<std::string> keys = {"zeta", "alpha", "mid", "beta", "k1", "k2", "k3"};
  for (size_t i = 0; i < keys.size(); ++i) {
    a.mutable_labels()->insert({keys[i], "v"});
    b.mutable_labels()->insert({keys[keys.size() - 1 - i], "v"});
  }
  b.mutable_eval();  // present but empty: not semantic, not printed
  EXPECT_EQ(ToJson(a), ToJson(b));
  EXPECT_EQ(
      ToJson(a),
      R"({"labels":{"alpha":"v","beta":"v","k1":"v","k2":"v","k3":"v","mid":"v","zeta":"v"}})");
  EXPECT_EQ(ToJson(JobSpec()), "{}");
  EXPECT_EQ(ToYaml(JobSpec()), "{}\n");
}

TEST(SpecTest, RawParseKeepsSpecAsWritten) {
  auto s = ParseYamlRaw("model: {family: gpt2}\ntrain: {batch_size: 0}\n", "spec.yaml");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->model().d_ff(), 0);
  EXPECT_EQ(s->train().device(), "");
  EXPECT_EQ(ToYaml(*s), "model:\n  family: gpt2\n");
}

TEST(SpecTest, UnknownNestedFieldNamesPathAndSuggests) {
  auto s = ParseYaml("train:\n  batchsize: 8\n", "spec.yaml");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(s), "spec.yaml: train.batchsize: unknown field (did you mean batch_size?)");

  s = ParseYaml(absl::StrCat(kBase, "optimizer:\n  lr: 1\n"), "spec.yaml");
  EXPECT_EQ(Message(s), "spec.yaml: optimizer: unknown field (did you mean optim?)");
  s = ParseYaml(absl::StrCat(kBase, "batch_size: 8\n"), "spec.yaml");
  EXPECT_EQ(Message(s), "spec.yaml: batch_size: unknown field (did you mean train.batch_size?)");
  s = ParseYaml(absl::StrCat(kBase, "schedule:\n  knid: wsd\n"), "spec.yaml");
  // (kBase already has a schedule section: a duplicate key is reported too.)
  EXPECT_THAT(Message(s), HasSubstr("spec.yaml: schedule: duplicate field"));
  s = ParseYaml("model:\n  family: gpt2\n  xyzzy: 1\n", "spec.yaml");
  EXPECT_EQ(Message(s), "spec.yaml: model.xyzzy: unknown field");
  s = ParseYaml("model:\n  family: gpt2\n  dmodel: 1\n  n_heads: 2\n", "s.yaml");
  EXPECT_THAT(
      Lines(s.status()),
      ::testing::ElementsAre("s.yaml: model.dmodel: unknown field (did you mean d_model?)",
                             "s.yaml: model.n_heads: unknown field (did you mean n_head?)"));
}

TEST(SpecTest, TypeErrorsNameFieldAndValue) {
  struct Case {
    std::string yaml, expect;
  };
  std::vector<Case> cases = {
      {"train: {batch_size: abc}", "spec.yaml: train.batch_size: expected an integer, got 'abc'"},
      {"train: {batch_size: 8.5}", "spec.yaml: train.batch_size: expected an integer, got '8.5'"},
      {"train: {batch_size: [1, 2]}",
       "spec.yaml: train.batch_size: expected an integer, got a list"},
      {"optim: {lr: fast}", "spec.yaml: optim.lr: expected a number, got 'fast'"},
      {"optim: {lr: .nan}", "spec.yaml: optim.lr: expected a number, got '.nan'"},
      {"optim: {lr: nan}", "spec.yaml: optim.lr: expected a finite number, got 'nan'"},
      {"model: 5", "spec.yaml: model: expected a mapping (a section with fields), got '5'"},
      {"labels: [a, b]", "spec.yaml: labels: expected a mapping of key: value, got a list"},
      {"labels: {a: {b: c}}", "spec.yaml: labels.a: expected a string, got a mapping"},
      {"labels: {a: }", "spec.yaml: labels.a: missing value"},
      {"force_queue: maybe", "spec.yaml: force_queue: expected true or false, got 'maybe'"},
      {"priority: 3000000000",
       "spec.yaml: priority: value 3000000000 is out of range for a 32-bit integer"},
      {"train: {seed: -1}", "spec.yaml: train.seed: expected a non-negative integer, got '-1'"},
      {"name: {a: 1}", "spec.yaml: name: expected a string, got a mapping"},
      {"train: {max_steps: 99999999999999999999}",
       "spec.yaml: train.max_steps: expected an integer, got '99999999999999999999'"},
      {"? [a]\n: 1", "spec.yaml: (top level): keys must be plain names, got a list"},
  };
  for (const auto& c : cases) {
    auto s = ParseYamlRaw(c.yaml, "spec.yaml");
    EXPECT_EQ(Message(s), c.expect) << c.yaml;
  }
}

TEST(SpecTest, ScalarsConvertByFieldType) {
  auto s = ParseYamlRaw(R"(
name: 123
train: {max_steps: "250", batch_size: 1e1, seed: 18446744073709551615, device: cuda}
optim: {lr: 1}
force_queue: yes
labels: {n: 5, "t": true}
)",
                        "spec.yaml");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->name(), "123");
  EXPECT_EQ(s->train().max_steps(), 250);
  EXPECT_EQ(s->train().batch_size(), 10);
  EXPECT_EQ(s->train().seed(), 18446744073709551615ull);
  EXPECT_DOUBLE_EQ(s->optim().lr(), 1.0);
  EXPECT_TRUE(s->force_queue());
  EXPECT_EQ(s->labels().at("n"), "5");
  EXPECT_EQ(s->labels().at("t"), "true");
  // JSON-style camelCase names are the same fields.
  s = ParseYamlRaw("train: {batchSize: 4, maxSteps: 7}", "spec.yaml");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train().batch_size(), 4);
  EXPECT_EQ(s->train().max_steps(), 7);
  s = ParseYamlRaw("train: {batchSize: 4, batch_size: 7}", "spec.yaml");
  EXPECT_THAT(Message(s), HasSubstr("train.batch_size: duplicate field"));
  // Null / empty means "default".
  s = ParseYamlRaw("eval:\ntrain: {batch_size: ~, seq_len: 4}\n", "spec.yaml");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train().batch_size(), 0);
  EXPECT_EQ(s->train().seq_len(), 4);
  // Empty document is an empty spec (conversion only).
  s = ParseYamlRaw("", "spec.yaml");
  ASSERT_TRUE(s.ok()) << s.status();
}

TEST(SpecTest, AllProblemsReportedOneLineEach) {
  auto s = ParseYamlRaw("train: {batchsize: 8, seq_len: x}\nmodel: {d_model: y}\n", "f.yaml");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(
      Lines(s.status()),
      ::testing::ElementsAre("f.yaml: train.batchsize: unknown field (did you mean batch_size?)",
                             "f.yaml: train.seq_len: expected an integer, got 'x'",
                             "f.yaml: model.d_model: expected an integer, got 'y'"));
}

TEST(SpecTest, SyntaxErrorsNameSourceAndLine) {
  auto s = ParseYaml("model:\n  family: gpt2\n  d_model: [1, 2\n", "bad.yaml");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(Message(s), HasSubstr("bad.yaml:"));
  EXPECT_THAT(Message(s), HasSubstr("invalid YAML"));
  s = ParseYaml("a: 1\n---\nb: 2\n", "multi.yaml");
  EXPECT_THAT(Message(s), HasSubstr("multi.yaml: expected one YAML document, found 2"));
  s = ParseYaml("- 1\n- 2\n", "list.yaml");
  EXPECT_THAT(Message(s), HasSubstr("list.yaml: the top level must be a mapping"));
}

TEST(SpecTest, OverridesApplyBeforeConversion) {
  auto s = ParseYaml(
      kBase, "spec.yaml",
      {"train.batch_size=16", "checkpoint.keep_last=5", "eval.every_steps=25", "labels.team=infra",
       "labels.new=x", "model.family=llama", "name=run-2", "optim.lr=1e-3"});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train().batch_size(), 16);     // nested, existing key
  EXPECT_EQ(s->checkpoint().keep_last(), 5);  // existing section, existing key
  EXPECT_EQ(s->eval().every_steps(), 25);     // new section created
  EXPECT_EQ(s->labels().at("team"), "infra");
  EXPECT_EQ(s->labels().at("new"), "x");  // new map key
  EXPECT_EQ(s->model().family(), "llama");
  EXPECT_EQ(s->name(), "run-2");
  EXPECT_DOUBLE_EQ(s->optim().lr(), 1e-3);
  // Later overrides win; values may contain '='.
  s = ParseYaml(kBase, "spec.yaml",
                {"train.batch_size=2", "train.batch_size=3", "labels.expr=a=b"});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train().batch_size(), 3);
  EXPECT_EQ(s->labels().at("expr"), "a=b");
  // Overrides on an empty document build the whole tree.
  s = ParseYamlRaw("", "spec.yaml", {"model.d_model=32", "data.dir=/d"});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->model().d_model(), 32);
  EXPECT_EQ(s->data().dir(), "/d");
}

TEST(SpecTest, BadOverridesNameTheOverride) {
  auto s = ParseYaml(kBase, "spec.yaml", {"train.batch_size.x=3"});
  EXPECT_EQ(Message(s),
            "spec.yaml: --set train.batch_size.x=3: train.batch_size is '8', not a section with "
            "fields");
  s = ParseYaml(kBase, "spec.yaml", {"train.batch_size"});
  EXPECT_THAT(Message(s), HasSubstr("--set train.batch_size: expected path=value"));
  s = ParseYaml(kBase, "spec.yaml", {"train..batch_size=3"});
  EXPECT_THAT(Message(s), HasSubstr("--set train..batch_size=3: empty segment"));
  s = ParseYaml(kBase, "spec.yaml", {"=3"});
  EXPECT_THAT(Message(s), HasSubstr("--set =3: empty field path"));
  s = ParseYaml(kBase, "spec.yaml", {"train.batchsize=3"});
  EXPECT_EQ(Message(s),
            "spec.yaml: train.batchsize: unknown field (did you mean batch_size?) "
            "(from --set train.batchsize=3)");
  s = ParseYaml(kBase, "spec.yaml", {"train.batch_size=lots"});
  EXPECT_EQ(Message(s),
            "spec.yaml: train.batch_size: expected an integer, got 'lots' "
            "(from --set train.batch_size=lots)");
  s = ParseYaml(kBase, "spec.yaml", {"train=5"});
  EXPECT_THAT(Message(s), HasSubstr("spec.yaml: train: expected a mapping"));
  EXPECT_THAT(Message(s), HasSubstr("(from --set train=5)"));
}

TEST(SpecTest, DefaultsGpt2) {
  auto s = ParseYaml(kBase, "spec.yaml");
  ASSERT_TRUE(s.ok()) << s.status();
  const auto& m = s->model();
  EXPECT_EQ(m.n_kv_head(), 4);
  EXPECT_EQ(m.d_ff(), 4 * 64);
  EXPECT_DOUBLE_EQ(m.norm_eps(), 1e-5);
  EXPECT_DOUBLE_EQ(m.init_std(), 0.02);
  EXPECT_DOUBLE_EQ(m.rope_theta(), 0);  // llama only
  EXPECT_EQ(m.vocab_size(), 0);         // taken from the tokenizer later
  const auto& t = s->train();
  EXPECT_EQ(t.seq_len(), 128);
  EXPECT_EQ(t.grad_accum_steps(), 1);
  EXPECT_EQ(t.device(), "cpu");
  EXPECT_EQ(t.precision(), "fp32");
  EXPECT_EQ(t.recompute(), "none");
  EXPECT_EQ(t.log_every(), 1);
  EXPECT_EQ(t.max_bad_steps(), 5);
  EXPECT_EQ(t.threads(), 0);
  EXPECT_DOUBLE_EQ(s->optim().beta1(), 0.9);
  EXPECT_DOUBLE_EQ(s->optim().beta2(), 0.95);
  EXPECT_DOUBLE_EQ(s->optim().eps(), 1e-8);
  EXPECT_EQ(s->schedule().kind(), "cosine");
  EXPECT_DOUBLE_EQ(s->schedule().decay_fraction(), 0);
  EXPECT_EQ(s->eval().steps(), 20);
  EXPECT_EQ(s->resources().ranks(), 1);
  EXPECT_EQ(s->resources().cpus_per_rank(), 1);
  EXPECT_EQ(s->resources().gpus_per_rank(), 0);
}

TEST(SpecTest, DefaultsLlamaAndCuda) {
  auto s = ParseYaml(
      kBase, "spec.yaml",
      {"model.family=llama", "model.d_model=4096", "model.n_head=32", "model.max_seq_len=2048",
       "train.seq_len=1024", "train.device=cuda", "schedule.kind=wsd"});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->model().n_kv_head(), 32);
  // int(2/3 * 4 * 4096) = 10922, rounded up to a multiple of 64.
  EXPECT_EQ(s->model().d_ff(), 10944);
  EXPECT_DOUBLE_EQ(s->model().rope_theta(), 10000);
  EXPECT_EQ(s->train().seq_len(), 1024);  // explicit value kept
  EXPECT_EQ(s->train().precision(), "bf16");
  EXPECT_EQ(s->resources().gpus_per_rank(), 1);
  EXPECT_DOUBLE_EQ(s->schedule().decay_fraction(), 0.2);

  JobSpec small;
  small.mutable_model()->set_family("llama");
  small.mutable_model()->set_d_model(64);
  small.mutable_model()->set_n_head(4);
  small.mutable_model()->set_n_kv_head(2);
  small.mutable_model()->set_d_ff(100);
  ApplyDefaults(&small);
  EXPECT_EQ(small.model().n_kv_head(), 2);  // explicit values are never replaced
  EXPECT_EQ(small.model().d_ff(), 100);
  small.mutable_model()->set_d_ff(0);
  ApplyDefaults(&small);
  EXPECT_EQ(small.model().d_ff(), 192);  // int(170.67) = 170 -> 192
  JobSpec again = small;
  ApplyDefaults(&again);
  EXPECT_TRUE(MessageDifferencer::Equals(small, again));  // idempotent
}

struct RuleCase {
  std::vector<std::string> overrides;
  std::string expect;  // a whole "<source>: <path>: <why>" line
};

class ValidationRuleTest : public ::testing::TestWithParam<RuleCase> {};

TEST_P(ValidationRuleTest, NamesFieldAndValue) {
  const RuleCase& c = GetParam();
  auto s = ParseYaml(kBase, "spec.yaml", c.overrides);
  ASSERT_FALSE(s.ok()) << c.expect;
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Lines(s.status()), ::testing::Contains(c.expect)) << s.status().message();
}

INSTANTIATE_TEST_SUITE_P(
    Rules, ValidationRuleTest,
    ::testing::Values(
        RuleCase{{"model.family=bert"},
                 "spec.yaml: model.family: must be one of gpt2, llama; got 'bert'"},
        RuleCase{{"model.family="}, "spec.yaml: model.family: required: gpt2 or llama"},
        RuleCase{{"model.d_model=0"}, "spec.yaml: model.d_model: must be > 0, got 0"},
        RuleCase{{"model.n_layer=-2"}, "spec.yaml: model.n_layer: must be > 0, got -2"},
        RuleCase{{"model.n_head=0"}, "spec.yaml: model.n_head: must be > 0, got 0"},
        RuleCase{{"model.max_seq_len=-1"}, "spec.yaml: model.max_seq_len: must be > 0, got -1"},
        RuleCase{{"model.d_ff=-4"}, "spec.yaml: model.d_ff: must be > 0, got -4"},
        RuleCase{{"model.vocab_size=-1"}, "spec.yaml: model.vocab_size: must be >= 0, got -1"},
        RuleCase{{"model.norm_eps=-1e-5"}, "spec.yaml: model.norm_eps: must be > 0, got -1e-05"},
        RuleCase{{"model.init_std=-0.5"}, "spec.yaml: model.init_std: must be > 0, got -0.5"},
        RuleCase{{"model.family=llama", "model.rope_theta=-1"},
                 "spec.yaml: model.rope_theta: must be > 0, got -1"},
        RuleCase{{"model.d_model=66"},
                 "spec.yaml: model.d_model: must be divisible by model.n_head (4), got 66"},
        RuleCase{{"model.family=llama", "model.d_model=60"},
                 "spec.yaml: model.d_model: head size d_model/n_head = 15 must be even for "
                 "rotary embeddings"},
        RuleCase{{"model.family=llama", "model.n_kv_head=3"},
                 "spec.yaml: model.n_kv_head: must divide model.n_head (4), got 3"},
        RuleCase{{"model.n_kv_head=2"},
                 "spec.yaml: model.n_kv_head: gpt2 has no grouped-query attention: must equal "
                 "model.n_head (4) or be 0, got 2"},
        RuleCase{{"model.n_kv_head=-1"}, "spec.yaml: model.n_kv_head: must be > 0, got -1"},
        RuleCase{{"data.dir="},
                 "spec.yaml: data.dir: required: the directory written by `llmt prepare`"},
        RuleCase{{"train.batch_size=0"}, "spec.yaml: train.batch_size: must be > 0, got 0"},
        RuleCase{{"train.seq_len=-3"}, "spec.yaml: train.seq_len: must be > 0, got -3"},
        RuleCase{{"train.seq_len=256"},
                 "spec.yaml: train.seq_len: must be <= model.max_seq_len (128), got 256"},
        RuleCase{{"train.grad_accum_steps=-1"},
                 "spec.yaml: train.grad_accum_steps: must be > 0, got -1"},
        RuleCase{{"train.max_steps=0"}, "spec.yaml: train.max_steps: must be > 0, got 0"},
        RuleCase{{"train.device=tpu"},
                 "spec.yaml: train.device: must be one of cpu, cuda; got 'tpu'"},
        RuleCase{{"train.device_index=-1"}, "spec.yaml: train.device_index: must be >= 0, got -1"},
        RuleCase{{"train.precision=fp16"},
                 "spec.yaml: train.precision: must be one of fp32, bf16; got 'fp16'"},
        RuleCase{{"train.precision=bf16"},
                 "spec.yaml: train.precision: bf16 requires train.device: cuda (the CPU engine "
                 "is fp32 only); train.device is 'cpu'"},
        RuleCase{{"train.threads=-8"}, "spec.yaml: train.threads: must be >= 0, got -8"},
        RuleCase{{"train.recompute=all"},
                 "spec.yaml: train.recompute: must be one of none, gelu, norm_gelu; got 'all'"},
        RuleCase{{"train.zero=2"}, "spec.yaml: train.zero: must be 0 or 1 (ZeRO stage), got 2"},
        RuleCase{{"train.log_every=-1"}, "spec.yaml: train.log_every: must be > 0, got -1"},
        RuleCase{{"train.max_bad_steps=-1"}, "spec.yaml: train.max_bad_steps: must be > 0, got -1"},
        RuleCase{{"train.loss_spike_factor=0.5"},
                 "spec.yaml: train.loss_spike_factor: must be 0 (off) or > 1, got 0.5"},
        RuleCase{{"optim.lr=0"}, "spec.yaml: optim.lr: must be > 0, got 0"},
        RuleCase{{"optim.lr=-0.001"}, "spec.yaml: optim.lr: must be > 0, got -0.001"},
        RuleCase{{"optim.weight_decay=-0.1"},
                 "spec.yaml: optim.weight_decay: must be >= 0, got -0.1"},
        RuleCase{{"optim.beta1=1"}, "spec.yaml: optim.beta1: must be in (0, 1), got 1"},
        RuleCase{{"optim.beta2=-0.5"}, "spec.yaml: optim.beta2: must be in (0, 1), got -0.5"},
        RuleCase{{"optim.eps=-1e-8"}, "spec.yaml: optim.eps: must be > 0, got -1e-08"},
        RuleCase{{"optim.grad_clip=-1"}, "spec.yaml: optim.grad_clip: must be >= 0, got -1"},
        RuleCase{{"schedule.kind=step"},
                 "spec.yaml: schedule.kind: must be one of cosine, linear, constant, wsd; got "
                 "'step'"},
        RuleCase{{"schedule.warmup_steps=-5"},
                 "spec.yaml: schedule.warmup_steps: must be >= 0, got -5"},
        RuleCase{{"schedule.warmup_steps=100"},
                 "spec.yaml: schedule.warmup_steps: must be < train.max_steps (100), got 100"},
        RuleCase{{"schedule.min_lr_ratio=1.5"},
                 "spec.yaml: schedule.min_lr_ratio: must be in [0, 1], got 1.5"},
        RuleCase{{"schedule.min_lr_ratio=-0.1"},
                 "spec.yaml: schedule.min_lr_ratio: must be in [0, 1], got -0.1"},
        RuleCase{{"schedule.kind=wsd", "schedule.decay_fraction=1.5"},
                 "spec.yaml: schedule.decay_fraction: must be in (0, 1], got 1.5"},
        RuleCase{{"schedule.kind=wsd", "schedule.decay_fraction=-0.2"},
                 "spec.yaml: schedule.decay_fraction: must be in (0, 1], got -0.2"},
        RuleCase{{"schedule.kind=wsd", "schedule.warmup_steps=90"},
                 "spec.yaml: schedule.decay_fraction: warmup (90 steps) plus decay (20 steps) "
                 "exceed train.max_steps (100)"},
        RuleCase{{"eval.every_steps=-1"}, "spec.yaml: eval.every_steps: must be >= 0, got -1"},
        RuleCase{{"eval.steps=-1"}, "spec.yaml: eval.steps: must be > 0, got -1"},
        RuleCase{{"checkpoint.every_steps=-1"},
                 "spec.yaml: checkpoint.every_steps: must be >= 0, got -1"},
        RuleCase{{"checkpoint.keep_last=-1"},
                 "spec.yaml: checkpoint.keep_last: must be >= 0, got -1"},
        RuleCase{{"checkpoint.keep_best=-1"},
                 "spec.yaml: checkpoint.keep_best: must be >= 0, got -1"},
        RuleCase{{"resources.ranks=-1"}, "spec.yaml: resources.ranks: must be > 0, got -1"},
        RuleCase{{"resources.cpus_per_rank=-1"},
                 "spec.yaml: resources.cpus_per_rank: must be > 0, got -1"},
        RuleCase{{"train.device=cuda", "resources.gpus_per_rank=-1"},
                 "spec.yaml: resources.gpus_per_rank: must be >= 0, got -1"},
        RuleCase{{"resources.gpus_per_rank=2"},
                 "spec.yaml: resources.gpus_per_rank: must be 0 when train.device is cpu, got 2"},
        RuleCase{{"max_restarts=-1"}, "spec.yaml: max_restarts: must be >= 0, got -1"},
        RuleCase{{"name=my job/1"},
                 "spec.yaml: name: must be at most 128 of [A-Za-z0-9._-], not starting with "
                 "'.' or '-'; got 'my job/1'"}));

TEST(SpecTest, ValidationReportsEveryProblem) {
  auto s = ParseYaml(kBase, "spec.yaml", {"optim.lr=0", "train.batch_size=0", "train.zero=3"});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(Lines(s.status()).size(), 3u) << s.status().message();
}

TEST(SpecTest, ValidateAcceptsZerosThatMeanDefault) {
  auto raw = ParseYamlRaw(kBase, "spec.yaml");
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ(raw->optim().beta1(), 0);  // not defaulted yet
  EXPECT_TRUE(Validate(*raw, "spec.yaml").ok()) << Validate(*raw, "spec.yaml");
  raw->mutable_optim()->set_lr(0);
  auto st = Validate(*raw, "request");
  EXPECT_EQ(std::string(st.message()), "request: optim.lr: must be > 0, got 0");
}

TEST(SpecTest, ValidExamplesOfEveryScheduleAndDevice) {
  for (const char* kind : {"cosine", "linear", "constant", "wsd"}) {
    auto s = ParseYaml(kBase, "spec.yaml", {absl::StrCat("schedule.kind=", kind)});
    EXPECT_TRUE(s.ok()) << kind << ": " << s.status();
  }
  auto s = ParseYaml(kBase, "spec.yaml",
                     {"train.device=cuda", "train.precision=fp32", "train.zero=1",
                      "resources.ranks=4", "train.recompute=norm_gelu", "model.family=llama",
                      "model.n_kv_head=2", "train.loss_spike_factor=3"});
  EXPECT_TRUE(s.ok()) << s.status();
}

TEST(SpecTest, LoadFileUsesPathAsSource) {
  std::string dir = fs::JoinPath(::testing::TempDir(), absl::StrCat("spec_test_", ::getpid()));
  ASSERT_TRUE(fs::MakeDirs(dir).ok());
  std::string path = fs::JoinPath(dir, "job.yaml");
  ASSERT_TRUE(fs::WriteFileSynced(path, kBase).ok());
  auto s = LoadFile(path, {"train.batch_size=2"});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train().batch_size(), 2);
  ASSERT_TRUE(fs::WriteFileSynced(path, "train:\n  batchsize: 1\n").ok());
  s = LoadFile(path);
  EXPECT_THAT(Message(s), HasSubstr(absl::StrCat(path, ": train.batchsize: unknown field")));
  s = LoadFile(fs::JoinPath(dir, "missing.yaml"));
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(Message(s), HasSubstr("missing.yaml"));
  EXPECT_TRUE(fs::RemoveAll(dir).ok());
}

TEST(SpecTest, JsonErrorsNamePath) {
  auto s = ParseJsonRaw(R"({"train": {"batchsize": 8}})", "request");
  EXPECT_EQ(Message(s), "request: train.batchsize: unknown field (did you mean batch_size?)");
  s = ParseJsonRaw(R"({"train": {"batch_size": "abc"}})", "request");
  EXPECT_EQ(Message(s), "request: train.batch_size: expected an integer, got 'abc'");
  s = ParseJsonRaw(R"({"train": {"max_steps": "12"}, "name": null})", "request");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train().max_steps(), 12);
  s = ParseJsonRaw("[1, 2]", "request");
  EXPECT_THAT(Message(s), HasSubstr("request: expected a JSON object"));
  s = ParseJsonRaw(R"({"train": )", "request");
  EXPECT_THAT(Message(s), HasSubstr("request: "));
  EXPECT_FALSE(s.ok());
}

}  // namespace
}  // namespace llmt::spec
