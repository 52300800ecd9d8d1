// Turns a failed allocation into a C++ exception for PyTorch.
//
// PyTorch's CUDAPluggableAllocator does not check the pointer its
// allocation function returns: a NULL would become a tensor at address 0,
// and the first kernel touching it would fail with an illegal address (a
// sticky error that ends the CUDA context). PyTorch's own allocator throws
// instead, and its Python bindings turn a std::exception into a
// RuntimeError carrying the message. gpu_arena_torch_malloc (lib.rs) calls
// this on failure; the exception unwinds through that Rust function, which
// is declared "C-unwind" for it.
#include <stdexcept>

extern "C" [[noreturn]] void gpu_arena_throw_alloc_error(const char* message) {
    throw std::runtime_error(message);
}
