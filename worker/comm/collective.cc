#include "worker/comm/collective.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace llmt::comm {

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "?";
}

ShardLayout ShardLayout::Even(size_t total, int world, size_t align) {
  if (align == 0) align = 1;
  if (world < 1) world = 1;
  size_t chunk = (total + world - 1) / world;
  chunk = (chunk + align - 1) / align * align;
  std::vector<size_t> lens(world);
  size_t left = total;
  for (int r = 0; r < world; ++r) {
    lens[r] = std::min(chunk, left);
    left -= lens[r];
  }
  return FromLengths(std::move(lens));
}

ShardLayout ShardLayout::FromLengths(std::vector<size_t> lens) {
  ShardLayout l;
  l.lens_ = std::move(lens);
  l.offsets_.resize(l.lens_.size());
  for (size_t r = 0; r < l.lens_.size(); ++r) {
    l.offsets_[r] = l.total_;
    l.total_ += l.lens_[r];
  }
  return l;
}

bool ShardLayout::equal_lengths() const {
  return std::all_of(lens_.begin(), lens_.end(), [&](size_t n) { return n == lens_[0]; });
}

absl::Status ShardLayout::CheckWorld(int world) const {
  if (static_cast<int>(lens_.size()) != world) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard layout has ", lens_.size(), " shards but the world size is ", world));
  }
  return absl::OkStatus();
}

std::string ShardLayout::DebugString() const {
  return absl::StrCat("ShardLayout{total=", total_, " lens=[", absl::StrJoin(lens_, ","), "]}");
}

absl::Status Collective::CheckRoot(const char* call, int root) const {
  if (root < 0 || root >= world_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(call, ": root rank ", root, " is outside [0, ", world_size(), ")"));
  }
  return absl::OkStatus();
}

absl::Status Collective::CheckReduceScatterArgs(const float* in, const float* out,
                                                const ShardLayout& layout, ReduceOp op) const {
  if (op != ReduceOp::kSum && op != ReduceOp::kAvg) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReduceScatter: op ", ReduceOpName(op), " is not supported (sum or avg)"));
  }
  if (absl::Status s = layout.CheckWorld(world_size()); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("ReduceScatter: ", s.message()));
  }
  const size_t len = layout.len(rank());
  if (len == 0 || layout.total() == 0) return absl::OkStatus();
  if (in == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("ReduceScatter: null buffer");
  }
  // Compare addresses as integers: `in` and `out` may point into different
  // allocations, where pointer comparison is unspecified.
  const auto in_lo = reinterpret_cast<uintptr_t>(in);
  const auto in_hi = reinterpret_cast<uintptr_t>(in + layout.total());
  const auto out_lo = reinterpret_cast<uintptr_t>(out);
  const auto out_hi = reinterpret_cast<uintptr_t>(out + len);
  const bool overlap = out_lo < in_hi && in_lo < out_hi;
  if (overlap && out != in + layout.offset(rank())) {
    return absl::InvalidArgumentError(
        "ReduceScatter: `out` overlaps `in` but is not in + layout.offset(rank) "
        "(in-place reduce-scatter must write the rank's own shard)");
  }
  return absl::OkStatus();
}

absl::Status Collective::CheckAllGatherArgs(const float* data, const ShardLayout& layout) const {
  if (absl::Status s = layout.CheckWorld(world_size()); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("AllGather: ", s.message()));
  }
  if (layout.total() > 0 && data == nullptr) {
    return absl::InvalidArgumentError("AllGather: null buffer");
  }
  return absl::OkStatus();
}

absl::Status LocalCollective::AllReduce(float* data, size_t count, ReduceOp op) {
  return absl::OkStatus();  // one rank: sum, avg, max and min are all the identity
}

absl::Status LocalCollective::AllReduceScalar(double* value, ReduceOp op) {
  return absl::OkStatus();
}

absl::Status LocalCollective::ReduceScatter(const float* in, float* out, const ShardLayout& layout,
                                            ReduceOp op) {
  RETURN_IF_ERROR(CheckReduceScatterArgs(in, out, layout, op));
  if (layout.total() > 0 && out != in) {
    std::memmove(out, in, layout.total() * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status LocalCollective::AllGather(float* data, const ShardLayout& layout) {
  return CheckAllGatherArgs(data, layout);
}

absl::Status LocalCollective::Broadcast(void* data, size_t bytes, int root) {
  return CheckRoot("Broadcast", root);
}

}  // namespace llmt::comm
