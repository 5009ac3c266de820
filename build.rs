//! With the `cuda` feature: compiles every `kernels/*.cu` to PTX through NVRTC and embeds
//! it (with the source, for recompiling on a driver that refuses the PTX), generates one typed
//! launch function per kernel from its signature, and builds the host emulator that runs the
//! same kernels on the CPU in tests, and the fake `libcuda`/`libcublas` over it (test
//! infrastructure, never linked into the binary). Without it: nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
#[path = "src/backend/cuda/tiles.rs"]
mod tiles;

#[cfg(feature = "cuda")]
mod cuda {
    use std::fmt::Write as _;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::tiles;

    /// The oldest architecture the kernels are written for (they use nothing newer).
    const OLDEST_ARCH: i32 = 70;
    const ARCH_VAR: &str = "RESNET_MNIST_CUDA_ARCH";

    /// One `.cu` file with its local `#include "..."`s inlined.
    struct Unit {
        stem: String,
        source: String,
        kernels: Vec<Kernel>,
    }

    /// An `extern "C" __global__` function and its parameters, as the host passes them.
    struct Kernel {
        name: String,
        params: Vec<(String, Param)>,
    }

    /// A kernel parameter type the host can pass, and the Rust type of its launch argument.
    #[derive(Clone, Copy)]
    enum Param {
        Ptr,
        I32,
        U32,
        F32,
    }

    impl Param {
        fn rust(self) -> (&'static str, &'static str) {
            match self {
                Param::Ptr => ("DevPtr", "Ptr"),
                Param::I32 => ("i32", "I32"),
                Param::U32 => ("u32", "U32"),
                Param::F32 => ("f32", "F32"),
            }
        }
    }

    pub fn build() {
        let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        println!("cargo:rerun-if-changed=kernels");
        println!("cargo:rerun-if-changed=kernels/emu");
        println!("cargo:rerun-if-changed=src/backend/cuda/tiles.rs");
        println!("cargo:rerun-if-env-changed={ARCH_VAR}");
        // Which libnvrtc loads, and so which architectures exist, depends on it.
        println!("cargo:rerun-if-env-changed=LD_LIBRARY_PATH");
        let units = read_units(&root.join("kernels"));
        require_nvrtc();
        let arch: &'static str = Box::leak(std::env::var(ARCH_VAR).unwrap_or_else(|_| default_arch()).into_boxed_str());
        for unit in &units {
            fs::write(out.join(format!("{}.cu", unit.stem)), &unit.source).expect("writing kernel source");
            fs::write(out.join(format!("{}.ptx", unit.stem)), compile(unit, arch)).expect("writing PTX");
        }
        fs::write(out.join("kernels.rs"), kernels_rs(&units, arch)).expect("writing kernels.rs");
        build_emulator(&root, &out, &units);
        build_fakes(&root, &out);
    }

    /// The oldest virtual architecture the loaded NVRTC supports that is at least
    /// [`OLDEST_ARCH`]: `compute_70` on CUDA 12, `compute_75` on CUDA 13, which dropped Volta.
    fn default_arch() -> String {
        use cudarc::nvrtc::sys;
        let mut count = 0;
        // SAFETY: NVRTC writes `count` architectures into a buffer of that many.
        let archs = unsafe {
            sys::nvrtcGetNumSupportedArchs(&mut count).result().expect("nvrtcGetNumSupportedArchs");
            let mut archs = vec![0; count as usize];
            sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()).result().expect("nvrtcGetSupportedArchs");
            archs
        };
        let oldest = archs.iter().copied().filter(|&a| a >= OLDEST_ARCH).min().unwrap_or_else(|| {
            panic!("this NVRTC supports none of the architectures the kernels need (compute_{OLDEST_ARCH} or newer): {archs:?}")
        });
        format!("compute_{oldest}")
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
                let kernels = kernels(&source);
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

    /// The `extern "C" __global__` functions, which the host launches by name, with their
    /// parameter lists.
    fn kernels(source: &str) -> Vec<Kernel> {
        source
            .split("extern \"C\" __global__ void ")
            .skip(1)
            .map(|rest| {
                let (name, rest) = rest.split_once('(').expect("a kernel's parameter list");
                let name = name.trim().to_string();
                let list = rest.split_once(')').expect("the end of a kernel's parameter list").0;
                let params = list.split(',').filter(|p| !p.trim().is_empty()).map(|p| param(&name, p)).collect();
                Kernel { name, params }
            })
            .collect()
    }

