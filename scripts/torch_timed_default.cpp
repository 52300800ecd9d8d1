// PyTorch's own caching allocator, timed the way `report:1` times gpu-arena: a CUDAPluggableAllocator
// whose calls go to the native caching allocator (the one tensors use by default), each call timed
// with the time-stamp counter inside the entry point, so that a workload under PyTorch reports the
// default allocator's time per call next to gpu-arena's, through the same pluggable wrapper.
// scripts/torch_alternate.sh (TIMED_DEFAULT=1) builds it with scripts/alloc_anchor.py build --src and
// runs scripts/torch_bench.py --timed-default with it.
//
// The native allocator is captured when this library is loaded (CUDAPluggableAllocator loads it
// before `change_current_allocator` swaps the allocator) and initialized at the first call.
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <x86intrin.h>

namespace {
using c10::cuda::CUDACachingAllocator::CUDAAllocator;

CUDAAllocator *const native = c10::cuda::CUDACachingAllocator::get();
std::once_flag init_once;
std::atomic<uint64_t> allocs{0}, frees{0}, alloc_ticks{0}, free_ticks{0};
// Ticks to nanoseconds: the counter and the steady clock read at load and at each epoch.
uint64_t tsc_origin = __rdtsc();
auto wall_origin = std::chrono::steady_clock::now();

void ensure_init() {
  std::call_once(init_once, [] {
    if (!native->initialized()) {
      native->init(static_cast<int>(c10::cuda::device_count()));
    }
  });
}
}  // namespace

extern "C" {

void *timed_alloc(ssize_t size, int device, cudaStream_t stream) {
  (void)device;  // the native allocator allocates on the current device, as the wrapper sets it
  ensure_init();
  const uint64_t t = __rdtsc();
  void *p = native->raw_alloc_with_stream(static_cast<size_t>(size), stream);
  const uint64_t d = __rdtsc() - t;
  allocs.fetch_add(1, std::memory_order_relaxed);
  alloc_ticks.fetch_add(d, std::memory_order_relaxed);
  return p;
}

void timed_free(void *ptr, ssize_t size, int device, cudaStream_t stream) {
  (void)size;
  (void)device;
  (void)stream;
  const uint64_t t = __rdtsc();
  native->raw_delete(ptr);
  const uint64_t d = __rdtsc() - t;
  frees.fetch_add(1, std::memory_order_relaxed);
  free_ticks.fetch_add(d, std::memory_order_relaxed);
}

// Writes the figures since the last epoch as JSON into buf (at most len bytes): calls and nanoseconds
// inside them, and device 0's peak reserved and allocated bytes, cudaMalloc and cudaFree calls and
// allocations from the native allocator's statistics; then starts a new epoch (counters and peaks
// reset). Returns the length written.
int64_t timed_epoch_json(char *buf, size_t len) {
  ensure_init();
  const uint64_t tsc = __rdtsc();
  const auto wall = std::chrono::steady_clock::now();
  const double ns_per_tick =
      std::chrono::duration<double, std::nano>(wall - wall_origin).count() /
      static_cast<double>(tsc - tsc_origin);
  const auto s = native->getDeviceStats(0);
  // Index 0 of each stat array is the aggregate over pools.
  const int n = std::snprintf(
      buf, len,
      "{\"times\": {\"allocs\": %llu, \"frees\": %llu, \"alloc_nanos\": %.0f, \"free_nanos\": %.0f}, "
      "\"peak_reserved\": %lld, \"peak_allocated\": %lld, \"device_allocs\": %lld, "
      "\"device_frees\": %lld, \"allocations\": %lld}",
      static_cast<unsigned long long>(allocs.exchange(0)),
      static_cast<unsigned long long>(frees.exchange(0)), alloc_ticks.exchange(0) * ns_per_tick,
      free_ticks.exchange(0) * ns_per_tick, static_cast<long long>(s.reserved_bytes[0].peak),
      static_cast<long long>(s.allocated_bytes[0].peak),
      static_cast<long long>(s.num_device_alloc), static_cast<long long>(s.num_device_free),
      static_cast<long long>(s.allocation[0].allocated));
  native->resetPeakStats(0);
  return n;
}
}
