// Register-level tensor-core primitives shared by the flash-attention
// kernels: mma.sync (m16n8k16 bf16 -> fp32), ldmatrix, cp.async, the
// accumulator -> A-fragment conversion, quad reductions, and the Hopper
// (sm_90a) warpgroup MMA wgmma.mma_async with its matrix descriptors. Each has
// an LLMT_CUDA_EMULATION branch so the same kernels run on the CPU emulator
// (tests/unit/cuda/emu). Not a public header.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/wgmma_layout.h"

namespace llmt::kernels::cuda::internal {

constexpr float kLog2e = 1.4426950408889634f;

// ---- primitives ------------------------------------------------------------------
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t* b) {
#ifdef LLMT_CUDA_EMULATION
  const uint32_t bb[2] = {b[0], b[1]};
  EmuMmaM16N8K16Bf16(d, a, bb);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Four 8x8 bf16 matrices; this lane gives the address of row lane % 8 of
// matrix lane / 8.
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const bf16* row) {
#ifdef LLMT_CUDA_EMULATION
  EmuLdMatrix(r, 4, row, false);
#else
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#endif
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const bf16* row) {
#ifdef LLMT_CUDA_EMULATION
  EmuLdMatrix(r, 4, row, true);
#else
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#endif
}

// 16 bytes global -> shared, bypassing L1; zero-filled when !valid (src must
// still be a mapped address).
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, bool valid) {
#ifdef LLMT_CUDA_EMULATION
  EmuCpAsync(dst, src, 16, valid ? 16 : 0);
#else
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
#endif
}
__device__ __forceinline__ void CpAsync4(void* dst, const void* src, bool valid) {
#ifdef LLMT_CUDA_EMULATION
  EmuCpAsync(dst, src, 4, valid ? 4 : 0);
#else
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(a), "l"(src),
               "r"(valid ? 4 : 0)
               : "memory");
#endif
}
__device__ __forceinline__ void CpAsyncCommit() {
#ifdef LLMT_CUDA_EMULATION
  ::llmt::emu::CpAsyncCommit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// All of this thread's committed copies have landed (a __syncthreads must
// follow before other threads read them).
__device__ __forceinline__ void CpAsyncWaitAll() {
#ifdef LLMT_CUDA_EMULATION
  ::llmt::emu::CpAsyncWait(0);
#else
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
#endif
}

__device__ __forceinline__ int DivUp(int a, int b) { return (a + b - 1) / b; }

__device__ __forceinline__ uint32_t Pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  uint32_t r;
  memcpy(&r, &v, sizeof(r));
  return r;
}

__device__ __forceinline__ float QuadMax(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float QuadSum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// A operand (16 x 16) at rows r0.., columns c0.. of a row-major tile. Also
// the .trans B pair for k = rows r0..r0+15, n = columns c0..c0+15 (same
// addresses): registers 0, 1 = n-tile c0, registers 2, 3 = n-tile c0 + 8.
__device__ __forceinline__ const bf16* RowsAddr(const bf16* tile, int ld, int r0, int c0,
                                                int lane) {
  return tile + (r0 + (lane & 15)) * ld + c0 + (lane >> 4) * 8;
}
// B pair whose n is a tile row and k runs along it: n = rows n0..n0+15,
// k = columns k0..k0+15; registers 0, 1 = n-tile n0, registers 2, 3 = n0 + 8.
__device__ __forceinline__ const bf16* ColsAddr(const bf16* tile, int ld, int n0, int k0,
                                                int lane) {
  return tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * ld + k0 + ((lane >> 3) & 1) * 8;
}

// The A operand for k-chunk kc (16 columns) of a 16 x (8 * nt) accumulator:
// n-tiles 2kc and 2kc+1 hold exactly the A fragment's columns.
__device__ __forceinline__ void AccToA(uint32_t (&a)[4], const float (&lo)[4],
                                       const float (&hi)[4]) {
  a[0] = Pack(lo[0], lo[1]);
  a[1] = Pack(lo[2], lo[3]);
  a[2] = Pack(hi[0], hi[1]);
  a[3] = Pack(hi[2], hi[3]);
}

// n floats of a row vector (lse or Dsum) from index i0 by a block of NT
// threads; zeros past T. Does not commit.
template <int NT>
__device__ __forceinline__ void LoadRowStatsAsync(float* dst, const float* src, int i0, int n,
                                                  int T) {
  for (int e = threadIdx.x; e < n; e += NT) {
    const bool ok = i0 + e < T;
    CpAsync4(dst + e, src + (ok ? i0 + e : 0), ok);
  }
}

// Writes rows (row_lo, row_lo + 8) of a thread's accumulators, scaled, as
// bf16 pairs into a strided global matrix (columns 8 nd + 2t).
template <int HD>
__device__ __forceinline__ void StoreAcc(bf16* dst, int64_t ld, int row_lo, int T, float scale,
                                         const float (&acc)[HD / 8][4], int t) {
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) {
    const int c = 8 * nd + 2 * t;
    if (row_lo < T) {
      *reinterpret_cast<uint32_t*>(dst + static_cast<int64_t>(row_lo) * ld + c) =
          Pack(acc[nd][0] * scale, acc[nd][1] * scale);
    }
    if (row_lo + 8 < T) {
      *reinterpret_cast<uint32_t*>(dst + static_cast<int64_t>(row_lo + 8) * ld + c) =
          Pack(acc[nd][2] * scale, acc[nd][3] * scale);
    }
  }
}

