#include "worker/comm/nccl_collective.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/status.h"
#include "worker/comm/group.h"

namespace llmt::comm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

ncclRedOp_t NcclOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return ncclAvg;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  return ncclSum;
}

std::string Seconds(Clock::duration d) {
  return absl::StrFormat("%.2f s", std::chrono::duration<double>(d).count());
}

absl::Status CudaError(const char* what, cudaError_t e) {
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

cudaStream_t S(void* s) { return static_cast<cudaStream_t>(s); }

}  // namespace

NcclCollective::NcclCollective(std::shared_ptr<Store> store, int rank, int world,
                               const NcclOptions& opts)
    : base_store_(std::move(store)), rank_(rank), world_(world), opts_(opts) {
  store_ = std::make_unique<PrefixStore>(opts.store_prefix + "/nccl/", base_store_.get());
  grace_ = DiagnosisGrace(opts.timeout);
  op_timeout_ = opts.timeout - grace_;
}

absl::StatusOr<std::unique_ptr<NcclCollective>> NcclCollective::Create(std::shared_ptr<Store> store,
                                                                       int rank, int world,
                                                                       const NcclOptions& opts) {
  if (world < 1) return absl::InvalidArgumentError(absl::StrCat("world size ", world, " < 1"));
  if (rank < 0 || rank >= world) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is outside [0, ", world, ")"));
  }
  if (store == nullptr) return absl::InvalidArgumentError("nccl: no rendezvous store");
  std::unique_ptr<NcclCollective> c(new NcclCollective(std::move(store), rank, world, opts));
  RETURN_IF_ERROR(c->Init());
  return c;
}

absl::Status NcclCollective::Init() {
  const auto t0 = Clock::now();
  int count = 0;
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess || count == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("nccl: no CUDA device available (", cudaGetErrorString(e), ")"));
  }
  if (opts_.device >= 0) {
    if (opts_.device >= count) {
      return absl::InvalidArgumentError(absl::StrCat("nccl: device ", opts_.device,
                                                     " does not exist (", count,
                                                     " visible; "
                                                     "check LOCAL_RANK / CUDA_VISIBLE_DEVICES)"));
    }
    if (cudaError_t e = cudaSetDevice(opts_.device); e != cudaSuccess) {
      return CudaError("cudaSetDevice", e);
    }
  }
  cudaGetDevice(&device_);
  if (opts_.stream != nullptr) {
    stream_ = opts_.stream;
  } else {
    cudaStream_t s;
    if (cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking); e != cudaSuccess) {
      return CudaError("cudaStreamCreate", e);
    }
    stream_ = s;
    own_stream_ = true;
  }
  if (cudaError_t e = cudaMalloc(&dev_scratch_, sizeof(double)); e != cudaSuccess) {
    return CudaError("cudaMalloc", e);
  }
  if (cudaError_t e = cudaMallocHost(&host_scratch_, sizeof(double)); e != cudaSuccess) {
    return CudaError("cudaMallocHost", e);
  }

  ASSIGN_OR_RETURN(peer_info_, JoinGroup(store_.get(), rank_, world_, opts_.rendezvous_timeout));
  ncclUniqueId id;
  if (rank_ == 0) {
    if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
      return absl::UnavailableError(absl::StrCat("ncclGetUniqueId: ", ncclGetErrorString(r)));
    }
    RETURN_IF_ERROR(store_->Set("uid", std::string(id.internal, sizeof(id.internal))));
  } else {
    ASSIGN_OR_RETURN(std::string v, store_->Get("uid", opts_.rendezvous_timeout));
    if (v.size() != sizeof(id.internal)) {
      return absl::InternalError(absl::StrCat("nccl: unique id from the store has ", v.size(),
                                              " bytes, expected ", sizeof(id.internal)));
    }
    std::memcpy(id.internal, v.data(), v.size());
  }

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // so a missing peer cannot hang init (see header)
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, world_, id, rank_, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    if (comm) ncclCommAbort(comm);
    return absl::UnavailableError(
        absl::StrCat("ncclCommInitRankConfig on rank ", rank_, ": ", ncclGetErrorString(r)));
  }
  comm_ = comm;
  bool timed_out = false;
  std::string err = WaitDone(Clock::now() + opts_.rendezvous_timeout, &timed_out);
  if (!err.empty()) {
    ncclCommAbort(comm_);
    comm_ = nullptr;
    std::string msg = absl::StrCat("nccl: communicator init on rank ", rank_, " of ", world_,
                                   " failed after ", Seconds(Clock::now() - t0), ": ", err);
    return timed_out ? absl::DeadlineExceededError(msg) : absl::UnavailableError(msg);
  }
  LLMT_LOG(Debug) << "nccl: rank " << rank_ << "/" << world_ << " on device " << device_
                  << " ready in " << Seconds(Clock::now() - t0);
  return absl::OkStatus();
}

