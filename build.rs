//! With the `cuda` feature: compiles every `kernels/*.cu` to PTX through NVRTC and embeds
//! it (with the source, for recompiling on a driver that refuses the PTX), and builds the
//! host emulator that runs the same kernels on the CPU in tests. Without it: nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::fmt::Write as _;
    use std::fs;
    use std::path::{Path, PathBuf};

    /// The virtual architecture the embedded PTX targets unless overridden.
    const DEFAULT_ARCH: &str = "compute_70";
    const ARCH_VAR: &str = "RESNET_MNIST_CUDA_ARCH";

    /// One `.cu` file with its local `#include "..."`s inlined.
    struct Unit {
        stem: String,
        source: String,
        kernels: Vec<String>,
    }

    pub fn build() {
        let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        println!("cargo:rerun-if-changed=kernels");
        println!("cargo:rerun-if-changed=kernels/emu");
        println!("cargo:rerun-if-env-changed={ARCH_VAR}");
        let arch: &'static str = match std::env::var(ARCH_VAR) {
            Ok(arch) => Box::leak(arch.into_boxed_str()),
            Err(_) => DEFAULT_ARCH,
        };
        let units = read_units(&root.join("kernels"));
        require_nvrtc();
        for unit in &units {
            fs::write(out.join(format!("{}.cu", unit.stem)), &unit.source).expect("writing kernel source");
            fs::write(out.join(format!("{}.ptx", unit.stem)), compile(unit, arch)).expect("writing PTX");
        }
        fs::write(out.join("kernels.rs"), kernels_rs(&units, arch)).expect("writing kernels.rs");
        build_emulator(&root, &out, &units);
    }

    fn read_units(dir: &Path) -> Vec<Unit> {
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .expect("reading kernels/")
            .map(|e| e.expect("reading kernels/").path())
            .filter(|p| p.extension().is_some_and(|e| e == "cu"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|path| {
                let source = inline_includes(path);
                let kernels = kernel_names(&source);
                Unit { stem: path.file_stem().unwrap().to_string_lossy().into_owned(), source, kernels }
            })
            .collect()
    }

    /// Replaces each `#include "header"` with the header's text once, with `#line` markers so
    /// that NVRTC's messages name the original file and line.
    fn inline_includes(path: &Path) -> String {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy();
        let mut out = format!("#line 1 \"{name}\"\n");
        for (i, line) in text.lines().enumerate() {
            match line.trim().strip_prefix("#include \"").and_then(|l| l.strip_suffix('"')) {
                Some(header) => {
                    let header_path = path.with_file_name(header);
                    out += &inline_includes(&header_path).replace("#pragma once\n", "");
                    writeln!(out, "#line {} \"{name}\"", i + 2).unwrap();
                }
                None => writeln!(out, "{line}").unwrap(),
            }
        }
        out
    }

    /// Names of the `extern "C" __global__` functions, which the host launches by name.
    fn kernel_names(source: &str) -> Vec<String> {
        source
            .split("extern \"C\" __global__ void ")
            .skip(1)
            .map(|rest| rest.split('(').next().unwrap().trim().to_string())
            .collect()
    }

    fn require_nvrtc() {
        // SAFETY: only probes whether the shared library can be opened.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            panic!(
                "the `cuda` feature compiles kernels/*.cu with NVRTC, but libnvrtc cannot be loaded.\n\
                 Put a CUDA toolkit's lib64 on LD_LIBRARY_PATH, or install NVRTC from PyPI:\n  \
                 pip install nvidia-cuda-nvrtc==13.0.88       (libs in site-packages/nvidia/cu13/lib)\n  \
                 pip install nvidia-cuda-nvrtc-cu12==12.9.86  (libs in site-packages/nvidia/cuda_nvrtc/lib)\n\
                 and set LD_LIBRARY_PATH to that lib folder (`source .ci/cuda-env.sh` does both)."
            );
        }
    }

    fn compile(unit: &Unit, arch: &'static str) -> String {
        let opts = cudarc::nvrtc::CompileOptions {
            arch: Some(arch),
            options: vec!["-lineinfo".into(), "--std=c++17".into()],
            name: Some(format!("{}.cu", unit.stem)),
            ..Default::default()
        };
        match cudarc::nvrtc::compile_ptx_with_opts(&unit.source, opts) {
            Ok(ptx) => ptx.to_src(),
            Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => {
                panic!("NVRTC failed on kernels/{}.cu:\n{}", unit.stem, log.to_string_lossy())
            }
            Err(e) => panic!("NVRTC failed on kernels/{}.cu: {e:?}", unit.stem),
        }
    }

    fn kernels_rs(units: &[Unit], arch: &str) -> String {
        let mut rs =
            format!("/// The virtual architecture of the embedded PTX.\npub const PTX_ARCH: &str = {arch:?};\n");
        rs += "/// Every kernel file: its PTX, its source with headers inlined, and its kernels.\n";
        rs += "pub const MODULES: &[KernelModule] = &[\n";
        for u in units {
            writeln!(
                rs,
                "    KernelModule {{ file: \"{0}.cu\", ptx: include_str!(concat!(env!(\"OUT_DIR\"), \"/{0}.ptx\")), \
                 source: include_str!(concat!(env!(\"OUT_DIR\"), \"/{0}.cu\")), kernels: &{1:?} }},",
                u.stem, u.kernels
            )
            .unwrap();
        }
        rs + "];\n"
    }

    /// Compiles the emulator runtime and one translation unit holding every kernel file and
    /// the table the launcher looks kernels up in.
    fn build_emulator(root: &Path, out: &Path, units: &[Unit]) {
        let mut cpp = format!("#include \"{}\"\n", root.join("kernels/emu/cuda_emu.h").display());
        for u in units {
            writeln!(cpp, "#include \"{}\"", root.join("kernels").join(format!("{}.cu", u.stem)).display()).unwrap();
        }
        cpp += "\nstatic const emu::KernelEntry KERNELS[] = {\n";
        for name in units.iter().flat_map(|u| &u.kernels) {
            writeln!(
                cpp,
                "    {{\"{name}\", [](void** args) {{ emu::call_with(&{name}, args, \
                 std::make_index_sequence<emu::arity(&{name})>()); }}}},"
            )
            .unwrap();
        }
        cpp += "};\n\nextern \"C\" const emu::KernelEntry* emu_kernels(std::size_t* count) {\n";
        cpp += "    *count = sizeof(KERNELS) / sizeof(KERNELS[0]);\n    return KERNELS;\n}\n";
        let table = out.join("emu_kernels.cpp");
        fs::write(&table, cpp).expect("writing emu_kernels.cpp");
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .opt_level(2)
            .warnings(false)
            .file(root.join("kernels/emu/emu.cpp"))
            .file(&table)
            .compile("cuda_emu");
    }
}
