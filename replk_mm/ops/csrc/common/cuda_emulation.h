// Host emulation of the subset of CUDA used by replk_mm's kernels (csrc/cuda/*.cuh).
//
// The kernel source is compiled unchanged by the host compiler and run on CPU tensors so that its
// indexing, tiling, shared-memory use and boundary handling can be tested without a GPU:
//   * threadIdx / blockIdx / blockDim / gridDim are per-thread state (thread_local, switched by the
//     scheduler below);
//   * every CUDA thread of a block is a ucontext fiber with its own stack; the fibers of one block run
//     cooperatively on one OS thread; blocks are spread over OS threads with at::parallel_for;
//   * __syncthreads() is a real barrier: a fiber yields there and is resumed only when every thread
//     of its block has reached the barrier (a thread that exits while others wait is an error, as it
//     is undefined behaviour on a GPU);
//   * dynamic shared memory is per-block storage, poisoned with NaN bytes before each block so that a
//     read of an element no thread wrote shows up in the results;
//   * launches check the block size and the dynamic shared memory against the CUDA limits (48 KiB
//     without the opt-in attribute, the emulated device's opt-in limit with it);
//   * atomicAdd is an atomic read-modify-write on the host;
//   * warp-collective instructions (mma.sync, csrc/cuda/mma.cuh) are a second kind of barrier, per warp:
//     each lane deposits its fragments and yields; once every lane of the warp has arrived at the same
//     collective, the scheduler computes it from the 32 lanes' fragments, per the PTX ISA fragment
//     layouts, and hands each lane its own result fragment. A warp whose lanes are not all at the
//     collective (divergence, a lane at __syncthreads() or exited, a partial warp) is an error.
// Include it after the torch headers and before the kernel headers.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <ucontext.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#define REPLK_CUDA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace replk_emu {

// The emulated device: the smallest opt-in shared memory of the supported GPUs (sm_75, Turing).
constexpr size_t kDefaultSmemBytes = 48 * 1024;
constexpr size_t kOptinSmemBytes = 64 * 1024;
constexpr unsigned int kMaxThreadsPerBlock = 1024;
constexpr size_t kFiberStackBytes = 64 * 1024;

constexpr unsigned int kWarpSize = 32;

enum class FiberState { kRunnable, kAtBarrier, kAtWarpCollective, kDone };

// The warp-collective operations of the emulated device (csrc/cuda/mma.cuh).
enum class Collective { kNone, kMmaF16, kMmaBF16 };

// A lane's operands of mma.sync.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 and its result.
struct LaneFragments {
  Collective op = Collective::kNone;
  std::array<uint32_t, 4> a{};  // 8 elements of A (16 x 16), two per register, lower index in the low half
  std::array<uint32_t, 2> b{};  // 4 elements of B (16 x 8)
  std::array<float, 4> c{};     // 4 elements of C (16 x 8)
  std::array<float, 4> d{};     // 4 elements of D = A * B + C, written by the collective
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  FiberState state = FiberState::kRunnable;
  uint3 thread_idx{0, 0, 0};
  LaneFragments lane;
};

// The fibers and shared memory of the block that runs on this OS thread.
struct BlockRunner {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  size_t current = 0;
  const std::function<void()>* body = nullptr;
  std::unique_ptr<unsigned char[]> smem;
  size_t smem_capacity = 0;
};

inline BlockRunner& runner() {
  static thread_local BlockRunner instance;
  return instance;
}

inline void fiber_main() {
  BlockRunner& r = runner();
  (*r.body)();
  r.fibers[r.current].state = FiberState::kDone;
  // Returning resumes the scheduler through uc_link.
}

inline void syncthreads() {
  BlockRunner& r = runner();
  Fiber& self = r.fibers[r.current];
  self.state = FiberState::kAtBarrier;
  swapcontext(&self.context, &r.scheduler);
}

// Lane `lane` of a warp-level matrix, per the PTX ISA's m16n8k16 fragment layouts (groupID = lane / 4,
// threadID_in_group = lane % 4; element i of a fragment, 2 per 32-bit register, lower i in the low half):
//   A (16 x 16, row): row groupID + 8 * (i / 2 % 2), column 2 * threadID_in_group + i % 2 + 8 * (i / 4)
//   B (16 x 8, col):  row 2 * threadID_in_group + i % 2 + 8 * (i / 2), column groupID
//   C, D (16 x 8):    row groupID + 8 * (i / 2), column 2 * threadID_in_group + i % 2
struct FragmentCoord {
  int row, col;
};
inline FragmentCoord a_coord(unsigned lane, int i) {
  return {int(lane / 4) + 8 * (i / 2 % 2), int(lane % 4) * 2 + i % 2 + 8 * (i / 4)};
}
inline FragmentCoord b_coord(unsigned lane, int i) { return {int(lane % 4) * 2 + i % 2 + 8 * (i / 2), int(lane / 4)}; }
inline FragmentCoord cd_coord(unsigned lane, int i) { return {int(lane / 4) + 8 * (i / 2), int(lane % 4) * 2 + i % 2}; }

