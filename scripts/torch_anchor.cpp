// PyTorch's caching allocator as an anchor of `gpu-arena bench` (sections a and b): a small C library,
// built on the GPU machine against its torch, that the bench loads at run time with
// `--torch-anchor PATH` and calls like any other anchor, in the same run as gpu-arena's figures.
//
//   python3 scripts/alloc_anchor.py build libtorch_anchor.so --src scripts/torch_anchor.cpp
//   gpu-arena --backend cuda bench --torch-anchor ./libtorch_anchor.so
//
// The calls are those a tensor's allocation makes: `raw_alloc_with_stream` / `raw_delete` of
// c10::cuda::CUDACachingAllocator, on the calling thread's current device (set by
// gpu_arena_torch_anchor_enter). The allocator is initialized for every device at the first
// enter, as torch does at its lazy CUDA init; nothing else of torch runs in the bench's process.
// tests/c/torch_anchor_standin.c is a stand-in with the same entry points (malloc), so that the
// bench's loading and columns are tested where there is no torch.
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif
#ifndef TORCH_VERSION
#define TORCH_VERSION "(version unknown)"
#endif

#include <cstddef>
#include <mutex>

namespace {
std::once_flag init_once;
}  // namespace

extern "C" {

// What the bench prints as the column's name.
const char *gpu_arena_torch_anchor_name(void) {
  return "PyTorch " TORCH_VERSION " caching allocator";
}

// Makes `device` the calling thread's current device and initializes the caching allocator (once
// per process). Returns 0, or -1 when torch refused (no device, or a CUDA error).
int gpu_arena_torch_anchor_enter(int device) {
  try {
    std::call_once(init_once, [] {
      auto *a = c10::cuda::CUDACachingAllocator::get();
      if (!a->initialized()) {
        a->init(static_cast<int>(c10::cuda::device_count()));
      }
    });
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (...) {
    return -1;
  }
}

// `bytes` from the caching allocator for work on `stream` (a cudaStream_t; NULL: the legacy default
// stream), or NULL when it refused (out of memory: torch's exception does not cross into the bench).
void *gpu_arena_torch_anchor_alloc(size_t bytes, void *stream) {
  try {
    return c10::cuda::CUDACachingAllocator::raw_alloc_with_stream(
        bytes, static_cast<cudaStream_t>(stream));
  } catch (...) {
    return nullptr;
  }
}

// Gives back a pointer from gpu_arena_torch_anchor_alloc. Returns 0, or -1 when torch refused it.
int gpu_arena_torch_anchor_free(void *ptr) {
  try {
    c10::cuda::CUDACachingAllocator::raw_delete(ptr);
    return 0;
  } catch (...) {
    return -1;
  }
}
}
