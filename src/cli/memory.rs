//! Whether the host has the memory a run's batch size asks for, checked before anything is
//! allocated: past it the allocator aborts the process (or the kernel kills it) mid-setup.

use anyhow::{bail, Result};
use resnet_mnist::model::{workspace_elements, Arch, Net};

/// Fails when the activations of the largest of `archs` at `capacity` examples, with its
/// parameters, gradients and momentum, need more than the memory available now (Linux's
/// `MemAvailable`; elsewhere nothing is checked). `flag` names what set the size.
pub fn check(flag: &str, archs: &[Arch], capacity: usize) -> Result<()> {
    let Some(available) = available_bytes() else { return Ok(()) };
    let needed = archs
        .iter()
        .map(|&arch| {
            let net = Net::build(arch);
            4 * (workspace_elements(&net, capacity) + 3 * net.layout.total)
        })
        .max()
        .unwrap_or(0);
    if needed as u64 > available {
        let gib = |bytes: f64| bytes / f64::from(1u32 << 30);
        bail!(
            "{flag} needs {:.1} GiB of memory for the network's activations ({capacity} examples at a time), and {:.1} \
             GiB are available; use a smaller --batch-size",
            gib(needed as f64),
            gib(available as f64)
        );
    }
    Ok(())
}

fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