// Element i (0, 1: low and high half of register i / 2) of a packed fragment, as float.
template <typename T, size_t N>
float unpack(const std::array<uint32_t, N>& regs, int i) {
  const uint16_t bits = static_cast<uint16_t>(regs[i / 2] >> (16 * (i % 2)));
  return static_cast<float>(T(bits, typename T::from_bits_t{}));
}

// D = A * B + C of one warp from the fragments its 32 lanes deposited (fp32 accumulation of exact
// products, as the tensor cores do; the order of the 16 additions is unspecified on a GPU).
template <typename T>
void mma_m16n8k16(Fiber* lanes) {
  float a[16][16], b[16][8], acc[16][8];
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    const LaneFragments& f = lanes[lane].lane;
    for (int i = 0; i < 8; ++i) {
      const FragmentCoord ca = a_coord(lane, i);
      a[ca.row][ca.col] = unpack<T>(f.a, i);
    }
    for (int i = 0; i < 4; ++i) {
      const FragmentCoord cb = b_coord(lane, i);
      b[cb.row][cb.col] = unpack<T>(f.b, i);
      const FragmentCoord cc = cd_coord(lane, i);
      acc[cc.row][cc.col] = f.c[i];
    }
  }
  for (int m = 0; m < 16; ++m) {
    for (int n = 0; n < 8; ++n) {
      for (int k = 0; k < 16; ++k) {
        acc[m][n] += a[m][k] * b[k][n];
      }
    }
  }
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    for (int i = 0; i < 4; ++i) {
      const FragmentCoord cd = cd_coord(lane, i);
      lanes[lane].lane.d[i] = acc[cd.row][cd.col];
    }
  }
}

// The calling lane takes part in warp collective `op` with the fragments in `lane`: it yields until
// the scheduler has run the collective of its warp, then returns its own result fragment.
inline LaneFragments& warp_collective(Collective op, const LaneFragments& lane) {
  BlockRunner& r = runner();
  Fiber& self = r.fibers[r.current];
  self.lane = lane;
  self.lane.op = op;
  self.state = FiberState::kAtWarpCollective;
  swapcontext(&self.context, &r.scheduler);
  return self.lane;
}

// Runs the collectives of the warps whose lanes wait at one; every lane of such a warp must be there.
inline void run_warp_collectives(BlockRunner& r, size_t num_threads, uint3 block_idx) {
  for (size_t w = 0; w * kWarpSize < num_threads; ++w) {
    Fiber* lanes = r.fibers.data() + w * kWarpSize;
    const size_t width = std::min<size_t>(kWarpSize, num_threads - w * kWarpSize);
    size_t arrived = 0;
    for (size_t l = 0; l < width; ++l) {
      arrived += lanes[l].state == FiberState::kAtWarpCollective;
    }
    if (arrived == 0) {
      continue;
    }
    TORCH_CHECK(width == kWarpSize, "CUDA emulation: a warp collective (mma.sync) in the partial warp ", w,
                " of ", width, " threads of block ", block_idx.x, " (undefined behaviour on a GPU)");
    const Collective op = lanes[0].lane.op;
    for (size_t l = 0; l < width; ++l) {
      TORCH_CHECK(lanes[l].state == FiberState::kAtWarpCollective && lanes[l].lane.op == op,
                  "CUDA emulation: lane ", l, " of warp ", w, " of block ", block_idx.x,
                  " is not at the warp collective its other lanes wait at (divergent mma.sync, undefined "
                  "behaviour on a GPU)");
    }
    if (op == Collective::kMmaF16) {
      mma_m16n8k16<c10::Half>(lanes);
    } else {
      mma_m16n8k16<c10::BFloat16>(lanes);
    }
    for (size_t l = 0; l < width; ++l) {
      lanes[l].state = FiberState::kRunnable;
    }
  }
}

