// A CPU emulator for the subset of CUDA that kernels/cuda uses, so that the
// real kernel and launcher code (kernels/cuda/*.cu, compiled by the host
// compiler) runs and is tested on machines without a GPU.
//
// Force-included (-include) before everything in the emulated translation
// units. It makes __global__/__device__ functions plain functions and
// __shared__ variables function-level statics, and provides the built-in
// variables, barriers, warp shuffles and WMMA fragments:
//
//  * A launch runs the blocks of the grid one after another, highest index
//    first (CUDA promises no start order; see RunGrid); the threads of a
//    block are fibers (ucontext) on the calling thread, so a static
//    "__shared__" array is shared by exactly the threads of the running block.
//    Each fiber runs until it waits at a barrier or finishes (round-robin).
//    That order is deterministic and adversarial: without the barrier a
//    kernel needs, a thread reads shared memory before the others wrote it
//    (it starts as NaN bytes) or overwrites it before they read it. A barrier
//    that cannot complete is reported as a deadlock.
//  * __syncthreads() is a barrier over the block; __syncwarp() and every
//    shuffle are barriers over the 32 threads of a warp (shuffles exchange
//    values through per-warp slots), so warp-synchronous code is exact.
//  * WMMA fragments hold the whole 16x16 tile in every thread (the element ->
//    thread mapping is opaque in CUDA too, and kernels/cuda never indexes
//    fragments); loads/stores check the API's alignment and stride rules and
//    that a tile stays inside dynamic shared memory; stores are done by lane 0
//    only, so a missing __syncwarp() before reading them shows up as a race.
//  * The CUDA runtime functions the library calls (allocation, copies,
//    device queries, errors) are implemented on host memory by cuda_emu.cc;
//    the emulated binaries do not link libcudart.
//
// Not emulated: timing, memory coalescing, bank conflicts, register limits,
// and the weaker memory ordering of real GPUs (everything here is sequentially
// consistent at barriers). It validates kernel logic, indexing, masking,
// synchronisation structure and launch configuration, not performance.
#pragma once

#define LLMT_CUDA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

using std::isfinite;
using std::max;
using std::min;

// ---- built-in variables -------------------------------------------------------
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

namespace llmt::emu {

// Per-warp exchange slots and barrier (defined in cuda_emu.cc).
void WarpBarrier();
void WarpPut(uint64_t v);
uint64_t WarpGet(int lane);
int Lane();
void BlockBarrier();
int BlockOr(int pred);
// Every lane contributes `bytes` (<= 64) from `mine`; `all` receives the 32
// contributions in lane order. A warp-collective (all lanes must call it).
void WarpExchange(const void* mine, size_t bytes, void* all);
unsigned char* DynamicSmem();
size_t DynamicSmemBytes();
// cp.async (see EmuCpAsync below): the calling thread's pending copies.
void CpAsync(void* dst, const void* src, int bytes, int src_bytes);
void CpAsyncCommit();
void CpAsyncWait(int n);
[[noreturn]] void Fail(const char* what);
// wgmma (see EmuWgmma below): this thread's part of warpgroup MMAs.
void WgmmaIssue(float* d, int n, const uint32_t (&a)[4], uint64_t desc, int trans_b,
                bool accumulate);
void WgmmaIssueSS(float* d, int n, uint64_t desc_a, uint64_t desc_b, int trans_b,
                  bool accumulate);
void WgmmaFence();
void WgmmaCommit();
void WgmmaWait(int n);
// The byte offset of p in the block's dynamic shared memory (what a real
// shared-window address is for a matrix descriptor).
uint32_t SmemOffset(const void* p);

// Runs `body` for every block of `grid` on blockDim threads.
void RunGrid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);

template <typename... KArgs, typename... Args>
void Launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
  // The kernel's parameters by value, converted as a real launch would.
  std::tuple<std::decay_t<KArgs>...> params(static_cast<KArgs>(args)...);
  RunGrid(grid, block, smem, [&] { std::apply(kernel, params); });
}

}  // namespace llmt::emu

