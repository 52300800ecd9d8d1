/* A stand-in for scripts/torch_anchor.cpp (PyTorch's caching allocator as an anchor of
 * `gpu-arena bench --torch-anchor`): the same entry points, served by malloc, so that the bench's
 * loading of the library and its columns are tested where there is no torch (tests/cli.rs builds it
 * with cc). */
#include <stddef.h>
#include <stdlib.h>

const char *gpu_arena_torch_anchor_name(void) { return "stand-in (malloc)"; }

int gpu_arena_torch_anchor_enter(int device) { return device >= 0 ? 0 : -1; }

void *gpu_arena_torch_anchor_alloc(size_t bytes, void *stream) {
  (void)stream;
  return malloc(bytes);
}

int gpu_arena_torch_anchor_free(void *ptr) {
  free(ptr);
  return 0;
}