// One key tile's online-softmax step for a thread's rows g (elements 0, 1)
// and g + 8 (2, 3) of a 16-row m-tile, after masking: the running max m (raw
// score units) advances, the scores s become probabilities (exp2, log2(e)
// folded into sl2), and the partial row sums l are rescaled by the change of
// max, which `corr` returns (per row) for the output accumulator. l is kept
// per thread (its own columns) and summed over the quad at the end; the
// correction is uniform over the quad, so that is exact.
template <int NT>
__device__ __forceinline__ void OnlineSoftmaxScores(float (&s)[NT][4], float (&m)[2],
                                                    float (&l)[2], float sl2, float (&corr)[2]) {
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
    mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
  }
  float ms[2], psum[2] = {0.f, 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float m_new = fmaxf(m[r], QuadMax(mx[r]));
    // A row with no visible key yet keeps m = -inf; subtracting 0 then
    // gives p = 0 instead of NaN.
    ms[r] = m_new == -INFINITY ? 0.f : m_new * sl2;
    corr[r] = Exp2Approx(m[r] * sl2 - ms[r]);  // 0 for the initial -inf
    m[r] = m_new;
  }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float p = Exp2Approx(fmaf(s[nt][i], sl2, -ms[i >> 1]));
      s[nt][i] = p;
      psum[i >> 1] += p;
    }
  }
  l[0] = l[0] * corr[0] + psum[0];
  l[1] = l[1] * corr[1] + psum[1];
}

// The output accumulator's rescale by OnlineSoftmaxScores' corr.
template <int HD>
__device__ __forceinline__ void RescaleAcc(float (&o)[HD / 8][4], const float (&corr)[2]) {
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) {
    o[nd][0] *= corr[0];
    o[nd][1] *= corr[0];
    o[nd][2] *= corr[1];
    o[nd][3] *= corr[1];
  }
}

// Both at once: the step of a kernel whose P V product is not in flight.
template <int NT, int HD>
__device__ __forceinline__ void OnlineSoftmax(float (&s)[NT][4], float (&o)[HD / 8][4],
                                              float (&m)[2], float (&l)[2], float sl2) {
  float corr[2];
  OnlineSoftmaxScores<NT>(s, m, l, sl2, corr);
  RescaleAcc<HD>(o, corr);
}

// The forward's epilogue for a thread's rows `row` and row + 8 of a 16-row
// m-tile: O / l (l summed over the quad) into `out` (row stride ld) and the
// rows' log-sum-exp, m * scale + log(l), into lse_rows (the (batch, head)'s
// [T] row statistics). Rows >= T are not written.
template <int HD>
__device__ __forceinline__ void StoreForwardRows(bf16* out, int64_t ld, float* lse_rows, int row,
                                                 int T, float scale, float (&o)[HD / 8][4],
                                                 const float (&m)[2], const float (&l)[2], int t) {
  const float lsum[2] = {QuadSum(l[0]), QuadSum(l[1])};
#pragma unroll
  for (int nd = 0; nd < HD / 8; ++nd) {
    o[nd][0] /= lsum[0];
    o[nd][1] /= lsum[0];
    o[nd][2] /= lsum[1];
    o[nd][3] /= lsum[1];
  }
  StoreAcc<HD>(out, ld, row, T, 1.f, o, t);
  if (t == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (row + 8 * r < T) lse_rows[row + 8 * r] = m[r] * scale + logf(lsum[r]);
    }
  }
}

