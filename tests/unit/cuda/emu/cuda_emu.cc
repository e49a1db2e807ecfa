// The emulator's runtime: launches on std::threads with block/warp barriers,
// and host-memory implementations of the CUDA runtime API functions that
// kernels/cuda and its tests call (see cuda_emu.h).
#include "tests/unit/cuda/emu/cuda_emu.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

// The built-in variables hold the values of the fiber that is running; the
// scheduler sets them before resuming a fiber.
uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace llmt::emu {
namespace {

// GPU threads are fibers (ucontext) on the launching OS thread, scheduled
// round-robin; each runs until it waits at a barrier or finishes. This is
// deterministic and cheap, and "run until blocked" is an adversarial order:
// a thread reads shared data before the other threads of its block have
// written it, or overwrites it before they have read it, unless a barrier
// orders them -- so a missing __syncthreads()/__syncwarp() corrupts results
// (shared memory starts as NaN bytes) instead of passing by luck.
constexpr size_t kStackBytes = 256 * 1024;

#if defined(__x86_64__)
// A minimal System V x86-64 context switch (glibc's swapcontext makes a
// signal-mask system call per switch, ~1 us; this is ~20 ns): pushes the
// callee-saved registers and the SSE/x87 control words on the current stack,
// stores the stack pointer in *from_sp, and resumes the context whose stack
// pointer is to_sp.
extern "C" void llmt_emu_switch(void** from_sp, void* to_sp);
asm(R"(
  .text
  .globl llmt_emu_switch
  .type llmt_emu_switch,@function
llmt_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size llmt_emu_switch, .-llmt_emu_switch
)");

struct Context {
  void* sp = nullptr;
};

// Lays out a fresh stack so that switching to it "returns" into entry() with
// the ABI's stack alignment (rsp % 16 == 8 at function entry).
void MakeContext(Context* c, char* stack, size_t bytes, void (*entry)()) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t{15};
  uint64_t* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                  // entry's (never used) return address
  *--sp = reinterpret_cast<uint64_t>(entry);  // where llmt_emu_switch's ret goes
  for (int i = 0; i < 6; ++i) *--sp = 0;      // rbp rbx r12 r13 r14 r15
  *--sp = 0x037Full << 32 | 0x1F80;           // x87 control word | MXCSR defaults
  c->sp = sp;
}
void SwitchTo(Context* from, Context* to) { llmt_emu_switch(&from->sp, to->sp); }
#else
struct Context {
  ucontext_t uc;
};
void MakeContext(Context* c, char* stack, size_t bytes, void (*entry)()) {
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = stack;
  c->uc.uc_stack.ss_size = bytes;
  c->uc.uc_link = nullptr;
  makecontext(&c->uc, entry, 0);
}
void SwitchTo(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }
#endif

struct Barrier {
  int expected = 0;
  int count = 0;
  uint64_t generation = 0;
};

struct Warp {
  Barrier barrier;
  uint64_t slots[32] = {};
  unsigned char exchange[32][64] = {};
};

struct PendingCopy {
  void* dst;
  unsigned char data[16];
  int bytes;
  int group;  // the commit group it belongs to (Fiber::open_group when issued)
};

struct PendingWgmma {
  float* d;  // the issuing thread's accumulator registers
  int n;
  uint32_t a[4];
  uint64_t desc;
  int trans_b;
  bool accumulate;  // scale-d: D = A B + D, else D = A B
  int group;
  bool a_smem;      // SS form: A from shared memory through desc_a
  uint64_t desc_a;
};

struct Fiber {
  Context ctx;
  int tid = 0;
  uint3 idx{};
  bool done = false;
  std::vector<PendingCopy> copies;  // cp.async issued, not yet landed
  int open_group = 0;               // groups [0, open_group) are committed
  std::vector<PendingWgmma> wgmma;  // issued, not yet waited for
  int wgmma_open_group = 0;
  bool wgmma_fenced = false;  // a wgmma.fence since the last wait
};

// Four warps; the wait publishes each thread's pending list here.
struct Warpgroup {
  Barrier barrier;
  const std::vector<PendingWgmma>* pending[128] = {};
  int done_below[128] = {};
};

Context g_scheduler;
Fiber* g_cur = nullptr;
std::vector<Fiber> g_fibers;
std::vector<std::unique_ptr<char[]>> g_stacks;
std::vector<Warp> g_warps;
std::vector<Warpgroup> g_warpgroups;  // empty unless the block is whole warpgroups
Barrier g_block_barrier;
int g_block_or = 0;
bool g_progress = false;
const std::function<void()>* g_body = nullptr;
unsigned char* g_smem = nullptr;
size_t g_smem_bytes = 0;
std::mutex g_launch_mu;  // one launch at a time (the "shared" statics are global)

void Yield() { SwitchTo(&g_cur->ctx, &g_scheduler); }

void Wait(Barrier& b) {
  g_progress = true;
  const uint64_t gen = b.generation;
  if (++b.count == b.expected) {
    b.count = 0;
    ++b.generation;
    return;
  }
  while (b.generation == gen) Yield();
}

// Never returns: a finished fiber switches back to the scheduler, which
// does not resume it again.
void FiberMain() {
  (*g_body)();
  if (!g_cur->wgmma.empty()) Fail("thread exited with a wgmma it never waited for");
  g_cur->done = true;
  g_progress = true;
  SwitchTo(&g_cur->ctx, &g_scheduler);
  Fail("a finished fiber was resumed");
}

}  // namespace