// ---- intrinsics -----------------------------------------------------------------
inline void __syncthreads() { ::llmt::emu::BlockBarrier(); }
inline int __syncthreads_or(int pred) { return ::llmt::emu::BlockOr(pred); }
inline void __syncwarp(unsigned /*mask*/ = 0xffffffffu) { ::llmt::emu::WarpBarrier(); }

template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask, int /*width*/ = 32) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a scalar");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  ::llmt::emu::WarpPut(bits);
  ::llmt::emu::WarpBarrier();
  const uint64_t other = ::llmt::emu::WarpGet(::llmt::emu::Lane() ^ lane_mask);
  ::llmt::emu::WarpBarrier();  // slots are reused by the next shuffle
  T r;
  std::memcpy(&r, &other, sizeof(T));
  return r;
}

inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 ------------------------
// d += a b for one warp, with the PTX ISA's fragment layouts (groupID g =
// lane >> 2, t = lane % 4; each .b32 register holds two bf16, lower column
// or row index in the low half):
//   A 16x16: a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..),
//            a[3] = (g+8, 2t+8..)
//   B 16x8:  b[0] = (k 2t..2t+1, n g), b[1] = (k 2t+8..2t+9, n g)
//   C/D 16x8 (f32): d[0..1] = (g, 2t..2t+1), d[2..3] = (g+8, 2t..2t+1)
inline void EmuMmaM16N8K16Bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  struct LaneFrag {
    uint32_t a[4];
    uint32_t b[2];
    float c[4];
  };
  LaneFrag mine;
  std::memcpy(mine.a, a, sizeof(mine.a));
  std::memcpy(mine.b, b, sizeof(mine.b));
  std::memcpy(mine.c, d, sizeof(mine.c));
  LaneFrag all[32];
  ::llmt::emu::WarpExchange(&mine, sizeof(mine), all);
  auto lo = [](uint32_t r) { return __bfloat162float(__ushort_as_bfloat16(r & 0xFFFFu)); };
  auto hi = [](uint32_t r) { return __bfloat162float(__ushort_as_bfloat16(r >> 16)); };
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const LaneFrag& f = all[l];
    A[g][2 * t] = lo(f.a[0]);
    A[g][2 * t + 1] = hi(f.a[0]);
    A[g + 8][2 * t] = lo(f.a[1]);
    A[g + 8][2 * t + 1] = hi(f.a[1]);
    A[g][2 * t + 8] = lo(f.a[2]);
    A[g][2 * t + 9] = hi(f.a[2]);
    A[g + 8][2 * t + 8] = lo(f.a[3]);
    A[g + 8][2 * t + 9] = hi(f.a[3]);
    B[2 * t][g] = lo(f.b[0]);
    B[2 * t + 1][g] = hi(f.b[0]);
    B[2 * t + 8][g] = lo(f.b[1]);
    B[2 * t + 9][g] = hi(f.b[1]);
    C[g][2 * t] = f.c[0];
    C[g][2 * t + 1] = f.c[1];
    C[g + 8][2 * t] = f.c[2];
    C[g + 8][2 * t + 1] = f.c[3];
  }
  const int lane = ::llmt::emu::Lane(), g = lane >> 2, t = lane & 3;
  const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
  for (int i = 0; i < 4; ++i) {
    float s = C[rows[i]][cols[i]];
    for (int k = 0; k < 16; ++k) s += A[rows[i]][k] * B[k][cols[i]];
    d[i] = s;
  }
}

// ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16 ------------------------
// Warp-collective: lane l supplies the address of row l % 8 of matrix l / 8
// (16 contiguous bytes, 16-byte aligned); every lane receives one 32-bit
// register per matrix. Without .trans register i of lane (g = lane >> 2,
// t = lane % 4) holds M_i[g][2t] (low half) and M_i[g][2t+1]; with .trans it
// holds M_i[2t][g] and M_i[2t+1][g]. The rows are read when the whole warp
// has arrived, like the real instruction.
inline void EmuLdMatrix(uint32_t* r, int n, const void* row, bool trans) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) {
    ::llmt::emu::Fail("ldmatrix: row address not 16-byte aligned");
  }
  const unsigned char* s = ::llmt::emu::DynamicSmem();
  const unsigned char* p = static_cast<const unsigned char*>(row);
  const int lane = ::llmt::emu::Lane();
  if (lane < 8 * n &&
      (s == nullptr || p < s || p + 16 > s + ::llmt::emu::DynamicSmemBytes())) {
    ::llmt::emu::Fail("ldmatrix: row outside dynamic shared memory");
  }
  const void* addrs[32];
  ::llmt::emu::WarpExchange(&row, sizeof(row), addrs);
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < n; ++i) {
    auto at = [&](int rr, int c) {
      uint16_t v;
      std::memcpy(&v, static_cast<const unsigned char*>(addrs[i * 8 + rr]) + 2 * c, 2);
      return static_cast<uint32_t>(v);
    };
    const uint32_t lo = trans ? at(2 * t, g) : at(g, 2 * t);
    const uint32_t hi = trans ? at(2 * t + 1, g) : at(g, 2 * t + 1);
    r[i] = lo | hi << 16;
  }
  ::llmt::emu::WarpBarrier();  // no lane runs ahead and rewrites a row another still reads
}

// ---- cp.async.{ca,cg}.shared.global [dst], [src], bytes, src_bytes ---------------------
// The source is read at issue; the destination is written only when the
// issuing thread waits for the copy's group (cp.async.wait_group), the latest
// moment the PTX ISA allows. So a read of the tile before the wait and the
// following barrier sees stale bytes, and a copy issued into a buffer other
// threads still read lands in the middle of their reads. Bytes past
// src_bytes are zero-filled. Copies left pending at the thread's exit are
// dropped (nothing may rely on them).
inline void EmuCpAsync(void* dst, const void* src, int bytes, int src_bytes) {
  ::llmt::emu::CpAsync(dst, src, bytes, src_bytes);
}

// ---- wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 (sm_90a) ------------------------
// The subset kernels/cuda uses: A (64 x 16) from registers (or shared memory,
// EmuWgmmaSS below), B (16 x N) from shared memory through a matrix
// descriptor (no swizzle or 128-byte swizzle, below), fp32 accumulators
// D (64 x N) = A B + (scale-d ? D : 0). A warpgroup is 4 consecutive
// warps (threads 128 w .. 128 w + 127); warp i of it owns rows 16 i .. 16 i + 15
// with the m16n8k16 fragment layouts (g = lane >> 2, t = lane % 4):
//   A: a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   D: d[4c + 2r + j] = (g + 8r, 8c + 2t + j) for n-chunk c = 0 .. N/8 - 1
// Descriptor (PTX ISA "Matrix Descriptor Format"): bits 0-13 start address
// >> 4, 16-29 leading-dimension byte offset (LBO) >> 4, 32-45 stride byte
// offset (SBO) >> 4, 49-51 base offset (must be 0 here), 62-63 layout type
// (0 = no swizzle, 1 = 128-byte swizzle; the others are not modelled).
// Element (k, n) of B is at shared address start + (canonical layouts,
// bf16, 8 elements = 16 bytes per row of a core matrix):
//   no swizzle, K-major  (trans_b = 0): (n % 8) 16 + (n / 8) SBO + (k % 8) 2 + (k / 8) LBO
//   no swizzle, MN-major (trans_b = 1): (n % 8) 2 + (n / 8) SBO + (k % 8) 16 + (k / 8) LBO
//   128B swizzle, K-major:  (n % 8) 128 + (n / 8) SBO + k 2            (LBO unused)
//   128B swizzle, MN-major: (n % 64) 2 + (n / 64) LBO + (k % 8) 128 + (k / 8) SBO
// and with the swizzle, address bits 4-6 are then XORed with bits 7-9 (so
// the pattern follows absolute addresses: tiles must be 1024-byte aligned;
// the emulated dynamic shared memory starts at a shared address that is not).
// Asynchrony is modelled at its latest: issuing records the operation (A's
// values are taken then), and it is carried out when the issuing warpgroup
// waits for its group (wgmma.wait_group), reading B from shared memory and
// updating D at that moment. So reading an accumulator before the wait sees
// its old value, and rewriting B's tile before the wait changes the product,
// as either may on the GPU. The wait is warpgroup-collective and checks that
// all 128 threads issued the same operations (shape, descriptor, transpose).
// wgmma.fence is checked in its usual form: a thread must have executed one
// since its last wait (or since it started) before issuing a wgmma, since
// between the two it may have touched the registers the wgmma uses.
inline void EmuWgmma(float* d, int n, const uint32_t (&a)[4], uint64_t desc, int trans_b,
                     bool accumulate) {
  ::llmt::emu::WgmmaIssue(d, n, a, desc, trans_b, accumulate);
}
// The SS form: A (64 x 16) from shared memory too, K-major only (imm-trans-a
// 0): element (m, k) where a K-major B's (k, n = m) would be under its own
// descriptor.
inline void EmuWgmmaSS(float* d, int n, uint64_t desc_a, uint64_t desc_b, int trans_b,
                       bool accumulate) {
  ::llmt::emu::WgmmaIssueSS(d, n, desc_a, desc_b, trans_b, accumulate);
}