// ---- Hopper warpgroup MMA (wgmma, sm_90a) ---------------------------------------
// wgmma.mma_async.m64nNk16.f32.bf16.bf16 with A (64 x 16) in registers and B
// (16 x N) in shared memory: one instruction for the 4 warps of a warpgroup,
// warp i of which owns rows 16 i .. 16 i + 15 with exactly the mma.sync
// fragment layouts (A as in Mma, D as N / 8 m16n8 accumulator tiles). So a
// kernel written for 4 warps x 16 rows of mma.sync keeps its softmax and
// fragment code and swaps only its products; B is read by the tensor cores
// straight from shared memory, once per warpgroup instead of once per warp.
//
// Operand tiles: [rows][cols] bf16 (cols = 64 or 128, rows a multiple of 8)
// in shared memory, in one of two canonical layouts of the PTX ISA, each
// readable K-major (the tile's rows are the product's n or m, its columns k:
// K in Q K^T, trans_b = 0) and MN-major (its rows are k, its columns n: V in
// P V, imm-trans-b = 1) from one copy:
//  - kBlocked, no swizzle: 8 x 8 "core matrices" of 128 contiguous bytes,
//    element (r, c) at ((r / 8) (cols / 8) + c / 8) 64 + (r % 8) 8 + c % 8.
//    K-major: LBO (next 8 k) 128 bytes, SBO (next 8 n) cols x 16 bytes;
//    MN-major: SBO (next 8 n) 128 bytes, LBO (next 8 k) cols x 16 bytes.
//  - kSwizzled, 128-byte swizzle: 64-column regions of rows x 128 bytes, the
//    16-byte chunk j of row r stored at chunk j ^ (r % 8) -- the XOR is on
//    shared-memory address bits 4-6 with bits 7-9, so every tile (and
//    region) must start 1024-byte aligned. K-major: SBO (next 8 n) 1024
//    bytes, LBO unused, k-chunk kc starts (kc % 4) x 32 bytes into region
//    kc / 4; MN-major: SBO (next 8 k) 1024 bytes, LBO (next 64 n) the region
//    size, rows x 128 bytes.
// On an H100 the attention kernels ran at ~115 TFLOP/s on blocked tiles,
// forward and backward alike, and 1.3-1.8x faster on swizzled ones (GPT-2
// shape: forward 0.94 -> 0.52 ms, backward 2.23 -> 1.76): the tensor cores
// read the blocked layout with bank conflicts, we take it (the 8 core
// matrices of a 16-byte column sit 128+ bytes apart, in the same 4 banks).
// (WgLayout is in wgmma_layout.h.)

// Offset of element (r, c) in a [rows][cols] tile.
template <WgLayout L>
__device__ __forceinline__ int TileOffset(int r, int c, int rows, int cols) {
  if constexpr (L == WgLayout::kBlocked) {
    return ((r >> 3) * (cols >> 3) + (c >> 3)) * 64 + (r & 7) * 8 + (c & 7);
  } else {
    return ((c >> 6) * rows + r) * 64 + ((((c >> 3) & 7) ^ (r & 7)) << 3) + (c & 7);
  }
}

