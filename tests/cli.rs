//! The command line, end to end: train into a run directory, resume, eval a checkpoint,
//! predict images, write samples, and the error messages of bad input.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

mod common;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The tiny data set these tests train on, in `dir` (created if needed).
fn write_dataset(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    common::write_dataset(dir, 120, 40);
}

/// `resnet-mnist <sub>` on the data in `data`, with two threads.
fn cmd(sub: &str, data: &Path) -> Command {
    let mut cmd = Command::cargo_bin("resnet-mnist").unwrap();
    cmd.args([sub, "--threads", "2", "--offline", "--device", "cpu", "--data-dir"]).arg(data).env("RUST_LOG", "error");
    cmd
}

#[test]
fn train_resume_eval_and_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    write_dataset(&data);
    let train = |extra: &[&str]| {
        let mut c = cmd("train", &data);
        c.args(["--epochs", "2", "--batch-size", "32", "--quiet"]).args(extra);
        c
    };
    train(&["--out", run.to_str().unwrap()])
        .assert()
        .success()
        .stdout(contains("Accuracy on test set").and(contains("Best")));
    for file in [
        "last.safetensors",
        "best.safetensors",
        "train_state.safetensors",
        "metrics.csv",
        "accuracy.png",
        "accuracy.svg",
        "loss.png",
        "loss.svg",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    for plot in ["accuracy.png", "loss.png"] {
        let image = image::open(run.join(plot)).unwrap();
        assert_eq!((image.width(), image.height()), (800, 500), "{plot}");
    }
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(
        csv.starts_with("epoch,train_loss,test_loss,test_accuracy,seconds,images_per_s\n") && csv.lines().count() == 3,
        "{csv}"
    );

    train(&["--out", run.to_str().unwrap()]).assert().failure().stderr(contains("already holds a training run"));
    train(&["--resume", run.to_str().unwrap()]).assert().success().stdout(contains("Resuming at epoch 3"));
    train(&["--resume", tmp.path().to_str().unwrap()]).assert().failure().stderr(contains("cannot resume"));

    let plot = tmp.path().join("confusion");
    cmd("eval", &data)
        .arg("--checkpoint")
        .arg(run.join("best.safetensors"))
        .arg("--plot")
        .arg(&plot)
        .assert()
        .success()
        .stdout(contains("class 9:").and(contains("confusion matrix")).and(contains("(epoch")));
    assert!(plot.with_extension("png").is_file() && plot.with_extension("svg").is_file());

    let samples = tmp.path().join("samples");
    cmd("samples", &data).args(["--count", "3", "--out"]).arg(&samples).assert().success();
    assert_eq!(std::fs::read_dir(&samples).unwrap().count(), 3);
    assert!(samples.join("00001-label1.png").is_file());
}

#[test]
fn eval_reports_bad_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    write_dataset(data);
    let truncated = data.join("truncated.safetensors");
    std::fs::write(&truncated, &std::fs::read(fixture("pytorch_state_dict.safetensors")).unwrap()[..1000]).unwrap();
    let eval = |path: &Path| cmd("eval", data).arg("--checkpoint").arg(path).assert().failure();
    eval(&truncated).stderr(contains("truncated.safetensors").and(contains("not a valid safetensors file")));
    eval(&data.join("absent.safetensors")).stderr(contains("absent.safetensors: cannot read"));
    eval(&fixture("pytorch_logits.safetensors")).stderr(contains("missing tensor"));
}

/// Predictions of the committed checkpoint on committed test-set digits, as text and JSON.
#[test]
fn predict_recognizes_test_digits() {
    let digits: Vec<PathBuf> = std::fs::read_dir(fixture("digits")).unwrap().map(|e| e.unwrap().path()).collect();
    let label = |p: &Path| p.file_stem().unwrap().to_str().unwrap().rsplit("label").next().unwrap().parse::<u64>().ok();
    let output = Command::cargo_bin("resnet-mnist")
        .unwrap()
        .args(["predict", "--threads", "2", "--json", "--checkpoint"])
        .arg(fixture("trained.safetensors"))
        .args(&digits)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), digits.len());
    let right = digits.iter().zip(&lines).filter(|(p, v)| v["class"].as_u64() == label(p)).count();
    assert!(right * 10 >= digits.len() * 8, "only {right} of {} right", digits.len());
    let sum: f64 = lines[0]["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4);
}

