//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod reference64;

use resnet_mnist::backend::Backend;
use resnet_mnist::model::Model;
use resnet_mnist::session::{self, Outcome, Session};
use resnet_mnist::train::{DeviceSplit, EpochReport, Recipe};

/// Trains `model` through the real session loop, in a throw-away run directory.
pub fn train_run<B: Backend>(
    model: &mut Model<B>,
    train: &DeviceSplit<B>,
    test: &DeviceSplit<B>,
    recipe: Recipe,
) -> Vec<EpochReport> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut session = Session::create(dir.path(), recipe, model.net.arch).expect("run directory");
    let outcome = session::run(&mut session, model, train, test, &|| false, &mut |_| {}).expect("training");
    assert!(matches!(outcome, Outcome::Finished));
    session.state.history
}