NcclCollective::~NcclCollective() {
  cudaSetDevice(device_);  // the destructor may run on another thread
  if (comm_ != nullptr) {
    if (broken_.ok()) {
      // Finalize flushes outstanding work; bounded like any other call.
      ncclCommFinalize(comm_);
      bool timed_out = false;
      if (!WaitDone(Clock::now() + op_timeout_, &timed_out).empty()) {
        ncclCommAbort(comm_);
      } else {
        ncclCommDestroy(comm_);
      }
    } else {
      ncclCommAbort(comm_);
    }
  }
  if (dev_scratch_) cudaFree(dev_scratch_);
  if (host_scratch_) cudaFreeHost(host_scratch_);
  if (own_stream_ && stream_) cudaStreamDestroy(S(stream_));
}

std::string NcclCollective::WaitDone(Clock::time_point deadline, bool* timed_out) {
  *timed_out = false;
  // Phase 1: a non-blocking communicator reports ncclInProgress until the
  // enqueue (or init / finalize) has actually happened.
  while (true) {
    ncclResult_t async = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(comm_, &async);
    if (r != ncclSuccess) return absl::StrCat("ncclCommGetAsyncError: ", ncclGetErrorString(r));
    if (async == ncclSuccess) break;
    if (async != ncclInProgress) {
      return absl::StrCat(ncclGetErrorString(async), " (", ncclGetLastError(comm_), ")");
    }
    if (Clock::now() >= deadline) {
      *timed_out = true;
      return "timed out waiting for NCCL to enqueue the operation";
    }
    std::this_thread::yield();
  }
  // Phase 2: the kernels on the stream; a peer that died shows up either as
  // an async NCCL error (network transports) or as a kernel that never ends.
  while (true) {
    cudaError_t e = cudaStreamQuery(S(stream_));
    if (e == cudaSuccess) return "";
    if (e != cudaErrorNotReady) return absl::StrCat("CUDA: ", cudaGetErrorString(e));
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      return absl::StrCat(ncclGetErrorString(async), " (", ncclGetLastError(comm_), ")");
    }
    if (Clock::now() >= deadline) {
      *timed_out = true;
      return absl::StrCat("timed out after ", Seconds(op_timeout_),
                          " waiting for the collective to finish");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

absl::Status NcclCollective::Fail(const char* op, const std::string& what, uint64_t seq,
                                  const std::string& error, bool timed_out, Clock::time_point t0) {
  // Abort releases kernels spinning on a dead peer and frees the rank to
  // report; the communicator is unusable afterwards either way.
  ncclCommAbort(comm_);
  comm_ = nullptr;
  const std::string peers =
      DiagnosePeers(store_.get(), rank_, world_, seq, op, error, grace_, peer_info_);
  std::string msg =
      absl::StrCat("nccl ", op, " (collective #", seq, ", ", what, ") failed on rank ", rank_,
                   " of ", world_, " after ", Seconds(Clock::now() - t0), ": ", error, ". ", peers);
  broken_ = timed_out ? absl::DeadlineExceededError(msg) : absl::UnavailableError(msg);
  LLMT_LOG(Error) << msg;
  return broken_;
}

absl::Status NcclCollective::Run(const char* op, const std::string& what,
                                 const std::function<int()>& enqueue) {
  if (!broken_.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "nccl ", op, ": the group is unusable after an earlier failure: ", broken_.message()));
  }
  const uint64_t seq = ++seq_;
  const auto t0 = Clock::now();
  cudaSetDevice(device_);
  auto r = static_cast<ncclResult_t>(enqueue());
  if (r != ncclSuccess && r != ncclInProgress) {
    return Fail(op, what, seq,
                absl::StrCat(ncclGetErrorString(r), " (", ncclGetLastError(comm_), ")"), false, t0);
  }
  bool timed_out = false;
  std::string err = WaitDone(t0 + op_timeout_, &timed_out);
  if (!err.empty()) return Fail(op, what, seq, err, timed_out, t0);
  return absl::OkStatus();
}

absl::Status NcclCollective::AllReduce(float* data, size_t count, ReduceOp op) {
  if (count == 0) return broken_;
  return Run("all_reduce", absl::StrCat(count, " floats, ", ReduceOpName(op)), [&] {
    return static_cast<int>(
        ncclAllReduce(data, data, count, ncclFloat, NcclOp(op), comm_, S(stream_)));
  });
}