__device__ __forceinline__ uint32_t SmemAddress(const void* p) {
#ifdef LLMT_CUDA_EMULATION
  return ::llmt::emu::SmemOffset(p);
#else
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

// Matrix descriptor, base offset 0; swizzle128 sets the 128-byte swizzle
// mode (layout type 1 in bits 62-63).
__device__ __forceinline__ uint64_t WgmmaDesc(const void* tile, uint32_t lbo_bytes,
                                              uint32_t sbo_bytes, bool swizzle128 = false) {
  return static_cast<uint64_t>((SmemAddress(tile) & 0x3FFFF) >> 4) |
         static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16 |
         static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32 |
         (swizzle128 ? uint64_t{1} << 62 : uint64_t{0});
}

// Descriptor of k-chunk kc (16 wide) of a [rows][cols] tile read K-major
// (rows = the product's n, or m for an A operand) or MN-major (rows = k).
// swap exchanges LBO and SBO (a diagnosis for WgmmaProductLayouts only).
template <WgLayout L>
__device__ __forceinline__ uint64_t KMajorDesc(const bf16* tile, int kc, int rows, int cols,
                                               bool swap = false) {
  uint32_t lbo = L == WgLayout::kBlocked ? 128 : 16;
  uint32_t sbo = L == WgLayout::kBlocked ? cols * 16 : 1024;
  if (swap) {
    const uint32_t t = lbo;
    lbo = sbo;
    sbo = t;
  }
  const int off = L == WgLayout::kBlocked ? kc * 2 * 64 : (kc >> 2) * rows * 64 + (kc & 3) * 16;
  return WgmmaDesc(tile + off, lbo, sbo, L == WgLayout::kSwizzled);
}
template <WgLayout L>
__device__ __forceinline__ uint64_t MnMajorDesc(const bf16* tile, int kc, int rows, int cols,
                                                bool swap = false) {
  uint32_t lbo = L == WgLayout::kBlocked ? cols * 16 : rows * 128;
  uint32_t sbo = L == WgLayout::kBlocked ? 128 : 1024;
  if (swap) {
    const uint32_t t = lbo;
    lbo = sbo;
    sbo = t;
  }
  const int off = L == WgLayout::kBlocked ? kc * 16 * cols : kc * 16 * 64;
  return WgmmaDesc(tile + off, lbo, sbo, L == WgLayout::kSwizzled);
}

// The dynamic shared memory rounded up to the next 1024-byte shared address
// (swizzled tiles need it; launches ask for kSmemAlignSlack more bytes).
constexpr size_t kSmemAlignSlack = 1024;
__device__ __forceinline__ unsigned char* AlignSmem1024(unsigned char* smem) {
  return smem + ((1024 - (SmemAddress(smem) & 1023)) & 1023);
}

// Orders this thread's earlier register writes (accumulators, A fragments)
// before the wgmma that follows (wgmma.fence.sync.aligned).
__device__ __forceinline__ void WgmmaFence() {
#ifdef LLMT_CUDA_EMULATION
  ::llmt::emu::WgmmaFence();
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void WgmmaCommit() {
#ifdef LLMT_CUDA_EMULATION
  ::llmt::emu::WgmmaCommit();
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
// Waits until at most N committed groups are pending (N = 0: all done).
template <int N>
__device__ __forceinline__ void WgmmaWait() {
#ifdef LLMT_CUDA_EMULATION
  ::llmt::emu::WgmmaWait(N);
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#else
  __trap();
#endif
}
// Generic-proxy writes to shared memory (st.shared, cp.async) become visible
// to the async proxy the tensor cores read B through: each writing thread
// fences after its writes land, before the barrier that publishes them.
__device__ __forceinline__ void FenceProxyAsyncShared() {
#if !defined(LLMT_CUDA_EMULATION) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Keeps the compiler from moving reads or writes of an accumulator across
// the asynchronous window (the wgmma asm's "+f" operands are "written" at
// issue as far as the compiler knows; this pins them at the wait).
template <int NT>
__device__ __forceinline__ void WgmmaFenceOperand(float (&d)[NT][4]) {
#ifndef LLMT_CUDA_EMULATION
#pragma unroll
  for (int i = 0; i < NT; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(d[i][j])::"memory");
  }
#endif
}

#if !defined(LLMT_CUDA_EMULATION)
// One asm statement per (N, transpose): imm-trans-b is an immediate. The
// SS form reads A (64 x 16, K-major) from shared memory through a second
// descriptor.
template <int N, int TRANS_B>
__device__ __forceinline__ void WgmmaCall(float (&d)[N / 8][4], const uint32_t (&a)[4],
                                          uint64_t desc, int scale_d);
template <int N, int TRANS_B>
__device__ __forceinline__ void WgmmaCallSS(float (&d)[N / 8][4], uint64_t desc_a,
                                            uint64_t desc_b, int scale_d);
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The accumulator operands: N / 2 floats per thread, d[c][i] = element i of
// n-chunk c, numbered %0 .. %(N/2 - 1); A follows as the next four, then the
// descriptor and scale-d.
#define LLMT_WGMMA_D64 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define LLMT_WGMMA_OUT64 \
    "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), \
    "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
    "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
    "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), \
    "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), \
    "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
    "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), \
    "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define LLMT_WGMMA_D128 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define LLMT_WGMMA_OUT128 \
    "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), \
    "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
    "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
    "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), \
    "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), \
    "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
    "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), \
    "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), \
    "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), \
    "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), \
    "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), \
    "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), \
    "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), \
    "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), \
    "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), \
    "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
