//! A load check of `serve` on loopback: `REQUESTS` predictions of one picture from `CLIENTS`
//! concurrent clients, each waiting for its answer before sending the next; prints errors,
//! requests/s and latency percentiles.
//!
//! ```sh
//! resnet-mnist serve --checkpoint runs/<run>/best.safetensors &
//! cargo run --release --example serve_load -- http://127.0.0.1:8080 tests/fixtures/digits/00000-label7.png
//! ```

use std::time::{Duration, Instant};

const REQUESTS: usize = 10_000;
const CLIENTS: usize = 16;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(base), Some(picture)) = (args.next(), args.next()) else {
        eprintln!("usage: serve_load BASE_URL PICTURE.png");
        std::process::exit(2);
    };
    let body = std::fs::read(&picture).unwrap_or_else(|e| panic!("cannot read {picture}: {e}"));
    let url = format!("{base}/predict");
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, usize)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (url, body) = (&url, &body);
                scope.spawn(move || {
                    let agent = ureq::Agent::new_with_defaults();
                    let (mut latencies, mut errors) = (Vec::new(), 0);
                    for _ in (client..REQUESTS).step_by(CLIENTS) {
                        let sent = Instant::now();
                        let ok = agent
                            .post(url)
                            .header("Content-Type", "image/png")
                            .send(&body[..])
                            .and_then(|mut r| r.body_mut().read_to_string())
                            .is_ok_and(|text| text.starts_with("{\"digit\""));
                        latencies.push(sent.elapsed());
                        errors += usize::from(!ok);
                    }
                    (latencies, errors)
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().expect("a client thread")).collect()
    });
    let elapsed = started.elapsed();
    let errors: usize = results.iter().map(|r| r.1).sum();
    let mut latencies: Vec<Duration> = results.into_iter().flat_map(|r| r.0).collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "{} requests from {CLIENTS} clients in {:.2} s: {errors} errors, {:.0} requests/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
    if errors > 0 {
        std::process::exit(1);
    }
}