/// A dark digit on a light, large, JPEG-compressed picture is still recognized.
#[test]
fn predict_handles_dark_on_light_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let source = fixture("digits/00000-label7.png");
    let mut digit = image::open(&source).unwrap().to_luma8();
    image::imageops::invert(&mut digit);
    let big = image::imageops::resize(&digit, 150, 200, image::imageops::FilterType::Triangle);
    let path = tmp.path().join("seven.jpg");
    big.save(&path).unwrap();
    Command::cargo_bin("resnet-mnist")
        .unwrap()
        .args(["predict", "--threads", "2", "--checkpoint"])
        .arg(fixture("trained.safetensors"))
        .arg(&path)
        .assert()
        .success()
        .stdout(contains("seven.jpg: 7 ("));
}

#[test]
fn predict_reports_bad_images() {
    let tmp = tempfile::tempdir().unwrap();
    let (text, blank) = (tmp.path().join("notes.png"), tmp.path().join("blank.png"));
    std::fs::write(&text, "not an image").unwrap();
    image::GrayImage::from_pixel(40, 40, image::Luma([255])).save(&blank).unwrap();
    let predict = |path: &Path| {
        let mut c = Command::cargo_bin("resnet-mnist").unwrap();
        c.args(["predict", "--checkpoint"]).arg(fixture("trained.safetensors")).arg(path).assert().failure()
    };
    predict(&text).stderr(contains("notes.png: cannot read the image"));
    predict(&blank).stderr(contains("blank.png: the image is blank"));
    Command::cargo_bin("resnet-mnist")
        .unwrap()
        .args(["predict", "--checkpoint", "x.safetensors"])
        .assert()
        .failure()
        .stderr(contains("IMAGE"));
}

#[test]
fn compare_trains_each_network_and_writes_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("compare"));
    write_dataset(&data);
    let compare = |epochs: &str, test: &str| {
        let mut c = cmd("compare", &data);
        c.args(["--blocks", "original,conv-shortcut", "--depths", "1,2", "--epochs", epochs, "--quiet"])
            .args(["--train-subset", "64", "--test-subset", test, "--grad-norms", "1", "--out"])
            .arg(&out);
        c
    };
    compare("1", "20")
        .assert()
        .success()
        .stdout(contains("(64 train / 20 test)").and(contains("| conv-shortcut | 2 |")));
    let table = std::fs::read_to_string(out.join("compare.md")).unwrap();
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| original") || l.starts_with("| conv")).collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(out.join("accuracy.png").is_file() && out.join("accuracy.svg").is_file());
    for run in ["original-d1", "conv-shortcut-d1", "original-d2", "conv-shortcut-d2"] {
        for file in ["last.safetensors", "metrics.csv", "grad_norms.csv", "grad_norms.png"] {
            assert!(out.join(run).join(file).is_file(), "{run}/{file} missing");
        }
    }
    let norms = std::fs::read_to_string(out.join("conv-shortcut-d2/grad_norms.csv")).unwrap();
    assert!(norms.lines().next().unwrap().contains(",stage2.1.shortcut.weight,"), "{norms}");
    assert_eq!(norms.lines().count(), 1 + 1, "one step per epoch of 64 at batch 64: {norms}");

    // The checkpoint says which network it holds.
    cmd("eval", &data)
        .arg("--checkpoint")
        .arg(out.join("conv-shortcut-d2/last.safetensors"))
        .assert()
        .success()
        .stdout(contains("conv-shortcut, depth 2"));

    // Run again, the finished runs are kept; with another recipe, the directory is refused.
    compare("1", "20").assert().success().stdout(contains("Accuracy on test set").not());
    compare("2", "20")
        .assert()
        .failure()
        .stderr(contains("original-d1 holds a run").and(contains("pick another --out")));
    compare("1", "30")
        .assert()
        .failure()
        .stderr(contains("holds a comparison on mnist (64 train / 20 test), not mnist (64 train / 30 test)"));
}