void Fail(const char* what) {
  std::fprintf(stderr, "CUDA emulator: %s (block %u,%u,%u thread %u,%u,%u)\n", what, blockIdx.x,
               blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  std::fflush(stderr);
  std::abort();
}

void WarpBarrier() { Wait(g_warps[g_cur->tid / 32].barrier); }
void WarpPut(uint64_t v) { g_warps[g_cur->tid / 32].slots[g_cur->tid % 32] = v; }
uint64_t WarpGet(int lane) {
  if (lane < 0 || lane >= 32) Fail("shuffle from a lane outside the warp");
  return g_warps[g_cur->tid / 32].slots[lane];
}
int Lane() { return g_cur->tid % 32; }

void WarpExchange(const void* mine, size_t bytes, void* all) {
  if (bytes > 64) Fail("WarpExchange of more than 64 bytes per lane");
  Warp& w = g_warps[g_cur->tid / 32];
  std::memcpy(w.exchange[g_cur->tid % 32], mine, bytes);
  Wait(w.barrier);
  for (int l = 0; l < 32; ++l) {
    std::memcpy(static_cast<unsigned char*>(all) + l * bytes, w.exchange[l], bytes);
  }
  Wait(w.barrier);  // the buffer is reused by the next exchange
}
void BlockBarrier() { Wait(g_block_barrier); }

void CpAsync(void* dst, const void* src, int bytes, int src_bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) Fail("cp.async: size must be 4, 8 or 16 bytes");
  if (src_bytes < 0 || src_bytes > bytes) Fail("cp.async: src-size outside [0, cp-size]");
  if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 ||
      reinterpret_cast<uintptr_t>(src) % bytes != 0) {
    Fail("cp.async: address not aligned to the copy size");
  }
  if (g_smem == nullptr || static_cast<unsigned char*>(dst) < g_smem ||
      static_cast<unsigned char*>(dst) + bytes > g_smem + g_smem_bytes) {
    Fail("cp.async: destination outside dynamic shared memory");
  }
  PendingCopy c{dst, {}, bytes, g_cur->open_group};
  std::memcpy(c.data, src, src_bytes);
  g_cur->copies.push_back(c);
}

void CpAsyncCommit() { ++g_cur->open_group; }

