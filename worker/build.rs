//! Links the worker so that its binaries find libtorch without `LD_LIBRARY_PATH` and so
//! that CUDA is detected on GPU machines.
//!
//! `torch-sys` (links = "tch") exports the library directory it linked against as
//! `DEP_TCH_LIBTORCH_LIB`. We bake it in as an rpath, and keep `libtorch_cuda.so` in the
//! dynamic section with `--no-as-needed`: otherwise the linker drops it (no symbol is used
//! directly) and `tch::Cuda::is_available()` is false even on a GPU (tch-rs #980, #907).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        // doc-only builds of torch-sys export nothing; there is nothing to link then.
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    for lib in ["torch_cuda", "torch"] {
        if Path::new(&lib_dir).join(format!("lib{lib}.so")).exists() {
            println!("cargo:rustc-link-arg=-l{lib}");
        }
    }
}
