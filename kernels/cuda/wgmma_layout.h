// The two shared-memory tile layouts the wgmma kernels can read their
// operands from (mma_util.cuh says what each is); host-visible so that the
// dispatch, the self-check and the tests can name them.
#pragma once

namespace llmt::kernels::cuda::internal {

enum class WgLayout { kBlocked, kSwizzled };

}  // namespace llmt::kernels::cuda::internal