void CpAsyncWait(int n) {
  // Groups older than the n most recent committed ones have landed.
  const int done_below = g_cur->open_group - n;
  std::vector<PendingCopy>& v = g_cur->copies;
  size_t keep = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i].group < done_below) {
      std::memcpy(v[i].dst, v[i].data, v[i].bytes);
    } else {
      v[keep++] = v[i];
    }
  }
  v.resize(keep);
}

// Dynamic shared memory starts at this shared-window address: 128-byte
// aligned (what the kernels declare) but not 1024-byte aligned, so a kernel
// that uses the 128-byte swizzle without aligning its tiles fails here too.
constexpr uint32_t kSmemWindowBase = 0x480;

uint32_t SmemOffset(const void* p) {
  const unsigned char* c = static_cast<const unsigned char*>(p);
  if (g_smem == nullptr || c < g_smem || c >= g_smem + g_smem_bytes) {
    Fail("shared-memory address of a pointer outside dynamic shared memory");
  }
  return kSmemWindowBase + static_cast<uint32_t>(c - g_smem);
}

namespace {
void CheckDesc(uint64_t desc) {
  if ((desc >> 62) > 1) {
    Fail("wgmma: the emulator supports the no-swizzle and 128-byte swizzle layouts only");
  }
  if (((desc >> 49) & 7) != 0) Fail("wgmma: base offset must be 0 (1024-byte aligned tiles)");
}
void PushWgmma(const PendingWgmma& w) {
  if (g_warpgroups.empty()) Fail("wgmma in a block that is not whole warpgroups (128 threads)");
  if (w.n < 8 || w.n > 256 || w.n % 8 != 0) Fail("wgmma: N must be a multiple of 8 in [8, 256]");
  if (w.trans_b != 0 && w.trans_b != 1) Fail("wgmma: imm-trans-b must be 0 or 1");
  CheckDesc(w.desc);
  if (w.a_smem) CheckDesc(w.desc_a);
  if (!g_cur->wgmma_fenced) {
    Fail("wgmma issued without a wgmma.fence since the thread's last wait (or start)");
  }
  g_cur->wgmma.push_back(w);
}
}  // namespace

void WgmmaIssue(float* d, int n, const uint32_t (&a)[4], uint64_t desc, int trans_b,
                bool accumulate) {
  PushWgmma(PendingWgmma{d, n, {a[0], a[1], a[2], a[3]}, desc, trans_b, accumulate,
                         g_cur->wgmma_open_group, false, 0});
}

void WgmmaIssueSS(float* d, int n, uint64_t desc_a, uint64_t desc_b, int trans_b,
                  bool accumulate) {
  PushWgmma(PendingWgmma{d, n, {0, 0, 0, 0}, desc_b, trans_b, accumulate, g_cur->wgmma_open_group,
                         true, desc_a});
}

void WgmmaFence() { g_cur->wgmma_fenced = true; }
void WgmmaCommit() { ++g_cur->wgmma_open_group; }

namespace {
// B element (k, n) of a canonical bf16 layout (see cuda_emu.h).
float WgmmaB(uint64_t desc, int trans_b, int k, int n) {
  const size_t start = (desc & 0x3FFF) << 4;
  const size_t lbo = ((desc >> 16) & 0x3FFF) << 4;
  const size_t sbo = ((desc >> 32) & 0x3FFF) << 4;
  size_t addr;
  if ((desc >> 62) == 0) {  // no swizzle
    addr = start + (trans_b == 0 ? (n % 8) * 16 + (n / 8) * sbo + (k % 8) * 2 + (k / 8) * lbo
                                 : (n % 8) * 2 + (n / 8) * sbo + (k % 8) * 16 + (k / 8) * lbo);
  } else {  // 128-byte swizzle: address bits 4-6 ^= bits 7-9
    addr = start + (trans_b == 0 ? (n % 8) * 128 + (n / 8) * sbo + k * 2
                                 : (n % 64) * 2 + (n / 64) * lbo + (k % 8) * 128 + (k / 8) * sbo);
    addr ^= ((addr >> 7) & 7) << 4;
  }
  if (addr < kSmemWindowBase || addr - kSmemWindowBase + 2 > g_smem_bytes) {
    Fail("wgmma: operand element outside dynamic shared memory");
  }
  uint16_t v;
  std::memcpy(&v, g_smem + (addr - kSmemWindowBase), 2);
  return __bfloat162float(__ushort_as_bfloat16(v));
}
}  // namespace

