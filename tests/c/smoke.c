/* Drives the C ABI: init, alloc, write, free, bad frees, stats, trim, tags,
 * sleep and wake, several devices. */
#include <stdio.h>
#include <string.h>
#include "gpu_arena.h"

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #c, gpu_arena_last_error()); return 1; } } while (0)

int main(void) {
    CHECK(gpu_arena_init("backend:host,limit:1GiB,report:1") == 0);
    char *small = gpu_arena_alloc(100, 0, NULL);
    char *large = gpu_arena_alloc(3 << 20, 0, NULL);
    CHECK(small && large);
    CHECK(((uintptr_t)small % 512) == 0 && ((uintptr_t)large % 512) == 0);
    memset(small, 0xab, 100); /* host backend: the CPU may touch it */
    memset(large, 0xcd, 3 << 20);
    CHECK(small[99] == (char)0xab && large[(3 << 20) - 1] == (char)0xcd);

    /* zero size, foreign, interior and double frees are refused */
    CHECK(gpu_arena_alloc(0, 0, NULL) == NULL);
    CHECK(strstr(gpu_arena_last_error(), "zero") != NULL);
    int local = 0;
    CHECK(gpu_arena_free(&local, 4, 0, NULL) == -1);
    CHECK(strstr(gpu_arena_last_error(), "not allocated by this arena") != NULL);
    CHECK(gpu_arena_free(large + 4096, 0, 0, NULL) == -1);
    CHECK(strstr(gpu_arena_last_error(), "inside a block") != NULL);
    CHECK(gpu_arena_free(large, 3 << 20, 0, NULL) == 0);
    CHECK(gpu_arena_free(large, 3 << 20, 0, NULL) == -1);
    CHECK(strstr(gpu_arena_last_error(), "already freed") != NULL); /* double free */
    CHECK(gpu_arena_free(small, 100, 0, NULL) == 0);
    CHECK(gpu_arena_free(NULL, 0, 0, NULL) == 0);
    CHECK(gpu_arena_alloc(1, -1, NULL) == NULL);

    /* PyTorch entry points */
    void *t = gpu_arena_torch_alloc(1 << 20, 0, NULL);
    CHECK(t != NULL);
    gpu_arena_torch_free(t, 1 << 20, 0, NULL);

    /* Tags, sleep and wake at the same address. */
    CHECK(gpu_arena_set_tag("weights") == 0);
    unsigned char *w = gpu_arena_alloc(5 << 20, 0, NULL);
    CHECK(w != NULL);
    for (int i = 0; i < (5 << 20); i += 4096) w[i] = (unsigned char)(i >> 12);
    /* Pinned memory for the offload, obtained on a thread of its own (the
     * sleep waits for it); a name that is no tag is refused at once. */
    CHECK(gpu_arena_prepare_offload_background(0, "weights") == 0);
    CHECK(gpu_arena_prepare_offload_background(0, "weights,nonesuch") == -1);
    CHECK(strstr(gpu_arena_last_error(), "nonesuch") != NULL);
    unsigned char *x = gpu_arena_alloc(3 << 20, 0, NULL);
    CHECK(x != NULL);
    CHECK(gpu_arena_sleep(0, "weights", 1, NULL) == 0);
    CHECK(gpu_arena_alloc(64, 0, NULL) == NULL);
    CHECK(strstr(gpu_arena_last_error(), "asleep") != NULL);
    /* A sleeping tag serves frees (once). */
    CHECK(gpu_arena_free(x, 3 << 20, 0, NULL) == 0);
    CHECK(gpu_arena_free(x, 3 << 20, 0, NULL) == -1);
    CHECK(gpu_arena_wake(0, "weights", NULL) == 0);
    for (int i = 0; i < (5 << 20); i += 4096) CHECK(w[i] == (unsigned char)(i >> 12));
    CHECK(gpu_arena_free(w, 5 << 20, 0, NULL) == 0);
    CHECK(gpu_arena_set_tag("default") == 1);
    CHECK(gpu_arena_sleep(0, "weights", 7, NULL) == -1);

    char json[8192];
    ssize_t n = gpu_arena_stats_json(0, json, sizeof json);
    CHECK(n > 0 && n < (ssize_t)sizeof json);
    CHECK(strstr(json, "\"peak_live\"") != NULL);
    CHECK(strstr(json, "\"weights\"") != NULL);
    n = gpu_arena_accounting_json(0, json, sizeof json);
    CHECK(n > 0 && n < (ssize_t)sizeof json);
    CHECK(strstr(json, "largest_free_committed") != NULL);
    uint64_t peak_live = 0, peak_committed = 0;
    CHECK(gpu_arena_peaks(0, &peak_live, &peak_committed) == 0);
    CHECK(peak_live >= (3 << 20) && peak_committed >= peak_live);
    gpu_arena_trim(0);

    /* Any device ordinal (the host backend emulates devices 0..=N): each
     * device's arena comes at its first use, and a tag made current before
     * that applies there too, under the same index. */
    CHECK(gpu_arena_set_tag("kv") == 0);
    for (int d = 1; d < 4; d++) {
        char *p = gpu_arena_alloc(3 << 20, d, NULL);
        CHECK(p != NULL);
        memset(p, d, 3 << 20);
        n = gpu_arena_stats_json(d, json, sizeof json);
        CHECK(n > 0 && n < (ssize_t)sizeof json);
        CHECK(strstr(json, "\"kv\"") != NULL);
        CHECK(gpu_arena_free(p, 3 << 20, d, NULL) == 0);
        CHECK(gpu_arena_free(p, 3 << 20, (d + 1) % 4, NULL) == -1); /* another device's arena */
    }
    CHECK(gpu_arena_set_tag("default") == 2);
    CHECK(gpu_arena_alloc(64, 16, NULL) == NULL); /* beyond MAX_DEVICES */
    printf("c abi ok: peak live %llu, peak committed %llu\n", (unsigned long long)peak_live, (unsigned long long)peak_committed);
    return 0;
}
