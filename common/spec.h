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
// ParseYaml / LoadFile / ParseJson run the whole pipeline: convert, then
// ApplyDefaults, then Validate; the result is ready to train. Every problem
// found is reported, one "<source>: <field.path>: <what>" line each.
// Overrides are "a.b.c=value" strings (value taken as a YAML scalar).
absl::StatusOr<llmt::v1::JobSpec> ParseYaml(const std::string& yaml_text, const std::string& source,
                                            const std::vector<std::string>& overrides = {});
absl::StatusOr<llmt::v1::JobSpec> LoadFile(const std::string& path,
                                           const std::vector<std::string>& overrides = {});
absl::StatusOr<llmt::v1::JobSpec> ParseJson(const std::string& json, const std::string& source);

// Conversion only (syntax, unknown fields, types, overrides): no defaults, no
// semantic validation. For tools that show or edit a spec as written.
absl::StatusOr<llmt::v1::JobSpec> ParseYamlRaw(const std::string& yaml_text,
                                               const std::string& source,
                                               const std::vector<std::string>& overrides = {});
absl::StatusOr<llmt::v1::JobSpec> ParseJsonRaw(const std::string& json, const std::string& source);

// Fills documented defaults (see job.proto comments) for zero fields.
// Idempotent. Family-dependent fields are filled only for a known family.
void ApplyDefaults(llmt::v1::JobSpec* spec);
// Semantic checks: ranges, family names, divisibility (d_model % n_head,
// n_head % n_kv_head), seq_len <= max_seq_len, schedule kind, warmup <
// max_steps, etc. Zero fields that mean "default" are accepted (checks run on
// a copy with ApplyDefaults applied). InvalidArgument with one line
// "<source>: <field.path>: <why>" per problem.
absl::Status Validate(const llmt::v1::JobSpec& spec, const std::string& source);

// Canonical compact JSON in protobuf's JSON mapping (proto field names, zero
// fields and empty sections omitted, int64 as strings, map keys sorted), so
// equal specs give identical bytes. ParseJson reads it back.
std::string ToJson(const llmt::v1::JobSpec& spec);
// Block YAML with the same content (int64 as plain numbers); ParseYaml reads it back.
std::string ToYaml(const llmt::v1::JobSpec& spec);

}  // namespace llmt::spec
