//! Compiles `csrc/throw.cpp`: a failed allocation reaches PyTorch as a C++
//! exception (see `gpu_arena_torch_malloc` in `src/lib.rs`).

fn main() {
    println!("cargo:rerun-if-changed=csrc/throw.cpp");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("csrc/throw.cpp")
        .compile("gpu_arena_throw");
}