absl::Status NcclCollective::AllReduceScalar(double* value, ReduceOp op) {
  *host_scratch_ = *value;
  RETURN_IF_ERROR(Run("all_reduce_scalar", ReduceOpName(op), [&] {
    cudaMemcpyAsync(dev_scratch_, host_scratch_, sizeof(double), cudaMemcpyHostToDevice,
                    S(stream_));
    ncclResult_t r =
        ncclAllReduce(dev_scratch_, dev_scratch_, 1, ncclDouble, NcclOp(op), comm_, S(stream_));
    if (r != ncclSuccess && r != ncclInProgress) return static_cast<int>(r);
    // With a non-blocking communicator the copy must wait until NCCL has
    // enqueued its kernel, or it would be ordered before it on the stream.
    ncclResult_t async = ncclInProgress;
    while (ncclCommGetAsyncError(comm_, &async) == ncclSuccess && async == ncclInProgress) {
      std::this_thread::yield();
    }
    if (async != ncclSuccess) return static_cast<int>(async);
    cudaMemcpyAsync(host_scratch_, dev_scratch_, sizeof(double), cudaMemcpyDeviceToHost,
                    S(stream_));
    return static_cast<int>(ncclSuccess);
  }));
  *value = *host_scratch_;
  return absl::OkStatus();
}

absl::Status NcclCollective::ReduceScatter(const float* in, float* out, const ShardLayout& layout,
                                           ReduceOp op) {
  RETURN_IF_ERROR(CheckReduceScatterArgs(in, out, layout, op));
  if (layout.total() == 0) return broken_;
  const std::string what = absl::StrCat(layout.total(), " floats, ", ReduceOpName(op));
  if (layout.equal_lengths()) {
    // NCCL's in-place convention (out == in + rank * len) is our alias rule.
    return Run("reduce_scatter", what, [&] {
      return static_cast<int>(
          ncclReduceScatter(in, out, layout.len(0), ncclFloat, NcclOp(op), comm_, S(stream_)));
    });
  }
  return Run("reduce_scatter", what, [&] {
    ncclGroupStart();
    for (int r = 0; r < world_; ++r) {
      if (layout.len(r) == 0) continue;
      const float* src = in + layout.offset(r);
      // recvbuff is only written on the root; elsewhere pass the (valid)
      // source so no rank hands NCCL a pointer it does not own.
      float* dst = r == rank_ ? out : const_cast<float*>(src);
      ncclResult_t res =
          ncclReduce(src, dst, layout.len(r), ncclFloat, NcclOp(op), r, comm_, S(stream_));
      if (res != ncclSuccess && res != ncclInProgress) {
        ncclGroupEnd();
        return static_cast<int>(res);
      }
    }
    return static_cast<int>(ncclGroupEnd());
  });
}

absl::Status NcclCollective::AllGather(float* data, const ShardLayout& layout) {
  RETURN_IF_ERROR(CheckAllGatherArgs(data, layout));
  if (layout.total() == 0) return broken_;
  const std::string what = absl::StrCat(layout.total(), " floats");
  if (layout.equal_lengths()) {
    return Run("all_gather", what, [&] {
      return static_cast<int>(ncclAllGather(data + layout.offset(rank_), data, layout.len(0),
                                            ncclFloat, comm_, S(stream_)));
    });
  }
  return Run("all_gather", what, [&] {
    ncclGroupStart();
    for (int r = 0; r < world_; ++r) {
      if (layout.len(r) == 0) continue;
      float* p = data + layout.offset(r);
      ncclResult_t res = ncclBroadcast(p, p, layout.len(r), ncclFloat, r, comm_, S(stream_));
      if (res != ncclSuccess && res != ncclInProgress) {
        ncclGroupEnd();
        return static_cast<int>(res);
      }
    }
    return static_cast<int>(ncclGroupEnd());
  });
}

absl::Status NcclCollective::Broadcast(void* data, size_t bytes, int root) {
  RETURN_IF_ERROR(CheckRoot("Broadcast", root));
  if (bytes == 0) return broken_;
  return Run("broadcast", absl::StrCat(bytes, " bytes from rank ", root), [&] {
    return static_cast<int>(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, S(stream_)));
  });
}

absl::Status NcclCollective::Barrier() {
  // NCCL has no barrier: an all-reduce of one value synchronises all ranks.
  return Run("barrier", "1 double", [&] {
    return static_cast<int>(
        ncclAllReduce(dev_scratch_, dev_scratch_, 1, ncclDouble, ncclSum, comm_, S(stream_)));
  });
}

}  // namespace llmt::comm
