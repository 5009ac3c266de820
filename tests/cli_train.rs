//! The command line as a user meets it: flags, errors and the output of train, eval and bench.

use assert_cmd::Command;
use predicates::prelude::*;

fn cli() -> Command {
    let mut cmd = Command::cargo_bin("resnet-mnist").expect("the binary is built");
    cmd.env_remove("MNIST_DIR").env_remove("FASHION_MNIST_DIR").env("RESNET_MNIST_OFFLINE", "1");
    cmd
}

fn mnist_dir() -> Option<std::ffi::OsString> {
    let dir = std::env::var_os("MNIST_DIR");
    if dir.is_none() {
        eprintln!("note: MNIST_DIR is not set; skipping a test that needs real MNIST");
    }
    dir
}

#[test]
fn missing_data_offline_names_the_directory_and_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nowhere");
    cli()
        .args(["train", "--epochs", "1", "--data-dir"])
        .arg(&missing)
        .assert()
        .failure()
        .stderr(predicate::str::contains("nowhere").and(predicate::str::contains("train-images-idx3-ubyte")));
}

#[test]
fn bad_flag_values_are_rejected_with_the_reason() {
    for (flag, value, reason) in [
        ("--lr", "-1", "not a positive finite number"),
        ("--lr", "abc", "not a number"),
        ("--momentum", "1.5", "outside [0, 1)"),
        ("--batch-size", "0", "0"),
        ("--epochs", "0", "0"),
        ("--device", "tpu", "tpu"),
        ("--dataset", "cifar", "cifar"),
    ] {
        cli().args(["train", flag, value]).assert().code(2).stderr(predicate::str::contains(reason));
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn device_cuda_without_the_feature_says_how_to_rebuild() {
    cli().args(["train", "--device", "cuda"]).assert().failure().stderr(predicate::str::contains("--features cuda"));
}

#[test]
fn eval_reports_the_accuracy_of_fresh_weights() {
    let Some(dir) = mnist_dir() else { return };
    cli().env("MNIST_DIR", dir).args(["eval", "--seed", "3"]).assert().success().stdout(
        predicate::str::is_match(r"Accuracy on test set: \d+\.\d\d % \(\d+ / 10000\), test loss 2\.\d+").unwrap(),
    );
}

#[test]
fn bench_prints_one_json_line() {
    let Some(dir) = mnist_dir() else { return };
    cli()
        .env("MNIST_DIR", dir)
        .args(["bench", "--steps", "3", "--repeats", "1", "--eval-batch", "2000", "--json"])
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(
                r#"^\{"device":"cpu \(\d+ threads?, (AVX2\+FMA(, AVX-512F)?|portable)\)",.*"train_images_per_s":[0-9.]+,.*\}\n$"#,
            )
            .unwrap(),
        );
}