    /// One parameter such as `const float* __restrict__ x`: its name and how it is passed.
    fn param(kernel: &str, text: &str) -> (String, Param) {
        let text = text.replace("__restrict__", " ").replace('*', " * ");
        let mut tokens: Vec<&str> = text.split_whitespace().filter(|&t| t != "const").collect();
        let name = tokens.pop().unwrap_or_else(|| panic!("kernel {kernel}: an empty parameter")).to_string();
        let kind = match tokens.join(" ").as_str() {
            t if t.ends_with('*') => Param::Ptr,
            "int" => Param::I32,
            "unsigned int" => Param::U32,
            "float" => Param::F32,
            t => panic!("kernel {kernel}: parameter {name} has type `{t}`, which the host cannot pass (build.rs)"),
        };
        (name, kind)
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
        let mut options = vec!["-lineinfo".to_string(), "--std=c++17".to_string()];
        options.extend(tiles::define_flags());
        let opts = cudarc::nvrtc::CompileOptions {
            arch: Some(arch),
            options,
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
            let names: Vec<&str> = u.kernels.iter().map(|k| k.name.as_str()).collect();
            writeln!(
                rs,
                "    KernelModule {{ file: \"{0}.cu\", ptx: include_str!(concat!(env!(\"OUT_DIR\"), \"/{0}.ptx\")), \
                 source: include_str!(concat!(env!(\"OUT_DIR\"), \"/{0}.cu\")), kernels: &{1:?} }},",
                u.stem, names
            )
            .unwrap();
        }
        rs += "];\n";
        for (unit, k) in units.iter().flat_map(|u| u.kernels.iter().map(move |k| (u, k))) {
            let params: Vec<String> = k.params.iter().map(|(name, p)| format!("{name}: {}", p.rust().0)).collect();
            let args: Vec<String> = k
                .params
                .iter()
                .map(|(name, p)| match p {
                    Param::Ptr => format!("Arg::Ptr({name}.0)"),
                    _ => format!("Arg::{}({name})", p.rust().1),
                })
                .collect();
            writeln!(
                rs,
                "\n/// `{name}` of `kernels/{stem}.cu`, with its parameters in their order and types.\n\
                 #[allow(clippy::too_many_arguments)]\n\
                 pub fn {name}({params}) -> KernelCall {{\n    \
                 KernelCall {{ kernel: \"{name}\", args: vec![{args}] }}\n}}",
                name = k.name,
                stem = unit.stem,
                params = params.join(", "),
                args = args.join(", ")
            )
            .unwrap();
        }
        rs
    }

    /// Compiles the emulator runtime and one translation unit holding every kernel file and
    /// the table the launcher looks kernels up in.
    fn build_emulator(root: &Path, out: &Path, units: &[Unit]) {
        let mut cpp = format!("#include \"{}\"\n", root.join("kernels/emu/cuda_emu.h").display());
        for u in units {
            writeln!(cpp, "#include \"{}\"", root.join("kernels").join(format!("{}.cu", u.stem)).display()).unwrap();
        }
        cpp += "\nstatic const emu::KernelEntry KERNELS[] = {\n";
        for name in units.iter().flat_map(|u| &u.kernels).map(|k| &k.name) {
            writeln!(
                cpp,
                "    {{\"{name}\", [](void** args) {{ emu::call_with(&{name}, args, \
                 std::make_index_sequence<emu::params_of(&{name}).count>()); }}, emu::params_of(&{name})}},"
            )
            .unwrap();
        }
        cpp += "};\n\nextern \"C\" const emu::KernelEntry* emu_kernels(std::size_t* count) {\n";
        cpp += "    *count = sizeof(KERNELS) / sizeof(KERNELS[0]);\n    return KERNELS;\n}\n";
        let table = out.join("emu_kernels.cpp");
        fs::write(&table, cpp).expect("writing emu_kernels.cpp");
        let mut build = cpp_build();
        for (name, value) in tiles::DEFINES {
            build.define(name, value.to_string().as_str());
        }
        build.file(root.join("kernels/emu/emu.cpp")).file(&table).compile("cuda_emu");
    }

    fn cpp_build() -> cc::Build {
        let mut build = cc::Build::new();
        // The emulator switches fibers with _longjmp, which fortified builds refuse across stacks.
        build.cpp(true).std("c++17").opt_level(2).pic(true).warnings(false).flag("-U_FORTIFY_SOURCE");
        build
    }

    /// The fake driver and cuBLAS (`kernels/emu/fake_*.cpp`) as shared libraries, in
    /// `fake-cuda/driver` and `fake-cuda/cublas` of `OUT_DIR` (apart, so that a test can leave
    /// cuBLAS out), each also under its unversioned name, which cudarc tries first. The
    /// driver links the emulator built above; its own symbols stay hidden.
    fn build_fakes(root: &Path, out: &Path) {
        let fakes = out.join("fake-cuda");
        let (driver, cublas) = (fakes.join("driver"), fakes.join("cublas"));
        for dir in [&driver, &cublas] {
            fs::create_dir_all(dir).expect("creating fake-cuda/");
        }
        let emu = root.join("kernels/emu");
        link(
            &driver.join("libcuda.so.1"),
            &[emu.join("fake_driver.cpp").to_str().unwrap(), &format!("-I{}", emu.display())],
            &["-Wl,--whole-archive", out.join("libcuda_emu.a").to_str().unwrap(), "-Wl,--no-whole-archive"],
        );
        link(
            &cublas.join("libcublas.so.13"),
            &[emu.join("fake_cublas.cpp").to_str().unwrap()],
            &[driver.join("libcuda.so.1").to_str().unwrap(), "-Wl,-rpath,$ORIGIN/../driver"],
        );
        for (dir, versioned, plain) in
            [(&driver, "libcuda.so.1", "libcuda.so"), (&cublas, "libcublas.so.13", "libcublas.so")]
        {
            let _ = fs::remove_file(dir.join(plain));
            std::os::unix::fs::symlink(versioned, dir.join(plain)).expect("linking the unversioned name");
        }
        println!("cargo:rustc-env=RESNET_MNIST_FAKE_CUDA={}", fakes.display());
    }

    /// Compiles and links one shared library named (and sonamed) after `path`.
    fn link(path: &Path, sources: &[&str], libs: &[&str]) {
        let compiler = cpp_build().get_compiler();
        let soname = path.file_name().unwrap().to_str().unwrap();
        let status = Command::new(compiler.path())
            .args(compiler.args())
            .args(["-shared", "-fvisibility=hidden", "-fvisibility-inlines-hidden", "-Wl,--exclude-libs,ALL", "-o"])
            .arg(path)
            .arg(format!("-Wl,-soname,{soname}"))
            .args(sources)
            .args(libs)
            .status()
            .unwrap_or_else(|e| panic!("running the C++ compiler for {soname}: {e}"));
        assert!(status.success(), "building the fake {soname} failed");
    }
}
