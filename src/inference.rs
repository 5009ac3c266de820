//! Using a trained model: class probabilities for loose images, and a full test-set report
//! with per-class accuracy and the confusion matrix.

use crate::backend::Backend;
use crate::data::{Split, CLASSES, IMAGE_PIXELS};
use crate::model::Model;
use crate::plot::Confusion;
use crate::train::{evaluate_into, DeviceSplit, Evaluation};

/// Test loss and accuracy with the confusion matrix (rows: true class, columns: predicted).
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub evaluation: Evaluation,
    pub confusion: Confusion,
}

impl Report {
    /// Accuracy in percent of each true class; `None` for a class absent from the split.
    pub fn per_class(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(class, row)| {
                let total: u64 = row.iter().sum();
                (total > 0).then(|| 100.0 * row[class] as f64 / total as f64)
            })
            .collect()
    }
}

/// Logits of every image of `split`, in order, `CLASSES` per image, and its evaluation.
fn logits<B: Backend>(model: &mut Model<B>, split: &Split) -> (Vec<f32>, Evaluation) {
    let data = DeviceSplit::new(&model.backend, split);
    let mut all = vec![0.0; data.len * CLASSES];
    let evaluation = evaluate_into(model, &data, Some(&mut all));
    (all, evaluation)
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

/// Loss, accuracy and confusion matrix of the model on `split`.
pub fn report<B: Backend>(model: &mut Model<B>, split: &Split) -> Report {
    let (logits, evaluation) = logits(model, split);
    let mut confusion = [[0; CLASSES]; CLASSES];
    for (row, &label) in logits.chunks_exact(CLASSES).zip(&split.labels) {
        confusion[label as usize][argmax(row)] += 1;
    }
    Report { evaluation, confusion }
}

/// Softmax probabilities for each 28×28 image (MNIST-style bytes, `IMAGE_PIXELS` each).
pub fn probabilities<B: Backend>(model: &mut Model<B>, images: &[[u8; IMAGE_PIXELS]]) -> Vec<[f32; CLASSES]> {
    let split = Split { images: images.concat(), labels: vec![0; images.len()] };
    logits(model, &split)
        .0
        .chunks_exact(CLASSES)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            std::array::from_fn(|i| exp[i] / sum)
        })
        .collect()
}
