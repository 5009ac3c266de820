//! `samples`: test-set digits as PNG files, to try `predict` on.

use anyhow::{Context, Result};
use resnet_mnist::data::{Dataset, IMAGE_PIXELS};
use resnet_mnist::digit;

use super::args::SamplesArgs;

pub fn samples(dataset: &Dataset, args: &SamplesArgs) -> Result<()> {
    let test = &dataset.test;
    let count = (args.count as usize).min(test.len());
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    for i in 0..count {
        let path = args.out.join(format!("{i:05}-label{}.png", test.labels[i]));
        digit::save_png(&path, &test.images[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS])?;
    }
    println!(
        "Wrote {count} {} test digits to {}; try: resnet-mnist predict --checkpoint runs/<run>/best.safetensors {}",
        dataset.kind,
        args.out.display(),
        args.out.join(format!("00000-label{}.png", test.labels[0])).display()
    );
    Ok(())
}
