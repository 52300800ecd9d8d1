/* gpu-arena: a GPU memory allocator over virtual memory management.
 *
 * C ABI over the process-wide arenas (one per device). Link with
 * -lgpu_arena (libgpu_arena.so, built by `cargo build --release`).
 * No function aborts on bad input: failures return NULL or -1 and set a
 * thread-local message read with gpu_arena_last_error().
 *
 * Configuration: gpu_arena_init("limit:60GiB,keep_alive:256MiB,...") before
 * the first allocation, or the GPU_ARENA_CONF environment variable. */
#ifndef GPU_ARENA_H
#define GPU_ARENA_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Configures the global arenas (conf may be NULL: environment/defaults).
 * Opens no device: each device's arena is created at its first use (a
 * process working on one GPU of several touches no other). 0 on success,
 * -1 on error. */
int gpu_arena_init(const char *conf);

/* size bytes aligned to 512 on `device` for `stream` (a cudaStream_t/
 * hipStream_t, or NULL for the default stream). NULL on failure. */
void *gpu_arena_alloc(size_t size, int device, void *stream);

/* Frees ptr (allocated with `size` bytes; 0 = unknown) last used on `stream`.
 * Foreign, interior and double frees are refused with -1 and change nothing.
 * 0 on success; freeing NULL does nothing. */
int gpu_arena_free(void *ptr, size_t size, int device, void *stream);

/* Gives back empty pages whose work completed; returns the bytes given back. */
uint64_t gpu_arena_trim(int device);

/* Stats of `device` as JSON into buf (cap bytes, NUL-terminated). Returns
 * the full JSON length (retry with a larger buffer if >= cap), -1 on error. */
ssize_t gpu_arena_stats_json(int device, char *buf, size_t cap);

/* Ends the current epoch of `device` (a repetition, a step) and writes what
 * happened since the last call as JSON into buf (as gpu_arena_stats_json):
 * peak live / peak committed and their ratio, driver calls (VMM apart),
 * allocations, frees, time inside the allocation calls (with report:1).
 * The peaks then restart from the current values. -1 on error. */
ssize_t gpu_arena_epoch_json(int device, char *buf, size_t cap);

/* Peak live and peak committed bytes (either pointer may be NULL). */
int gpu_arena_peaks(int device, uint64_t *peak_live, uint64_t *peak_committed);

/* The calling thread's last error ("" after a successful call). */
const char *gpu_arena_last_error(void);

/* Tags: the calling thread's allocations go to its current tag (created on
 * first use; "default" at start), on whichever device they are made; a tag's
 * index is the same on every device. A thread that never set one uses the
 * process-wide tag. Returns the previous tag index or -1. */
int gpu_arena_set_tag(const char *tag);

/* The process-wide tag: the tag of every thread that never called
 * gpu_arena_set_tag (e.g. PyTorch's autograd threads). Returns the previous
 * process-wide tag index or -1. */
int gpu_arena_set_process_tag(const char *tag);

/* Sleep: give back every physical page of the comma-separated tags while
 * their addresses stay valid. mode 0 discards contents, 1 offloads them to
 * pinned host memory. Waits on the tags' own streams only. 0 or -1.
 * Allocating in a sleeping tag fails ("asleep"); freeing succeeds, and the
 * wake neither recommits nor restores what was freed. */
int gpu_arena_sleep(int device, const char *tags, int mode, void *stream);

/* Obtains now the pinned host memory offloading `tags` will need, so that
 * their first offload runs at copy speed. Kept until gpu_arena_trim. The
 * tags' locks are not held while the memory is pinned. */
int gpu_arena_prepare_offload(int device, const char *tags);

/* The same on a thread of its own: returns at once (0, or -1 for a name
 * that is no tag). A sleep that offloads waits for that thread first. Call
 * it once the tags hold what they will offload (after loading weights). */
int gpu_arena_prepare_offload_background(int device, const char *tags);
/* Sleep and wake refuse a tag name that does not exist (-1, last error says
 * which) before changing anything. */

/* Wake: recommit the tags at the same addresses, restoring offloaded data. */
int gpu_arena_wake(int device, const char *tags, void *stream);

/* Commit limit of one tag (UINT64_MAX: none). */
int gpu_arena_set_tag_limit(int device, const char *tag, uint64_t limit);

/* Accounting as JSON (total and per tag): live, committed, reclaimable,
 * pending, limit, largest_free_committed. Same buffer protocol as stats. */
ssize_t gpu_arena_accounting_json(int device, char *buf, size_t cap);

/* CUDA graphs: between begin and end, blocks allocated on `stream` (being
 * captured) are noted; their frees, during the capture or later, are
 * deferred until release, so a replay never touches reused or returned
 * memory. begin returns the hold's id (0 on error); release, called once the
 * graph is destroyed and its replays completed, frees the deferred blocks
 * and returns their bytes (-1 on error). */
uint64_t gpu_arena_graph_begin(int device, void *stream);
void gpu_arena_graph_end(uint64_t id);
int64_t gpu_arena_graph_release(uint64_t id);

/* PyTorch CUDAPluggableAllocator entry points:
 *   torch.cuda.memory.CUDAPluggableAllocator("libgpu_arena.so",
 *       "gpu_arena_torch_alloc", "gpu_arena_torch_free")
 * PyTorch does not check the pointer: a failed allocation (NULL) becomes a
 * tensor at address 0. The Python package (gpu_arena.torch.enable()) gives
 * PyTorch gpu_arena_torch_malloc instead, which throws a C++ exception with
 * the last error on failure; PyTorch raises it as a RuntimeError. */
void *gpu_arena_torch_alloc(ssize_t size, int device, void *stream);
void gpu_arena_torch_free(void *ptr, ssize_t size, int device, void *stream);

#ifdef __cplusplus
}
#endif
#endif /* GPU_ARENA_H */