void WgmmaWait(int n) {
  if (g_warpgroups.empty()) Fail("wgmma.wait_group in a block that is not whole warpgroups");
  Warpgroup& wg = g_warpgroups[g_cur->tid / 128];
  const int me = g_cur->tid % 128;
  const int done_below = g_cur->wgmma_open_group - n;
  wg.pending[me] = &g_cur->wgmma;
  wg.done_below[me] = done_below;
  Wait(wg.barrier);
  // The operations this wait completes, in issue order, must be the same in
  // every thread of the warpgroup (the instructions are .sync.aligned).
  auto completing = [&](int thread) {
    std::vector<const PendingWgmma*> r;
    for (const PendingWgmma& w : *wg.pending[thread]) {
      if (w.group < wg.done_below[thread]) r.push_back(&w);
    }
    return r;
  };
  std::vector<std::vector<const PendingWgmma*>> all(128);
  for (int th = 0; th < 128; ++th) all[th] = completing(th);
  for (int th = 1; th < 128; ++th) {
    if (all[th].size() != all[0].size()) {
      Fail("wgmma: threads of a warpgroup wait for different operations");
    }
    for (size_t i = 0; i < all[0].size(); ++i) {
      const PendingWgmma& x = *all[th][i];
      const PendingWgmma& y = *all[0][i];
      if (x.n != y.n || x.desc != y.desc || x.trans_b != y.trans_b ||
          x.accumulate != y.accumulate || x.a_smem != y.a_smem || x.desc_a != y.desc_a) {
        Fail("wgmma: threads of a warpgroup issued different operations");
      }
    }
  }
  // This thread's accumulator elements (see the layouts in cuda_emu.h).
  const int warp = me / 32, lane = me % 32, g = lane >> 2, t = lane & 3;
  auto a_at = [&](size_t op, int row, int k) {  // A (row, k), row within the 64
    if (all[me][op]->a_smem) return WgmmaB(all[me][op]->desc_a, 0, k, row);  // K-major, n = m
    const int owner = (row / 16) * 32 + (row % 8) * 4 + (k % 8) / 2;
    const int reg = (k >= 8 ? 2 : 0) + ((row % 16) >= 8 ? 1 : 0);
    const uint32_t r = all[owner][op]->a[reg];
    const uint16_t half = (k & 1) ? static_cast<uint16_t>(r >> 16) : static_cast<uint16_t>(r);
    return __bfloat162float(__ushort_as_bfloat16(half));
  };
  for (size_t op = 0; op < all[me].size(); ++op) {
    const PendingWgmma& w = *all[me][op];
    for (int j = 0; j < w.n / 2; ++j) {
      const int c = j / 4, r = (j / 2) % 2, jj = j % 2;
      const int row = warp * 16 + g + 8 * r, col = 8 * c + 2 * t + jj;
      float s = w.accumulate ? w.d[j] : 0.f;
      for (int k = 0; k < 16; ++k) s += a_at(op, row, k) * WgmmaB(w.desc, w.trans_b, k, col);
      w.d[j] = s;
    }
  }
  Wait(wg.barrier);  // everyone has read the others' A values
  std::vector<PendingWgmma>& v = g_cur->wgmma;
  size_t keep = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i].group >= done_below) v[keep++] = v[i];
  }
  v.resize(keep);
  g_cur->wgmma_fenced = false;
}

