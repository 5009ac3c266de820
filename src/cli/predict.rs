//! `predict`: the digit in each picture, and the ten probabilities.

use std::io::Write;

use anyhow::Result;
use resnet_mnist::backend::Backend;
use resnet_mnist::checkpoint;
use resnet_mnist::data::IMAGE_PIXELS;
use resnet_mnist::digit;
use resnet_mnist::inference::{self, argmax};
use resnet_mnist::model::Model;
use resnet_mnist::train::EVAL_BATCH;

use super::args::PredictArgs;

pub fn predict<B: Backend>(backend: B, args: &PredictArgs) -> Result<()> {
    let (net, checkpoint) = checkpoint::load_net(&args.checkpoint)?;
    let loaded: Vec<Result<[u8; IMAGE_PIXELS], digit::DigitError>> =
        args.images.iter().map(|p| digit::load(p)).collect();
    let images: Vec<[u8; IMAGE_PIXELS]> = loaded.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    let mut model = Model::new(backend, net, &checkpoint.params, images.len().clamp(1, EVAL_BATCH));
    let mut probabilities = inference::probabilities(&mut model, &images).into_iter();
    model.backend.failure()?;
    // Each picture gets its line, in order: a bad one hides none of the others.
    let mut out = std::io::stdout().lock();
    for (path, image) in args.images.iter().zip(&loaded) {
        match (image, args.json) {
            (Ok(_), json) => {
                let p = probabilities.next().expect("one result per image read");
                let class = argmax(&p);
                if json {
                    writeln!(out, "{}", serde_json::json!({ "image": path, "class": class, "probabilities": p }))?;
                } else {
                    let probs: Vec<String> = p.iter().map(|v| format!("{v:.3}")).collect();
                    writeln!(out, "{}: {class} ({:.1} %)  [{}]", path.display(), 100.0 * p[class], probs.join(" "))?;
                }
            }
            (Err(e), true) => writeln!(out, "{}", serde_json::json!({ "image": path, "error": e.to_string() }))?,
            (Err(e), false) => {
                out.flush()?;
                eprintln!("error: {e}");
            }
        }
    }
    let failed = loaded.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} pictures could not be read", loaded.len());
    }
    Ok(())
}