#[test]
fn bad_variant_flags_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    cmd("compare", tmp.path()).args(["--blocks", "original,resnext"]).assert().failure().stderr(contains("resnext"));
    cmd("compare", tmp.path()).args(["--depths", "1,0"]).assert().failure().stderr(contains("0 is outside 1..=64"));
    cmd("train", tmp.path()).args(["--depth", "65"]).assert().failure().stderr(contains("65 is outside 1..=64"));
    // A checkpoint records its own network.
    cmd("eval", tmp.path())
        .args(["--depth", "2", "--checkpoint"])
        .arg(fixture("trained.safetensors"))
        .assert()
        .failure()
        .stderr(contains("'--checkpoint <PATH>' cannot be used with"));
}

#[test]
fn a_diverging_run_stops_naming_the_epoch_and_batches_and_saves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    write_dataset(&data);
    cmd("train", &data)
        .args(["--epochs", "2", "--batch-size", "32", "--lr", "3e38", "--momentum", "0.9", "--quiet", "--out"])
        .arg(&run)
        .timeout(std::time::Duration::from_secs(120))
        .assert()
        .failure()
        .stderr(
            contains("training diverged in epoch 1: the mean loss of batches 1 to 4 is")
                .and(contains("holds no saved state"))
                .and(contains("a lower --lr than 3e38")),
        );
    assert!(!run.join("train_state.safetensors").exists() && !run.join("last.safetensors").exists());
}

/// `--resume DIR --epochs N` extends a finished run to N epochs, to the numbers of a run
/// started with N; fewer epochs than are done is an error saying so.
#[test]
fn resume_with_more_epochs_extends_a_finished_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let train = |args: &[&str]| {
        let out = cmd("train", &data).args(["--batch-size", "32", "--quiet"]).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (short, long) = (tmp.path().join("short"), tmp.path().join("long"));
    let (short, long) = (short.to_str().unwrap(), long.to_str().unwrap());
    assert!(train(&["--epochs", "1", "--out", short]).0);
    let (ok, extended, stderr) = train(&["--resume", short, "--epochs", "3"]);
    assert!(ok, "{stderr}");
    let (ok, whole, _) = train(&["--epochs", "3", "--out", long]);
    assert!(ok);
    let summary = |out: &str| out.lines().find(|l| l.starts_with('[')).map(str::to_string);
    assert_eq!(summary(&extended), summary(&whole), "extended:\n{extended}\nwhole:\n{whole}");
    assert_eq!(summary(&extended).unwrap().matches(',').count(), 2, "three epochs: {extended}");
    let (ok, _, stderr) = train(&["--resume", short, "--epochs", "2"]);
    assert!(!ok);
    assert!(stderr.contains("--epochs 2: the run in") && stderr.contains("has already trained 3 epochs"), "{stderr}");
}

/// A training run into `run` that would go on for 100,000 epochs, once its first epoch is
/// reported; and the rest of its output lines.
fn endless_run(data: &Path, run: &Path) -> (std::process::Child, impl Iterator<Item = String>) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_resnet-mnist"))
        .args(["train", "--threads", "1", "--offline", "--device", "cpu", "--quiet", "--batch-size", "32"])
        .args(["--epochs", "100000", "--data-dir"])
        .arg(data)
        .arg("--out")
        .arg(run)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map(Result::unwrap);
    assert!(lines.by_ref().any(|l| l.starts_with("Accuracy on test set")), "no epoch finished");
    (child, lines)
}

/// Through the shell's own `kill`, which every system has.
fn kill(signal: &str, child: &std::process::Child) {
    let status = std::process::Command::new("sh").arg("-c").arg(format!("kill -{signal} {}", child.id())).status();
    assert!(status.unwrap().success(), "kill -{signal}");
}

/// SIGINT, SIGTERM and SIGHUP each stop a run after the step in flight with a resumable save
/// and the exit status 128 + signal; the run then resumes.
#[test]
fn every_stop_signal_saves_and_exits_with_its_status() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    for (signal, status) in [("INT", 130), ("TERM", 143), ("HUP", 129)] {
        let run = tmp.path().join(signal);
        let (mut child, lines) = endless_run(&data, &run);
        kill(signal, &child);
        let rest: Vec<String> = lines.collect();
        let code = child.wait().unwrap().code();
        assert_eq!(code, Some(status), "SIG{signal}: {rest:?}");
        assert!(rest.iter().any(|l| l.starts_with("Stopped in epoch")), "SIG{signal}: {rest:?}");
        assert!(run.join("train_state.safetensors").exists());
        let stopped = rest.iter().find_map(|l| l.strip_prefix("Stopped in epoch ")).expect("a stop line");
        let epoch = stopped.split(' ').next().unwrap();
        // The epoch it stopped in, finished on resume.
        let resume = cmd("train", &data).args(["--quiet", "--epochs", epoch, "--resume"]).arg(&run).output().unwrap();
        assert!(resume.status.success(), "SIG{signal}: {}", String::from_utf8_lossy(&resume.stderr));
    }
}

