// JobSpec loading: YAML -> JSON -> llmt.v1.JobSpec via protobuf's JSON mapping
// (unknown fields rejected), `--set a.b=v` overrides applied to the YAML tree
// before conversion, then defaults and semantic validation. Errors name the
// file and the field path ("spec.yaml: train.batch_size: must be > 0").
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "llmt/v1/job.pb.h"

namespace llmt::spec {

// `source` names the input in errors (a file path or "request").
absl::StatusOr<llmt::v1::JobSpec> ParseYaml(const std::string& yaml_text, const std::string& source,
                                            const std::vector<std::string>& overrides = {});
absl::StatusOr<llmt::v1::JobSpec> LoadFile(const std::string& path,
                                           const std::vector<std::string>& overrides = {});
absl::StatusOr<llmt::v1::JobSpec> ParseJson(const std::string& json, const std::string& source);

// Fills documented defaults (see job.proto comments) for zero fields.
void ApplyDefaults(llmt::v1::JobSpec* spec);
// Semantic checks after defaults: ranges, family names, divisibility
// (d_model % n_head, n_head % n_kv_head), seq_len <= max_seq_len, schedule kind,
// warmup < max_steps, etc. InvalidArgument naming "<source>: <field.path>: <why>".
absl::Status Validate(const llmt::v1::JobSpec& spec, const std::string& source);

std::string ToJson(const llmt::v1::JobSpec& spec);  // canonical JSON (for trainer_state.json)
std::string ToYaml(const llmt::v1::JobSpec& spec);

}  // namespace llmt::spec
