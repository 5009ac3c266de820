//! `--device cuda` and `--device auto` as a user runs them, through the release path (cudarc,
//! the driver API, cuBLAS) on the fake driver of `kernels/emu/`, and every start-up failure a
//! user meets, injected through it: `--device auto` falls back to the CPU with one log line
//! saying why, `--device cuda` stops with one clear error and a non-zero exit, never a panic.
#![cfg(feature = "cuda")]

use std::path::Path;

use assert_cmd::Command;

mod common;

fn fake(dir: &str) -> String {
    Path::new(env!("RESNET_MNIST_FAKE_CUDA")).join(dir).display().to_string()
}

/// The fake driver and cuBLAS, then the directories the test process loads libraries from
/// (NVRTC's among them).
fn fake_path() -> Vec<String> {
    let inherited = std::env::var("LD_LIBRARY_PATH").ok().filter(|p| !p.is_empty());
    [fake("driver"), fake("cublas")].into_iter().chain(inherited).collect()
}

/// `resnet-mnist <args>` on the data in `data`, loading libraries from `path` only.
fn run(path: &[String], fault: Option<&str>, data: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::cargo_bin("resnet-mnist").unwrap();
    cmd.args(args).args(["--threads", "2", "--offline", "--data-dir"]).arg(data);
    cmd.env("LD_LIBRARY_PATH", path.join(":")).env("NO_COLOR", "1").env_remove("RUST_LOG");
    match fault {
        Some(fault) => cmd.env("RESNET_MNIST_FAKE_CUDA_FAULT", fault),
        None => cmd.env_remove("RESNET_MNIST_FAKE_CUDA_FAULT"),
    };
    let out = cmd.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn tiny_data() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::write_dataset(dir.path(), 120, 40);
    dir
}

fn accuracy_line(stdout: &str) -> &str {
    stdout.lines().find(|l| l.starts_with("Accuracy on test set")).unwrap_or_else(|| panic!("no accuracy in {stdout}"))
}

#[test]
fn train_on_the_fake_gpu_prints_what_the_cpu_prints() {
    let data = tiny_data();
    let runs = tempfile::tempdir().unwrap();
    let path = fake_path();
    let train = |device: &str| {
        let out = runs.path().join(device);
        let args = ["train", "--device", device, "--epochs", "1", "--batch-size", "32", "--quiet", "--out"];
        run(&path, None, data.path(), &[&args[..], &[out.to_str().unwrap()]].concat())
    };
    let (ok, gpu_out, gpu_err) = train("cuda");
    assert!(ok, "{gpu_out}\n{gpu_err}");
    assert!(gpu_out.contains("on cuda:0 (NVIDIA H100 (fake driver"), "{gpu_out}");
    let (ok, cpu_out, cpu_err) = train("cpu");
    assert!(ok, "{cpu_out}\n{cpu_err}");
    let without_time = |line: &str| line.split("(epoch").next().unwrap().to_string();
    assert_eq!(without_time(accuracy_line(&gpu_out)), without_time(accuracy_line(&cpu_out)));
}

/// Each start-up failure, how it is made, and what the message says of it.
fn faults() -> Vec<(&'static str, Vec<String>, Option<&'static str>, &'static str)> {
    vec![
        ("no device", fake_path(), Some("no-device"), "no CUDA device found"),
        ("no device counted", fake_path(), Some("zero-devices"), "no CUDA device found"),
        ("out of memory", fake_path(), Some("oom"), "CUDA driver: CUDA_ERROR_OUT_OF_MEMORY (out of memory)"),
        (
            "a kernel fails",
            fake_path(),
            Some("launch-failure"),
            "CUDA driver: CUDA_ERROR_LAUNCH_FAILED (unspecified launch failure)",
        ),
        ("no cuBLAS", vec![fake("driver")], None, "cuBLAS (libcublas.so.13 or libcublas.so.12) cannot be loaded"),
        (
            "PTX too new, no NVRTC",
            vec![fake("driver"), fake("cublas")],
            Some("unsupported-ptx"),
            "NVRTC (libnvrtc), which would recompile it for this driver, cannot be loaded",
        ),
    ]
}

