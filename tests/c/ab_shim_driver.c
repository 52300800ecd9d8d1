// Drives scripts/ab_shim.c with two copies of gpu-arena's library (tests/c_abi.rs): allocations go to
// the build selected, a free goes to the build that handed the block out, whichever is selected, and
// each build's epoch counts only its own calls.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

void ab_select(int i);
void *ab_alloc(ssize_t size, int device, void *stream);
void ab_free(void *ptr, ssize_t size, int device, void *stream);
ssize_t ab_epoch_json(int i, int device, char *buf, size_t len);

// The first top-level count `key` of an epoch's JSON (it comes before the nested "times").
static long count(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *at = strstr(json, pat);
    return at ? strtol(at + strlen(pat), NULL, 10) : -1;
}

static void expect(int ok, const char *what, int rep) {
    if (!ok) {
        fprintf(stderr, "repetition %d: %s\n", rep, what);
        exit(1);
    }
}

int main(void) {
    static char buf[1 << 16];
    void *kept[2] = {NULL, NULL};
    for (int r = 0; r < 4; r++) {
        int w = r % 2;
        ab_select(w);
        void *a = ab_alloc(1 << 20, 0, NULL), *b = ab_alloc(3 << 20, 0, NULL), *c = ab_alloc(4096, 0, NULL);
        expect(a && b && c, "an allocation failed", r);
        ab_free(a, 1 << 20, 0, NULL);
        ab_free(b, 3 << 20, 0, NULL);
        // The other build's block of the repetition before: freed while this build is selected.
        if (kept[1 - w]) {
            ab_free(kept[1 - w], 4096, 0, NULL);
            kept[1 - w] = NULL;
        }
        kept[w] = c;
        expect(ab_epoch_json(w, 0, buf, sizeof buf) > 0, "no epoch from the selected build", r);
        expect(count(buf, "allocs") == 3 && count(buf, "frees") == 2, buf, r);
        expect(ab_epoch_json(1 - w, 0, buf, sizeof buf) > 0, "no epoch from the other build", r);
        expect(count(buf, "allocs") == 0 && count(buf, "frees") == (r > 0), buf, r);
    }
    ab_free(kept[1], 4096, 0, NULL);
    printf("ab shim ok\n");
    return 0;
}