/// A second run into a directory another process is training in is refused with a message
/// naming that process, and writes nothing; temporary files a killed run left are removed
/// when a run takes the directory.
#[test]
fn a_run_directory_has_one_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    write_dataset(&data);
    let (mut first, mut lines) = endless_run(&data, &run);
    // The state of the first epoch is saved once the second one is reported.
    assert!(lines.any(|l| l.starts_with("Accuracy on test set")));
    let holder = format!("in use by another run (process {} holds .lock)", first.id());
    for args in [&["--epochs", "1", "--out"][..], &["--resume"][..]] {
        cmd("train", &data).args(["--quiet"]).args(args).arg(&run).assert().failure().stderr(contains(holder.as_str()));
    }
    kill("TERM", &first);
    assert_eq!(first.wait().unwrap().code(), Some(143));

    let stale = run.join(".resnet-mnist-tmpAbC123");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    cmd("train", &data)
        .args(["--quiet", "--epochs", "100000", "--resume"])
        .arg(&run)
        .timeout(std::time::Duration::from_secs(2))
        .assert()
        .interrupted();
    assert!(!stale.exists(), "the stale temporary file is still there");
}

/// One unreadable picture among good ones: every good one still gets its prediction, in
/// order, the bad ones an error each (a truncated JPEG among them), and the exit is non-zero.
#[test]
fn predict_reports_each_picture_and_fails_if_any_did() {
    let tmp = tempfile::tempdir().unwrap();
    let seven = fixture("digits/00000-label7.png");
    let jpeg = tmp.path().join("seven.jpg");
    image::open(&seven).unwrap().to_luma8().save(&jpeg).unwrap();
    let bytes = std::fs::read(&jpeg).unwrap();
    let cut = tmp.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let missing = tmp.path().join("missing.png");
    let output = Command::cargo_bin("resnet-mnist")
        .unwrap()
        .args(["predict", "--threads", "2", "--checkpoint"])
        .arg(fixture("trained.safetensors"))
        .args([&seven, &cut, &jpeg, &missing])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].contains("00000-label7.png: 7 (") && lines[1].contains("seven.jpg: 7 ("), "{stdout}");
    assert!(stderr.contains("cut.jpg: the JPEG is truncated"), "{stderr}");
    assert!(stderr.contains("missing.png: cannot read: No such file"), "{stderr}");
    assert!(stderr.contains("error: 2 of 4 pictures could not be read"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "the cause once: {stderr}");
}

/// The small things users hit: logs without colour codes when not on a terminal; each cause
/// said once; the recipe in words; `eval` writes nothing unless asked; flag values that are
/// adjusted say so.
#[test]
fn messages_are_plain_said_once_and_adjustments_are_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    write_dataset(&data);
    let stderr = |c: &mut Command| String::from_utf8(c.env_remove("RUST_LOG").output().unwrap().stderr).unwrap();

    let missing = tmp.path().join("nowhere");
    let err = stderr(cmd("train", &data).arg("--resume").arg(&missing));
    assert!(!err.contains('\u{1b}'), "colour codes in piped stderr: {err:?}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");

    cmd("train", &data).args(["--epochs", "1", "--batch-size", "32", "--quiet", "--out"]).arg(&run).assert().success();
    let err = stderr(cmd("train", &data).args(["--quiet", "--lr", "0.5", "--resume"]).arg(&run));
    assert!(
        err.contains("the saved recipe (1 epoch, batch 32, sgd lr 0.01 momentum 0.5, constant schedule, seed 0)"),
        "{err}"
    );
    assert!(!err.contains("Recipe {"), "{err}");

    let before = std::fs::read_dir(&run).unwrap().count();
    cmd("eval", &data).arg("--checkpoint").arg(run.join("best.safetensors")).assert().success();
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), before, "eval wrote a file beside the checkpoint");

    let err =
        stderr(cmd("bench", &data).args(["--steps", "1", "--repeats", "1", "--batch-size", "16", "--eval-batch", "8"]));
    assert!(err.contains("--eval-batch 8: the eval pass runs batches of 16"), "{err}");
    let out = tmp.path().join("compare");
    let mut compare = cmd("compare", &data);
    compare
        .args(["--blocks", "plain", "--depths", "1", "--epochs", "1", "--train-subset", "1000000", "--out"])
        .arg(&out);
    let err = stderr(&mut compare);
    assert!(err.contains("--train-subset 1000000: there are only 120 examples, and all of them are used"), "{err}");
}

