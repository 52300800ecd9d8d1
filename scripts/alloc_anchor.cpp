// The per-call anchor: one recorded trace replayed through PyTorch's caching allocator or through
// gpu-arena's C ABI, in the same loop, each call timed with the time-stamp counter around it, so that
// the two allocators' own time per call is compared on one CPU in one harness. Built on the GPU
// machine against its torch (scripts/alloc_anchor.py does that and drives it through ctypes).
//
// Between two calls the loop touches THRASH_KIB of other memory (as PyTorch's own work does between
// its allocator calls, and as scripts/cache_profile.sh does on the host), so that both allocators
// start each call with the same cold first-level cache. The touching is outside the timed interval.
#include <c10/cuda/CUDACachingAllocator.h>

#include <chrono>
#include <cstdint>
#include <vector>
#include <x86intrin.h>

using ga_alloc_t = void *(*)(ssize_t, int, void *);
using ga_free_t = void (*)(void *, ssize_t, int, void *);

extern "C" {

// Replays `n` events: kind[i] 0 allocates size[i] bytes and keeps the pointer in slot[i], 1 frees
// the pointer in slot[i] (allocated with size[i] bytes). which 0: PyTorch's caching allocator
// (c10::cuda::CUDACachingAllocator, the one tensors use), 1: gpu-arena (`gpu_arena_torch_alloc` /
// `gpu_arena_torch_free`, passed as ga_alloc / ga_free). Per repetition rep[i] (0..reps-1): nanoseconds
// inside allocation and free calls and their counts. Returns 0, or -(i + 1) when event i's
// allocation failed (nothing after it is replayed).
int anchor_replay(int which, void *ga_alloc, void *ga_free, const uint8_t *kind, const int64_t *slot,
                  const int64_t *size, const int32_t *rep, int64_t n, int64_t slots, int64_t reps,
                  int64_t thrash_kib, double *ns_alloc, double *ns_free, int64_t *n_alloc,
                  int64_t *n_free) {
  auto alloc = reinterpret_cast<ga_alloc_t>(ga_alloc);
  auto release = reinterpret_cast<ga_free_t>(ga_free);
  std::vector<void *> ptrs(slots, nullptr);
  std::vector<int64_t> sizes(slots, 0);
  std::vector<uint64_t> ticks_alloc(reps, 0), ticks_free(reps, 0);
  std::vector<uint8_t> thrash(thrash_kib * 1024 + 64, 0);
  volatile uint8_t sink = 0;
  cudaStream_t stream = nullptr;  // the legacy default stream, as the recorded traces' stream 0
  auto *torch_alloc = c10::cuda::CUDACachingAllocator::get();
  // The allocator under test, one call each way.
  auto take = [&](int64_t bytes) -> void * {
    return which == 0 ? torch_alloc->raw_alloc_with_stream(static_cast<size_t>(bytes), stream)
                      : alloc(static_cast<ssize_t>(bytes), 0, stream);
  };
  auto give = [&](void *p, int64_t bytes) {
    if (which == 0) {
      torch_alloc->raw_delete(p);
    } else {
      release(p, static_cast<ssize_t>(bytes), 0, stream);
    }
  };
  const auto wall0 = std::chrono::steady_clock::now();
  const uint64_t tsc0 = __rdtsc();
  int status = 0;
  for (int64_t i = 0; i < n; i++) {
    for (size_t b = 0; b + 64 <= thrash.size(); b += 64) {
      thrash[b] += 1;
    }
    sink = sink + thrash[(i * 64) % thrash.size()];
    const int r = rep[i];
    if (kind[i] == 0) {
      const uint64_t t = __rdtsc();
      void *p = take(size[i]);
      ticks_alloc[r] += __rdtsc() - t;
      n_alloc[r] += 1;
      if (p == nullptr) {
        status = static_cast<int>(-(i + 1));
        break;
      }
      ptrs[slot[i]] = p;
      sizes[slot[i]] = size[i];
    } else {
      void *p = ptrs[slot[i]];
      ptrs[slot[i]] = nullptr;
      const uint64_t t = __rdtsc();
      give(p, size[i]);
      ticks_free[r] += __rdtsc() - t;
      n_free[r] += 1;
    }
  }
  const uint64_t tsc1 = __rdtsc();
  const double wall_ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - wall0).count();
  const double ns_per_tick = wall_ns / static_cast<double>(tsc1 - tsc0);
  for (int64_t r = 0; r < reps; r++) {
    ns_alloc[r] = ticks_alloc[r] * ns_per_tick;
    ns_free[r] = ticks_free[r] * ns_per_tick;
  }
  // Blocks still live at the end (a trace's last blocks are never freed) go back.
  for (int64_t s = 0; s < slots; s++) {
    if (ptrs[s] != nullptr) {
      give(ptrs[s], sizes[s]);
    }
  }
  return status;
}
}
