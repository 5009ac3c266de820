//! `serve`: a page to draw a digit on and watch the network read it, and a JSON API.
//!
//! The HTTP side runs on tokio's threads; the model stays on the thread that called
//! [`serve`], which runs every forward pass. Requests reach it through a channel, and what
//! waits there when it turns to the channel goes through the network as one batch, so
//! concurrent requests share forward passes instead of queueing for one each.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use resnet_mnist::backend::Backend;
use resnet_mnist::checkpoint;
use resnet_mnist::data::{CLASSES, IMAGE_PIXELS};
use resnet_mnist::digit::{self, PictureLimits};
use resnet_mnist::inference::{self, argmax};
use resnet_mnist::model::Model;
use resnet_mnist::session;
use resnet_mnist::train::Recipe;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::args::ServeArgs;

/// The largest request body: a photo of a digit is well under it.
const MAX_BODY: usize = 4 << 20;
/// Uploaded pictures: at most 4096 pixels a side, and what decoding one needs.
const UPLOADS: PictureLimits = PictureLimits { max_side: 4096, max_alloc: 96 << 20 };
/// Images one forward pass takes at most.
const MAX_BATCH: usize = 64;
/// Requests waiting for the model at most; more get 503 rather than an ever longer wait.
const QUEUE: usize = 1024;

const PAGE: &str = include_str!("../assets/serve.html");

/// One image for the model, and where its probabilities go.
struct Job {
    image: [u8; IMAGE_PIXELS],
    reply: oneshot::Sender<[f32; CLASSES]>,
}

#[derive(Clone)]
struct App {
    jobs: mpsc::Sender<Job>,
    model: Arc<ModelInfo>,
}

/// `GET /model`: what is loaded.
#[derive(Serialize)]
struct ModelInfo {
    checkpoint: String,
    block: String,
    depth: usize,
    parameters: usize,
    /// The epoch and test accuracy the checkpoint records (absent in a PyTorch file).
    epoch: Option<u32>,
    test_accuracy: Option<f64>,
    recipe: Option<String>,
}

#[derive(Serialize)]
struct Prediction {
    digit: usize,
    probabilities: [f32; CLASSES],
    /// The 28×28 image the network saw, row by row, 0 (black) to 255 (ink).
    image: Vec<u8>,
}

/// `POST /predict` with a JSON body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pixels {
    /// 784 values, row by row, 0 (background) to 1 (ink), as MNIST's are after `/255`.
    pixels: Vec<f32>,
}

/// An error answer: a status and a message, sent as `{"error": message}`.
struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError(status, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

pub fn serve<B: Backend>(backend: B, args: &ServeArgs) -> Result<()> {
    let (net, checkpoint) = checkpoint::load_net(&args.checkpoint)?;
    let path = &args.checkpoint;
    let recipe = match checkpoint.metadata.get(session::META_RECIPE) {
        Some(json) => Some(
            serde_json::from_str::<Recipe>(json)
                .with_context(|| format!("{}: metadata {}: not a recipe", path.display(), session::META_RECIPE))?,
        ),
        None => None,
    };
    let info = ModelInfo {
        checkpoint: args.checkpoint.display().to_string(),
        block: net.arch.block.to_string(),
        depth: net.arch.depth,
        parameters: net.layout.total,
        epoch: checkpoint.meta(path, session::META_EPOCH)?,
        test_accuracy: checkpoint.meta(path, session::META_ACCURACY)?,
        recipe: recipe.map(|r| r.to_string()),
    };
    let mut model = Model::new(backend, net, &checkpoint.params, MAX_BATCH);
    let (jobs, queue) = mpsc::channel(QUEUE);
    let app = App { jobs, model: Arc::new(info) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.addr))
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr().context("cannot read the listening address")?;
    announce(addr, &app.model);
    let server = runtime
        .spawn(async move { axum::serve(listener, router(app)).with_graceful_shutdown(shutdown_signal()).await });
    answer(&mut model, queue)?;
    runtime.block_on(server).context("the server task failed")?.context("the server failed")?;
    tracing::info!("stopped");
    Ok(())
}

