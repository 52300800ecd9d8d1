//! Names the library as ROCm 5's runtime (`libamdhip64.so.5`, the soname the
//! HIP backend's binaries were linked against here).
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libamdhip64.so.5");
}
