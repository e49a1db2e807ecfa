// CudaModel for builds without the CUDA backend (no nvcc at configure time):
// the trainer links the same interface and reports why train.device: cuda
// cannot run, instead of failing to link or silently using the CPU.
#include "absl/strings/str_cat.h"
#include "worker/model/cuda_model.h"

namespace llmt::model {

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Create(const ModelConfig&, int, int,
                                                            const CudaModelOptions&) {
  return absl::FailedPreconditionError(
      "train.device: cuda, but this llmt was built without the CUDA backend (nvcc was not found "
      "when it was configured); rebuild on a machine with CUDA or use train.device: cpu");
}

}  // namespace llmt::model