/// A batch the host cannot hold is refused up front, saying how much it needs and how much
/// there is, instead of the allocator aborting mid-setup; a batch larger than the data set
/// is refused by `bench`, which times whole batches.
#[test]
fn batch_sizes_that_cannot_be_honoured_are_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let available_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / f64::from(1u32 << 20));
    // 65536 examples of a 64-deep network need about 96 GiB.
    if available_gib.is_some_and(|gib| gib < 90.0) {
        cmd("train", &data)
            .args(["--batch-size", "65536", "--depth", "64", "--epochs", "1", "--out"])
            .arg(tmp.path().join("run"))
            .timeout(std::time::Duration::from_secs(30))
            .assert()
            .failure()
            .stderr(contains("--batch-size 65536 needs 96.5 GiB of memory").and(contains("GiB are available")));
        assert!(!tmp.path().join("run").exists(), "nothing is created for a run that cannot start");
    }
    cmd("bench", &data)
        .args(["--batch-size", "500", "--steps", "1"])
        .assert()
        .failure()
        .stderr(contains("--batch-size 500: the data set has only 120 training examples"));
}

#[test]
fn a_preset_prints_in_full_and_later_flags_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    write_dataset(&data);
    cmd("train", &data)
        .args(["--recipe", "fast", "--lr", "2e-3", "--augment", "shift", "--max-shift", "3", "--quiet", "--out"])
        .arg(&run)
        .assert()
        .success()
        .stdout(contains(
            "1 epoch, batch 64, adamw lr 0.002 betas (0.9, 0.999) eps 1e-8 weight decay 1e-4, onecycle schedule, \
             label smoothing 0.1, shift augmentation (±3 px), seed 0",
        ));
    // A one-cycle run cannot be stretched: its schedule was laid over its own length.
    cmd("train", &data)
        .args(["--epochs", "2", "--quiet", "--resume"])
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("follows a onecycle schedule over its 1 epoch"));
}

#[test]
fn bad_recipe_flags_are_rejected_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    for (flags, reason) in [
        (&["--label-smoothing", "1.5"][..], "outside [0, 1)"),
        (&["--weight-decay", "-1"], "not a non-negative finite number"),
        (&["--betas", "0.9"], "0.9 is not two numbers B1,B2"),
        (&["--betas", "0.9,1"], "1 is outside [0, 1)"),
        (&["--optimizer", "lion"], "lion"),
        (&["--recipe", "fastest"], "fastest"),
        (&["--max-shift", "0"], "0"),
    ] {
        cmd("train", tmp.path()).args(flags).assert().code(2).stderr(contains(reason));
    }
}

#[test]
fn compare_trains_each_recipe_and_reports_the_time_to_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("compare"));
    write_dataset(&data);
    cmd("compare", &data)
        .args(["--recipes", "reference,fast", "--epochs", "2", "--target", "1", "--quiet", "--out"])
        .arg(&out)
        .assert()
        .success()
        .stdout(
            contains("recipes reference: 2 epochs, batch 64, sgd").and(contains("fast: 2 epochs, batch 64, adamw")),
        );
    let table = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(table.contains("training s to 1 %"), "{table}");
    for recipe in ["reference", "fast"] {
        let row = table.lines().find(|l| l.starts_with(&format!("| original | 1 | {recipe} |"))).expect(recipe);
        // Any network beats 1 % in its first epoch: the time column holds its seconds.
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[7], "1", "{row}");
        assert!(cells[8].parse::<f64>().is_ok(), "{row}");
        assert!(out.join(format!("{recipe}-original-d1/last.safetensors")).is_file());
    }
}
