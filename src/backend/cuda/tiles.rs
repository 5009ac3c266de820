//! The conv kernels' tile shape (`kernels/conv.cu`), written only here: the host sizes its
//! grids from these, and build.rs passes each of [`DEFINES`] to NVRTC, to the emulator and to
//! the run-time recompile as `-DNAME=value`.

/// Output rows (channels) of one block's tile per row group: a block takes one group, or
/// [`MAX_THREAD_ROWS`] when M is larger.
pub const TILE_M: usize = 16;
/// The most rows one thread computes: each row group of a tile adds one.
pub const MAX_THREAD_ROWS: usize = 2;
/// Output columns (pixels, or filter taps for the weight gradient) of one block's tile.
pub const TILE_N: usize = 64;
/// The reduction step: how much of the reduction one shared-memory stage holds.
pub const TILE_K: usize = 16;
/// Threads per block of the conv kernels: one per (row, 16th of the columns) of the tile.
pub const TILE_THREADS: usize = TILE_M * 16;

/// The constants above as the kernels see them.
pub const DEFINES: &[(&str, usize)] = &[
    ("TILE_M", TILE_M),
    ("TILE_N", TILE_N),
    ("TILE_K", TILE_K),
    ("TILE_THREADS", TILE_THREADS),
    ("MAX_THREAD_ROWS", MAX_THREAD_ROWS),
];

/// `-DNAME=value` for each of [`DEFINES`].
pub fn define_flags() -> Vec<String> {
    DEFINES.iter().map(|(name, value)| format!("-D{name}={value}")).collect()
}
