//! `serve` over real HTTP on loopback: the page, the API, every bad request, concurrent
//! clients, and shutting down on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use serde_json::Value;

const CHECKPOINT: &str = "tests/fixtures/trained.safetensors";
const DIGITS: &str = "tests/fixtures/digits";

/// A running `serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
    /// The rest of its log, line by line.
    log: Mutex<mpsc::Receiver<String>>,
}

impl Server {
    fn start(checkpoint: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_resnet-mnist"))
            .args(["serve", "--device", "cpu", "--threads", "2", "--addr", "127.0.0.1:0", "--checkpoint", checkpoint])
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start resnet-mnist serve");
        let log = lines(child.stderr.take().expect("stderr"));
        let line = log.iter().find(|l| l.contains("serving on http://")).expect("serve logs the address it listens on");
        let base = line.split("serving on ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        Server { child, base, log: Mutex::new(log) }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of `stderr` as they come, on a thread of their own.
fn lines(stderr: ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Status and body of a POST.
fn post(server: &Server, content_type: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut request = agent().post(server.url("/predict"));
    if let Some(t) = content_type {
        request = request.header("Content-Type", t);
    }
    let mut response = request.send(body).expect("an HTTP answer");
    (response.status().as_u16(), response.body_mut().read_to_string().expect("a text body"))
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The fixture digits with their labels (from the file names).
fn digits() -> Vec<(Vec<u8>, usize)> {
    let mut files: Vec<_> = std::fs::read_dir(DIGITS).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let label = p.file_stem().unwrap().to_str().unwrap().rsplit("label").next().unwrap().parse().unwrap();
            (std::fs::read(p).unwrap(), label)
        })
        .collect()
}

fn png(width: u32, height: u32, value: u8) -> Vec<u8> {
    let image = image::GrayImage::from_pixel(width, height, image::Luma([value]));
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

#[test]
fn the_page_and_the_model_description() {
    let server = Server::start(CHECKPOINT);
    let mut page = agent().get(server.url("/")).call().unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.body_mut().read_to_string().unwrap();
    for needle in ["<canvas id=\"pad\"", "fetch(\"/predict\"", "pointerdown", "type=\"file\""] {
        assert!(html.contains(needle), "the page has {needle}");
    }
    assert!(!html.contains("http://") && !html.contains("https://"), "the page loads nothing from elsewhere");
    let model = json(&agent().get(server.url("/model")).call().unwrap().body_mut().read_to_string().unwrap());
    assert_eq!(model["block"], "original");
    assert_eq!(model["depth"], 1);
    assert_eq!(model["parameters"], 41514);
    assert_eq!(model["epoch"], 1);
    assert!((model["test_accuracy"].as_f64().unwrap() - 97.54).abs() < 1e-9);
    assert!(model["recipe"].as_str().unwrap().contains("sgd lr 0.01"));
}

#[test]
fn pictures_and_pixels_read_like_predict_does() {
    let server = Server::start(CHECKPOINT);
    let predict = Command::new(env!("CARGO_BIN_EXE_resnet-mnist"))
        .args(["predict", "--device", "cpu", "--json", "--checkpoint", CHECKPOINT])
        .arg(Path::new(DIGITS).join("00000-label7.png"))
        .output()
        .unwrap();
    let expected = json(String::from_utf8(predict.stdout).unwrap().trim());
    let (bytes, label) = digits().remove(0);
    let (status, body) = post(&server, Some("image/png"), &bytes);
    assert_eq!(status, 200, "{body}");
    let answer = json(&body);
    assert_eq!(answer["digit"], label);
    assert_eq!(answer["digit"], expected["class"]);
    for (a, e) in answer["probabilities"].as_array().unwrap().iter().zip(expected["probabilities"].as_array().unwrap())
    {
        assert!((a.as_f64().unwrap() - e.as_f64().unwrap()).abs() < 1e-6, "{a} vs {e}");
    }
    // The fitted image it returns, sent back as pixels, reads the same.
    let image: Vec<f64> = answer["image"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() / 255.0).collect();
    assert_eq!(image.len(), 784);
    let (status, body) =
        post(&server, Some("application/json"), &serde_json::to_vec(&serde_json::json!({ "pixels": image })).unwrap());
    assert_eq!(status, 200, "{body}");
    let again = json(&body);
    assert_eq!(again["digit"], label);
    assert_eq!(again["image"], answer["image"]);
}

/// What a bad request is, its Content-Type and body, and the status and part of the message
/// it should get.
type BadRequest = (&'static str, Option<&'static str>, Vec<u8>, u16, &'static str);

#[test]
fn every_bad_request_gets_a_4xx_with_a_message() {
    let server = Server::start(CHECKPOINT);
    let too_wide = png(5000, 1, 255);
    let digit = std::fs::read(Path::new(DIGITS).join("00000-label7.png")).unwrap();
    let pixels = |v: Value| serde_json::to_vec(&v).unwrap();
    let mut out_of_range = vec![0.0; 784];
    out_of_range[3] = 1.5;
    let cases: Vec<BadRequest> = vec![
        ("no content type", None, b"x".to_vec(), 415, "no Content-Type"),
        ("text", Some("text/plain"), b"7".to_vec(), 415, "Content-Type text/plain"),
        ("not a picture", Some("image/png"), b"hello".to_vec(), 400, "cannot read the image"),
        ("truncated PNG", Some("image/png"), digit[..digit.len() / 2].to_vec(), 400, "cannot read the image"),
        ("blank", Some("image/png"), png(40, 40, 0), 422, "blank"),
        ("too many pixels", Some("image/png"), too_wide, 400, "larger than 4096 pixels a side"),
        ("bad JSON", Some("application/json"), b"{\"pixels\": [".to_vec(), 400, "the JSON body"),
        ("unknown field", Some("application/json"), pixels(serde_json::json!({ "pixel": [0] })), 400, "the JSON body"),
        (
            "short",
            Some("application/json"),
            pixels(serde_json::json!({ "pixels": [0.5, 1] })),
            400,
            "has 2 values, not 784",
        ),
        (
            "out of range",
            Some("application/json"),
            pixels(serde_json::json!({ "pixels": out_of_range })),
            400,
            "[3] is 1.5",
        ),
    ];
    for (what, content_type, body, status, message) in cases {
        let (got, text) = post(&server, content_type, &body);
        assert_eq!(got, status, "{what}: {text}");
        let error = json(&text)["error"].as_str().unwrap_or_else(|| panic!("{what}: no message in {text}")).to_string();
        assert!(error.contains(message), "{what}: {error:?} lacks {message:?}");
    }
    // An upload over the cap is refused from its Content-Length, before its body is read
    // (so the client is cut off mid-send, which is why this one goes over a bare socket).
    let head =
        format!("POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n", 5 << 20);
    let mut socket = std::net::TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    socket.write_all(head.as_bytes()).unwrap();
    let mut answer = vec![0; 4096];
    let n = socket.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("{\"error\":\"the body exceeds 4 MiB\"}"), "{answer}");
    let mut missing = agent().get(server.url("/digits")).call().unwrap();
    assert_eq!(missing.status(), 404);
    assert!(json(&missing.body_mut().read_to_string().unwrap())["error"].as_str().unwrap().contains("no such page"));
    let mut wrong = agent().get(server.url("/predict")).call().unwrap();
    assert_eq!(wrong.status(), 405);
    assert!(json(&wrong.body_mut().read_to_string().unwrap())["error"].as_str().unwrap().contains("POST /predict"));
    // And it still answers.
    assert_eq!(post(&server, Some("image/png"), &digits()[0].0).0, 200);
}

#[test]
fn concurrent_clients_each_get_their_own_answer() {
    let server = Server::start(CHECKPOINT);
    let digits = digits();
    let expected: Vec<Value> =
        digits.iter().map(|(bytes, _)| json(&post(&server, Some("image/png"), bytes).1)).collect();
    std::thread::scope(|scope| {
        for client in 0..16 {
            let (server, digits, expected) = (&server, &digits, &expected);
            scope.spawn(move || {
                for i in 0..20 {
                    let k = (client * 7 + i) % digits.len();
                    let (status, body) = post(server, Some("image/png"), &digits[k].0);
                    assert_eq!(status, 200, "{body}");
                    let answer = json(&body);
                    assert_eq!(answer["digit"], expected[k]["digit"]);
                    for (a, e) in answer["probabilities"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .zip(expected[k]["probabilities"].as_array().unwrap())
                    {
                        assert!((a.as_f64().unwrap() - e.as_f64().unwrap()).abs() < 1e-5, "{a} vs {e}");
                    }
                }
            });
        }
    });
}

#[cfg(unix)]
#[test]
fn sigterm_stops_it_cleanly() {
    let mut server = Server::start(CHECKPOINT);
    assert_eq!(post(&server, Some("image/png"), &digits()[0].0).0, 200);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    // The reader thread may forward the last lines after the exit; it ends at end of file.
    let log = server.log.lock().unwrap();
    let rest: Vec<String> = std::iter::from_fn(|| log.recv_timeout(Duration::from_secs(10)).ok()).collect();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}

#[test]
fn a_taken_port_and_a_missing_checkpoint_are_errors_that_say_so() {
    let server = Server::start(CHECKPOINT);
    let addr = server.base.trim_start_matches("http://").to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_resnet-mnist"))
        .args(["serve", "--device", "cpu", "--checkpoint", CHECKPOINT, "--addr", &addr])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_resnet-mnist"))
        .args(["serve", "--device", "cpu", "--checkpoint", "no/such.safetensors"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("no/such.safetensors"), "{stderr}");
}
