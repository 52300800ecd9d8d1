// Two builds of gpu-arena behind one CUDAPluggableAllocator, switched by repetition: a within-process
// A/B, so that the two builds' time per call is compared a few seconds apart on the same process, CPU
// and caches, where the comparison of separate processes spreads over 0.6-1.7 (docs/pytorch.md, "Groups
// formed at the take").
//
// AB_LIB_0 and AB_LIB_1 name the two libgpu_arena.so files (two paths: glibc loads each apart, with its
// own statics and thread-locals; each binds its own symbols). ab_select(i) sends later allocations to
// library i; a free goes to the library whose pointers the block's address lies among (each library
// hands out blocks from its own reservation: the lowest and highest address each has handed out are
// kept, and an address in both ranges stops the process, as the two could not be told apart).
// ab_epoch_json(i, ...) is library i's gpu_arena_epoch_json. scripts/torch_bench.py --ab drives it.
//
//   cc -O2 -shared -fPIC -o ab_shim.so scripts/ab_shim.c -ldl
// (scripts/torch_alternate.sh AB_WITHIN=1 builds it so on the device unless .gpu/ab_shim.so was carried)
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

typedef void *(*alloc_fn)(ssize_t, int, void *);
typedef void (*free_fn)(void *, ssize_t, int, void *);
typedef ssize_t (*epoch_fn)(int, char *, size_t);

static struct lib {
    alloc_fn alloc;
    free_fn free;
    epoch_fn epoch;
    _Atomic uintptr_t lo, hi;  // lowest and highest address handed out (hi: the block's end)
} libs[2];
static _Atomic int active;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void *must(void *h, const char *name, const char *path) {
    void *f = dlsym(h, name);
    if (!f) {
        fprintf(stderr, "ab_shim: %s has no %s\n", path, name);
        abort();
    }
    return f;
}

static void load(void) {
    for (int i = 0; i < 2; i++) {
        char var[] = "AB_LIB_0";
        var[7] = (char)('0' + i);
        const char *path = getenv(var);
        if (!path) {
            fprintf(stderr, "ab_shim: set %s to a libgpu_arena.so\n", var);
            abort();
        }
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            fprintf(stderr, "ab_shim: %s\n", dlerror());
            abort();
        }
        libs[i].alloc = (alloc_fn)must(h, "gpu_arena_torch_alloc", path);
        libs[i].free = (free_fn)must(h, "gpu_arena_torch_free", path);
        libs[i].epoch = (epoch_fn)must(h, "gpu_arena_epoch_json", path);
        atomic_store(&libs[i].lo, UINTPTR_MAX);
        atomic_store(&libs[i].hi, 0);
    }
}

static int in(struct lib *l, uintptr_t p) {
    return p >= atomic_load_explicit(&l->lo, memory_order_relaxed) &&
           p < atomic_load_explicit(&l->hi, memory_order_relaxed);
}

void ab_select(int i) {
    pthread_once(&once, load);
    atomic_store(&active, i & 1);
}

void *ab_alloc(ssize_t size, int device, void *stream) {
    pthread_once(&once, load);
    struct lib *l = &libs[atomic_load_explicit(&active, memory_order_relaxed)];
    void *p = l->alloc(size, device, stream);
    if (p) {
        uintptr_t a = (uintptr_t)p, e = a + (uintptr_t)size, v;
        for (v = atomic_load(&l->lo); a < v && !atomic_compare_exchange_weak(&l->lo, &v, a);) {
        }
        for (v = atomic_load(&l->hi); e > v && !atomic_compare_exchange_weak(&l->hi, &v, e);) {
        }
        if (in(&libs[0], a) && in(&libs[1], a)) {
            fprintf(stderr, "ab_shim: the two libraries' address ranges overlap at %p\n", p);
            abort();
        }
    }
    return p;
}

void ab_free(void *ptr, ssize_t size, int device, void *stream) {
    pthread_once(&once, load);
    uintptr_t a = (uintptr_t)ptr;
    struct lib *l = in(&libs[0], a) ? &libs[0] : in(&libs[1], a) ? &libs[1] : NULL;
    if (!l) {
        fprintf(stderr, "ab_shim: free of %p, which neither library handed out\n", ptr);
        abort();
    }
    l->free(ptr, size, device, stream);
}

ssize_t ab_epoch_json(int i, int device, char *buf, size_t len) {
    pthread_once(&once, load);
    return libs[i & 1].epoch(device, buf, len);
}
