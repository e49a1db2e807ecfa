// safetensors files (the Hugging Face format): 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__"},
// then the raw tensor bytes. We write F32 (and read F32/BF16/F16 into fp32).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace llmt::storage {

struct TensorRef {  // for writing: points at caller-owned fp32 data
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
};

struct Tensor {  // read back, converted to fp32
  std::vector<int64_t> shape;
  std::vector<float> data;
};

// Writes (and fsyncs) `path`. Tensors are stored in the given order.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};
// Validates header JSON, dtypes, shapes vs offsets and file size; errors name
// the file and the tensor.
absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path);

}  // namespace llmt::storage