// ---- WMMA ---------------------------------------------------------------------------
namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// The whole logical tile (A: M x K, B: K x N, accumulator: M x N) in fp32;
// only 16x16x16 is used by kernels/cuda.
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "emulated WMMA supports m16n16k16");
  float x[16][16];
};

namespace detail {
inline float ToFloat(float v) { return v; }
inline float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
void CheckPtr(const T* p, unsigned ldm, bool row_major_rows) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    ::llmt::emu::Fail("wmma: matrix pointer not 256-bit aligned");
  }
  if ((ldm * sizeof(T)) % 16 != 0) ::llmt::emu::Fail("wmma: ldm not a multiple of 16 bytes");
  // A tile inside dynamic shared memory must stay inside it.
  const unsigned char* s = ::llmt::emu::DynamicSmem();
  const unsigned char* b = reinterpret_cast<const unsigned char*>(p);
  if (s != nullptr && b >= s && b < s + ::llmt::emu::DynamicSmemBytes()) {
    (void)row_major_rows;
    const unsigned char* last =
        reinterpret_cast<const unsigned char*>(p + 15 * static_cast<size_t>(ldm) + 15);
    if (last + sizeof(T) > s + ::llmt::emu::DynamicSmemBytes()) {
      ::llmt::emu::Fail("wmma: tile extends past the end of dynamic shared memory");
    }
  }
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename L>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, float v) {
  for (auto& row : f.x) {
    for (float& e : row) e = v;
  }
}

// matrix_a / matrix_b: element (r, c) of the logical tile is p[r*ldm + c]
// (row_major) or p[r + c*ldm] (col_major).
template <typename Use, int M, int N, int K, typename T, typename L>
void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulator loads take a layout");
  constexpr bool kRow = std::is_same_v<L, row_major>;
  detail::CheckPtr(p, ldm, kRow);
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) {
      f.x[r][c] = detail::ToFloat(kRow ? p[r * ldm + c] : p[r + c * ldm]);
    }
  }
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm,
                      layout_t layout) {
  detail::CheckPtr(p, ldm, layout == mem_row_major);
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) {
      f.x[r][c] = layout == mem_row_major ? p[r * ldm + c] : p[r + c * ldm];
    }
  }
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm,
                       layout_t layout) {
  detail::CheckPtr(p, ldm, layout == mem_row_major);
  if (::llmt::emu::Lane() != 0) return;
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) {
      (layout == mem_row_major ? p[r * ldm + c] : p[r + c * ldm]) = f.x[r][c];
    }
  }
}

// d = a b + c (fp32 accumulation).
template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d,
              const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  float out[16][16];
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i][j];
      for (int k = 0; k < 16; ++k) s += a.x[i][k] * b.x[k][j];
      out[i][j] = s;
    }
  }
  std::memcpy(d.x, out, sizeof(out));
}

}  // namespace nvcuda::wmma