int BlockOr(int pred) {
  if (pred) g_block_or = 1;
  Wait(g_block_barrier);
  const int r = g_block_or;
  Wait(g_block_barrier);
  if (g_cur->tid == 0) g_block_or = 0;
  Wait(g_block_barrier);
  return r;
}

unsigned char* DynamicSmem() { return g_smem; }
size_t DynamicSmemBytes() { return g_smem_bytes; }

void RunGrid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(g_launch_mu);
  const int n = static_cast<int>(block.x * block.y * block.z);
  if (n <= 0 || n > 1024) Fail("block size must be 1..1024 threads");
  if (n % 32 != 0) Fail("emulated blocks must be whole warps");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) Fail("empty grid");
  if (grid.y > 65535 || grid.z > 65535) Fail("grid.y/grid.z above 65535");
  if (smem > 227 * 1024) Fail("more dynamic shared memory than an H100 block can have");
  gridDim = grid;
  blockDim = block;
  g_body = &body;
  // Dynamic shared memory, 128-byte aligned, filled with 0xFF bytes (NaN as
  // floats) so that reading it before writing shows up in the results.
  std::unique_ptr<unsigned char[]> raw(new unsigned char[smem + 128]);
  g_smem = smem > 0 ? reinterpret_cast<unsigned char*>(
                          (reinterpret_cast<uintptr_t>(raw.get()) + 127) / 128 * 128)
                    : nullptr;
  g_smem_bytes = smem;
  while (static_cast<int>(g_stacks.size()) < n) {
    g_stacks.push_back(std::unique_ptr<char[]>(new char[kStackBytes]));
  }
  g_fibers.assign(n, Fiber{});
  g_warps.assign(n / 32, Warp{});
  g_warpgroups.assign(n % 128 == 0 ? n / 128 : 0, Warpgroup{});
  const uint3 saved_thread = threadIdx, saved_block = blockIdx;

  // Highest block index first: CUDA promises no order in which blocks start,
  // so a kernel whose blocks wait for each other must not lean on index order
  // (the fused attention backward orders itself by tickets instead), and
  // ascending order would hide that.
  for (unsigned z = grid.z; z-- > 0;) {
    for (unsigned y = grid.y; y-- > 0;) {
      for (unsigned x = grid.x; x-- > 0;) {
        blockIdx = uint3{x, y, z};
        if (smem > 0) std::memset(g_smem, 0xFF, smem);
        g_block_barrier = Barrier{n, 0, 0};
        g_block_or = 0;
        for (Warp& w : g_warps) w.barrier = Barrier{32, 0, 0};
        for (Warpgroup& w : g_warpgroups) w.barrier = Barrier{128, 0, 0};
        for (int t = 0; t < n; ++t) {
          Fiber& f = g_fibers[t];
          f.tid = t;
          f.done = false;
          f.copies.clear();
          f.open_group = 0;
          f.wgmma.clear();
          f.wgmma_open_group = 0;
          f.wgmma_fenced = false;
          f.idx = uint3{static_cast<unsigned>(t) % block.x,
                        static_cast<unsigned>(t) / block.x % block.y,
                        static_cast<unsigned>(t) / (block.x * block.y)};
          MakeContext(&f.ctx, g_stacks[t].get(), kStackBytes, FiberMain);
        }
        int remaining = n;
        while (remaining > 0) {
          g_progress = false;
          for (Fiber& f : g_fibers) {
            if (f.done) continue;
            g_cur = &f;
            threadIdx = f.idx;
            SwitchTo(&g_scheduler, &f.ctx);
            if (f.done) --remaining;
          }
          if (remaining > 0 && !g_progress) {
            Fail(
                "deadlock: every live thread waits at a barrier that cannot complete "
                "(a barrier not reached by all threads of the block/warp)");
          }
        }
      }
    }
  }
  g_cur = nullptr;
  threadIdx = saved_thread;
  blockIdx = saved_block;
  g_smem = nullptr;
  g_smem_bytes = 0;
}

}  // namespace llmt::emu