// Runs every thread of block `block_idx` to completion, honouring the barriers.
inline void run_block(const std::function<void()>& body, dim3 block, uint3 block_idx, size_t smem_bytes) {
  BlockRunner& r = runner();
  const size_t num_threads = size_t(block.x) * block.y * block.z;
  if (r.fibers.size() < num_threads) {
    r.fibers.resize(num_threads);
  }
  if (r.smem_capacity < smem_bytes) {
    r.smem.reset(new unsigned char[smem_bytes]);
    r.smem_capacity = smem_bytes;
  }
  std::memset(r.smem.get(), 0xFF, smem_bytes);  // NaN in every float: uninitialised reads show
  r.body = &body;
  blockIdx = block_idx;
  for (size_t i = 0; i < num_threads; ++i) {
    Fiber& f = r.fibers[i];
    if (!f.stack) {
      f.stack.reset(new char[kFiberStackBytes]);
    }
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kFiberStackBytes;
    f.context.uc_link = &r.scheduler;
    makecontext(&f.context, fiber_main, 0);
    f.state = FiberState::kRunnable;
    f.thread_idx = uint3{static_cast<unsigned int>(i % block.x),
                         static_cast<unsigned int>((i / block.x) % block.y),
                         static_cast<unsigned int>(i / (size_t(block.x) * block.y))};
  }
  while (true) {
    // Resume the runnable threads; each runs until a barrier, a warp collective or its end.
    size_t done = 0, at_collective = 0;
    for (size_t i = 0; i < num_threads; ++i) {
      Fiber& f = r.fibers[i];
      if (f.state == FiberState::kRunnable) {
        r.current = i;
        threadIdx = f.thread_idx;
        swapcontext(&r.scheduler, &f.context);
      }
      done += f.state == FiberState::kDone;
      at_collective += f.state == FiberState::kAtWarpCollective;
    }
    if (at_collective > 0) {  // warps progress through their collectives; the barrier waits
      run_warp_collectives(r, num_threads, block_idx);
      continue;
    }
    if (done == num_threads) {
      return;
    }
    TORCH_CHECK(done == 0, "CUDA emulation: ", num_threads - done, " threads of block ", block_idx.x,
                " wait at __syncthreads() while ", done,
                " threads have exited (divergent barrier, undefined behaviour on a GPU)");
    for (size_t i = 0; i < num_threads; ++i) {
      r.fibers[i].state = FiberState::kRunnable;
    }
  }
}

inline std::mutex& attribute_mutex() {
  static std::mutex m;
  return m;
}

// Dynamic shared memory allowed per kernel (cudaFuncAttributeMaxDynamicSharedMemorySize).
inline std::map<const void*, size_t>& smem_attributes() {
  static std::map<const void*, size_t> attributes;
  return attributes;
}

inline void* dynamic_shared_memory() { return runner().smem.get(); }

}  // namespace replk_emu

inline void __syncthreads() { replk_emu::syncthreads(); }

inline float atomicAdd(float* address, float value) {
  return std::atomic_ref<float>(*address).fetch_add(value);
}

#define REPLK_DYNAMIC_SMEM(type, name) type* name = static_cast<type*>(replk_emu::dynamic_shared_memory())

// The launch interface of csrc/cuda/dwconv_launch.cuh, emulated.
namespace replk::rt {

inline size_t smem_optin_bytes() { return replk_emu::kOptinSmemBytes; }

template <typename... KernelArgs>
void allow_smem(void (*kernel)(KernelArgs...), size_t bytes) {
  TORCH_CHECK(bytes <= replk_emu::kOptinSmemBytes, "CUDA emulation: cudaFuncSetAttribute(",
              bytes, " bytes of dynamic shared memory) exceeds the device limit ",
              replk_emu::kOptinSmemBytes);
  std::lock_guard<std::mutex> lock(replk_emu::attribute_mutex());
  replk_emu::smem_attributes()[reinterpret_cast<const void*>(kernel)] = bytes;
}

template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem_bytes, Args... args) {
  const size_t num_threads = size_t(block.x) * block.y * block.z;
  TORCH_CHECK(num_threads >= 1 && num_threads <= replk_emu::kMaxThreadsPerBlock,
              "CUDA emulation: invalid block of ", num_threads, " threads");
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.y <= 65535 && grid.z <= 65535,
              "CUDA emulation: invalid grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  size_t allowed = replk_emu::kDefaultSmemBytes;
  {
    std::lock_guard<std::mutex> lock(replk_emu::attribute_mutex());
    const auto it = replk_emu::smem_attributes().find(reinterpret_cast<const void*>(kernel));
    if (it != replk_emu::smem_attributes().end()) {
      allowed = it->second;
    }
  }
  TORCH_CHECK(smem_bytes <= allowed, "CUDA emulation: launch with ", smem_bytes,
              " bytes of dynamic shared memory; the kernel allows ", allowed,
              " (cudaFuncSetAttribute missing or too small)");
  const int64_t num_blocks = int64_t(grid.x) * grid.y * grid.z;
  const std::function<void()> body = [&]() { kernel(args...); };
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    gridDim = grid;
    blockDim = block;
    for (int64_t b = begin; b < end; ++b) {
      const uint3 idx{static_cast<unsigned int>(b % grid.x),
                      static_cast<unsigned int>((b / grid.x) % grid.y),
                      static_cast<unsigned int>(b / (int64_t(grid.x) * grid.y))};
      replk_emu::run_block(body, block, idx, smem_bytes);
    }
  });
}

}  // namespace replk::rt