#define LLMT_WGMMA_RS(N, TRANS, A0, DESC, SCALE)                                         \
  template <>                                                                          \
  __device__ __forceinline__ void WgmmaCall<N, TRANS>(                                 \
      float(&d)[N / 8][4], const uint32_t(&a)[4], uint64_t desc, int scale_d) {        \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE ", 0;\n"                    \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 {"           \
                 LLMT_WGMMA_D##N "}, {" A0 "}, " DESC ", p, 1, 1, " #TRANS ";\n}\n"      \
                 : LLMT_WGMMA_OUT##N                                                    \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d)); \
  }
LLMT_WGMMA_RS(64, 0, "%32, %33, %34, %35", "%36", "%37")
LLMT_WGMMA_RS(64, 1, "%32, %33, %34, %35", "%36", "%37")
LLMT_WGMMA_RS(128, 0, "%64, %65, %66, %67", "%68", "%69")
LLMT_WGMMA_RS(128, 1, "%64, %65, %66, %67", "%68", "%69")
#define LLMT_WGMMA_SS(N, TRANS, DESC_A, DESC_B, SCALE)                                   \
  template <>                                                                          \
  __device__ __forceinline__ void WgmmaCallSS<N, TRANS>(                               \
      float(&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b, int scale_d) {            \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE ", 0;\n"                    \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 {"           \
                 LLMT_WGMMA_D##N "}, " DESC_A ", " DESC_B ", p, 1, 1, 0, " #TRANS ";\n}\n" \
                 : LLMT_WGMMA_OUT##N                                                    \
                 : "l"(desc_a), "l"(desc_b), "r"(scale_d));                             \
  }
LLMT_WGMMA_SS(64, 0, "%32", "%33", "%34")
LLMT_WGMMA_SS(64, 1, "%32", "%33", "%34")
LLMT_WGMMA_SS(128, 0, "%64", "%65", "%66")
LLMT_WGMMA_SS(128, 1, "%64", "%65", "%66")
#undef LLMT_WGMMA_SS
#undef LLMT_WGMMA_RS
#undef LLMT_WGMMA_D64
#undef LLMT_WGMMA_OUT64
#undef LLMT_WGMMA_D128
#undef LLMT_WGMMA_OUT128
#else
// wgmma exists on sm_90a only; the host never selects these kernels elsewhere.
template <int N, int TRANS_B>
__device__ __forceinline__ void WgmmaCall(float (&)[N / 8][4], const uint32_t (&)[4], uint64_t,
                                          int) {
  __trap();
}
template <int N, int TRANS_B>
__device__ __forceinline__ void WgmmaCallSS(float (&)[N / 8][4], uint64_t, uint64_t, int) {
  __trap();
}
#endif
#endif

// D (64 x N, this thread's N / 8 tiles) = A (64 x 16) B (16 x N, descriptor)
// + (accumulate ? D : 0). TRANS_B: B is MN-major (see above). N is 64 or 128.
// accumulate = false on a product's first k-chunk replaces zeroing D.
template <int N, int TRANS_B>
__device__ __forceinline__ void Wgmma(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc,
                                      bool accumulate) {
  static_assert(N == 64 || N == 128, "wgmma shapes instantiated: n64, n128");
#ifdef LLMT_CUDA_EMULATION
  EmuWgmma(&d[0][0], N, a, desc, TRANS_B, accumulate);
#else
  WgmmaCall<N, TRANS_B>(d, a, desc, accumulate ? 1 : 0);
#endif
}

// The same with A (64 x 16) read from shared memory, K-major (its rows are
// the product's m, e.g. a blocked [64][cols] tile: LBO 128 bytes, SBO
// cols x 16 bytes, like a K-major B): no registers held for A.
template <int N, int TRANS_B>
__device__ __forceinline__ void WgmmaSS(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b,
                                        bool accumulate) {
  static_assert(N == 64 || N == 128, "wgmma shapes instantiated: n64, n128");
#ifdef LLMT_CUDA_EMULATION
  EmuWgmmaSS(&d[0][0], N, desc_a, desc_b, TRANS_B, accumulate);
#else
  WgmmaCallSS<N, TRANS_B>(d, desc_a, desc_b, accumulate ? 1 : 0);
#endif
}

}  // namespace llmt::kernels::cuda::internal