fn announce(addr: SocketAddr, model: &ModelInfo) {
    let accuracy = model.test_accuracy.map_or(String::new(), |a| format!(", {a:.2} % on the test set"));
    tracing::info!("loaded {} ({} blocks, depth {}{accuracy})", model.checkpoint, model.block, model.depth);
    if addr.ip().is_loopback() {
        tracing::info!("serving on http://{addr} (this machine only); Ctrl-C stops");
    } else {
        tracing::warn!("serving on http://{addr}, reachable from other machines (--addr); Ctrl-C stops");
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/model", get(|State(app): State<App>| async move { Json(&*app.model).into_response() }))
        .route("/predict", post(predict))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such page: try GET /, GET /model or POST /predict")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "wrong method: GET / and /model, POST /predict")
        })
        // The body is read with its own limit in `predict`, to answer in JSON.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

async fn predict(State(app): State<App>, headers: HeaderMap, body: Body) -> Result<Json<Prediction>, ApiError> {
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body exceeds {} MiB", MAX_BODY >> 20));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_BODY) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| too_large())?;
    let image = match content_type(&headers).as_deref() {
        Some("image/png" | "image/jpeg") => decode_picture(bytes).await?,
        Some("application/json") => pixels(&bytes)?,
        other => {
            let got = other.map_or("no Content-Type".into(), |t| format!("Content-Type {t}"));
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{got}: send image/png, image/jpeg, or application/json with {{\"pixels\": [784 values in 0..1]}}"
                ),
            ));
        }
    };
    let (reply, answer) = oneshot::channel();
    let busy = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model is busy or stopping: try again");
    app.jobs.try_send(Job { image, reply }).map_err(|_| busy())?;
    let probabilities = answer.await.map_err(|_| busy())?;
    Ok(Json(Prediction { digit: argmax(&probabilities), probabilities, image: image.to_vec() }))
}

/// The media type without its parameters, lower-cased.
fn content_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// Decodes and fits a picture off the async threads: a large one takes a while.
async fn decode_picture(bytes: Bytes) -> Result<[u8; IMAGE_PIXELS], ApiError> {
    let decoded = tokio::task::spawn_blocking(move || digit::decode(&bytes, UPLOADS)).await;
    let decoded =
        decoded.map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "decoding the picture failed"))?;
    decoded.map_err(|e| {
        let status = match e {
            digit::PictureError::Blank => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, format!("the picture: {e}"))
    })
}

/// A fitted 28×28 image from `{"pixels": [...]}`.
fn pixels(bytes: &[u8]) -> Result<[u8; IMAGE_PIXELS], ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let Pixels { pixels } = serde_json::from_slice(bytes).map_err(|e| bad(format!("the JSON body: {e}")))?;
    if pixels.len() != IMAGE_PIXELS {
        return Err(bad(format!("\"pixels\" has {} values, not {IMAGE_PIXELS} (28 × 28, row by row)", pixels.len())));
    }
    if let Some(i) = pixels.iter().position(|v| !(0.0..=1.0).contains(v)) {
        return Err(bad(format!("\"pixels\"[{i}] is {}, outside 0..1", pixels[i])));
    }
    Ok(std::array::from_fn(|i| (pixels[i] * 255.0).round() as u8))
}

/// Runs the model on whatever waits in `queue` until every sender is gone (the server has
/// stopped), up to [`MAX_BATCH`] images a pass.
fn answer<B: Backend>(model: &mut Model<B>, mut queue: mpsc::Receiver<Job>) -> Result<()> {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            let Ok(job) = queue.try_recv() else { break };
            jobs.push(job);
        }
        let images: Vec<[u8; IMAGE_PIXELS]> = jobs.iter().map(|j| j.image).collect();
        let probabilities = inference::probabilities(model, &images);
        model.backend.failure()?;
        for (job, p) in jobs.drain(..).zip(probabilities) {
            // A client that went away no longer waits for its answer.
            let _ = job.reply.send(p);
        }
    }
    Ok(())
}

/// Ctrl-C or SIGTERM: stop accepting, finish what is in flight.
async fn shutdown_signal() {
    let interrupt = async { tokio::signal::ctrl_c().await.ok() };
    #[cfg(unix)]
    let terminate = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()?;
        term.recv().await
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<Option<()>>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("stopping: finishing the requests in flight");
}