#[test]
fn start_up_failures_fall_back_on_auto_and_stop_on_cuda() {
    let data = tiny_data();
    let bench = |device| ["bench", "--device", device, "--steps", "1", "--batch-size", "8", "--eval-batch", "8"];
    for (what, path, fault, message) in faults() {
        let (ok, stdout, stderr) = run(&path, fault, data.path(), &bench("cuda"));
        assert!(!ok, "{what}: --device cuda succeeded:\n{stdout}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{what}: one error expected in\n{stderr}");
        assert!(errors[0].starts_with("error: --device cuda: no usable GPU: "), "{what}: {}", errors[0]);
        assert!(errors[0].contains(message), "{what}: expected `{message}` in {}", errors[0]);
        assert_eq!(stderr.matches(message).count(), 1, "{what}: the cause is repeated in\n{stderr}");

        let (ok, stdout, stderr) = run(&path, fault, data.path(), &bench("auto"));
        assert!(ok, "{what}: --device auto failed:\n{stderr}");
        assert!(stdout.starts_with("cpu ("), "{what}: --device auto did not run on the CPU:\n{stdout}");
        let fallbacks: Vec<&str> = stderr.lines().filter(|l| l.contains("device auto: using the CPU (")).collect();
        assert_eq!(fallbacks.len(), 1, "{what}: one fallback line expected in\n{stderr}");
        assert!(fallbacks[0].contains("no usable GPU: ") && fallbacks[0].contains(message), "{what}: {}", fallbacks[0]);
    }
}

/// A driver that refuses the embedded PTX gets the kernels recompiled for its device by the
/// local NVRTC, and the run goes on.
#[test]
fn refused_ptx_is_recompiled_with_nvrtc() {
    let data = tiny_data();
    let path = fake_path();
    let args =
        ["bench", "--device", "cuda", "--steps", "1", "--batch-size", "8", "--eval-batch", "8", "--repeats", "1"];
    let (ok, stdout, stderr) = run(&path, Some("unsupported-ptx"), data.path(), &args);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("recompiling it with NVRTC"), "{stderr}");
    assert!(stdout.starts_with("cuda:0 (NVIDIA H100 (fake driver"), "{stdout}");
}

/// A kernel that fails in the second epoch (the 300th launch) ends the run with one error
/// that names the GPU and the driver's reason, keeps the state saved after the first epoch,
/// and `--resume` (here on the CPU) finishes the run as if nothing had happened.
#[test]
fn a_gpu_failing_mid_run_stops_cleanly_and_the_run_resumes() {
    let data = tiny_data();
    let runs = tempfile::tempdir().unwrap();
    let path = fake_path();
    let train = |device: &str, dir: &Path, fault: Option<&str>, resume: bool| {
        let dir = dir.to_str().unwrap();
        let args = ["train", "--device", device, "--epochs", "3", "--batch-size", "32", "--quiet"];
        let target = if resume { ["--resume", dir] } else { ["--out", dir] };
        run(&path, fault, data.path(), &[&args[..], &target[..]].concat())
    };
    let (failed, whole_run) = (runs.path().join("failed"), runs.path().join("whole"));
    let (ok, stdout, stderr) = train("cuda", &failed, Some("launch-failure:300"), false);
    assert!(!ok, "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0]
            .contains("(fake driver: kernels emulated on the CPU))) failed: CUDA driver: CUDA_ERROR_LAUNCH_FAILED")
            && errors[0].contains("keeps the state saved before it"),
        "{}",
        errors[0]
    );
    assert_eq!(stdout.matches("Accuracy on test set").count(), 1, "one epoch finished before the failure:\n{stdout}");
    let (ok, resumed, stderr) = train("cpu", &failed, None, true);
    assert!(ok, "{stderr}");
    let (ok, whole, stderr) = train("cuda", &whole_run, None, false);
    assert!(ok, "{stderr}");
    let summary = |out: &str| out.lines().find(|l| l.starts_with('[')).map(str::to_string);
    assert_eq!(summary(&resumed), summary(&whole), "resumed:\n{resumed}\nwhole:\n{whole}");
}