// ---- the CUDA runtime API subset, on host memory ------------------------------
namespace {
thread_local cudaError_t g_last_error = cudaSuccess;
constexpr size_t kEmuMemory = size_t{16} << 30;  // what the emulated device "has"
std::atomic<size_t> g_allocated{0};

cudaError_t Set(cudaError_t e) {
  if (e != cudaSuccess) g_last_error = e;
  return e;
}
}  // namespace

extern "C" {

// Fast-math intrinsics (declared extern "C" by the CUDA headers). The host
// libm result is within the ~2 ulp the hardware approximations promise.
float __expf(float x) noexcept { return std::exp(x); }

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return g_last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    default:
      return "cudaError(emulated)";
  }
}
const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaErrorMemoryAllocation ? "out of memory" : "emulated CUDA error";
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : Set(cudaErrorInvalidDevice);
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return Set(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "llmt CUDA emulator");
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 4;
  prop->totalGlobalMem = kEmuMemory;
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *total_bytes = kEmuMemory;
  *free_bytes = kEmuMemory - std::min(kEmuMemory, g_allocated.load());
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (size > kEmuMemory - std::min(kEmuMemory, g_allocated.load())) {
    *ptr = nullptr;
    return Set(cudaErrorMemoryAllocation);
  }
  // 256-byte aligned like cudaMalloc; the size is stored in front for cudaFree.
  const size_t total = (size + 255) / 256 * 256 + 256;
  unsigned char* raw = static_cast<unsigned char*>(std::aligned_alloc(256, total));
  if (raw == nullptr) return Set(cudaErrorMemoryAllocation);
  std::memset(raw, 0xA5, total);  // garbage, like fresh device memory
  std::memcpy(raw, &size, sizeof(size));
  g_allocated += size;
  *ptr = raw + 256;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  unsigned char* raw = static_cast<unsigned char*>(ptr) - 256;
  size_t size = 0;
  std::memcpy(&size, raw, sizeof(size));
  g_allocated -= size;
  std::free(raw);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind /*kind*/) {
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  std::memset(ptr, value, count);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t /*stream*/) {
  std::memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t /*stream*/) { return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int /*flags*/) {
  *stream = reinterpret_cast<cudaStream_t>(new int(0));
  return cudaSuccess;
}
// A stream is a heap int holding its priority (work runs at once anyway).
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* stream, unsigned int /*flags*/,
                                         int priority) {
  *stream = reinterpret_cast<cudaStream_t>(new int(priority));
  return cudaSuccess;
}
cudaError_t cudaStreamGetPriority(cudaStream_t stream, int* priority) {
  *priority = stream == nullptr ? 0 : *reinterpret_cast<int*>(stream);
  return cudaSuccess;
}
cudaError_t cudaDeviceGetStreamPriorityRange(int* least, int* greatest) {
  *least = 0;  // an H100's range
  *greatest = -5;
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete reinterpret_cast<int*>(stream);
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void* /*func*/, cudaFuncAttribute /*attr*/, int /*value*/) {
  return cudaSuccess;
}
// Events hold the host time of their last record (launches run synchronously
// here, so that is when the work before it finished).
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = reinterpret_cast<cudaEvent_t>(new std::chrono::steady_clock::time_point());
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<std::chrono::steady_clock::time_point*>(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t /*stream*/) {
  *reinterpret_cast<std::chrono::steady_clock::time_point*>(event) =
      std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t /*event*/) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  const auto a = *reinterpret_cast<std::chrono::steady_clock::time_point*>(start);
  const auto b = *reinterpret_cast<std::chrono::steady_clock::time_point*>(end);
  *ms = std::chrono::duration<float, std::milli>(b - a).count();
  return cudaSuccess;
}

}  // extern "C"
