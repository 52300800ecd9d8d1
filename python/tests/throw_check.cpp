// Calls the allocation entry point PyTorch gets (gpu_arena_torch_malloc) the
// way PyTorch does — a plain C function pointer called from C++ — and
// checks that a failure arrives as a std::runtime_error carrying
// gpu-arena's message. Embeds Python to import the package (which loads
// the shared object and configures the arenas from GPU_ARENA_CONF).
#include <Python.h>
#include <dlfcn.h>
#include <sys/types.h>

#include <cstdio>
#include <stdexcept>

typedef void* (*alloc_fn)(ssize_t, int, void*);

int main() {
    Py_Initialize();
    PyObject* m = PyImport_ImportModule("gpu_arena");
    if (!m) {
        PyErr_Print();
        return 2;
    }
    PyObject* path = PyObject_CallMethod(m, "library_path", nullptr);
    void* h = dlopen(PyUnicode_AsUTF8(path), RTLD_NOW | RTLD_NOLOAD);
    if (!h) {
        std::printf("not loaded: %s\n", dlerror());
        return 2;
    }
    alloc_fn f = reinterpret_cast<alloc_fn>(dlsym(h, "gpu_arena_torch_malloc"));
    if (!f) return 2;
    void* ok = f(4096, 0, nullptr);
    std::printf("small allocation: %s\n", ok ? "ok" : "null");
    try {
        f(ssize_t(1) << 30, 0, nullptr);
        std::printf("no exception\n");
        return 1;
    } catch (const std::runtime_error& e) {
        std::printf("caught: %s\n", e.what());
    }
    std::printf("zero bytes: %s\n", f(0, 0, nullptr) ? "pointer" : "null");
    return 0;
}
