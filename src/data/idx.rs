//! Validation of IDX files (the container format of MNIST) held in memory.
//!
//! These are pure functions over bytes; the path is only used to name the file in errors,
//! which keeps every malformed-input case easy to unit-test.

use std::path::Path;

use super::{DataError, CLASSES, IMAGE_PIXELS, IMAGE_SIDE};

/// Magic numbers: two zero bytes, type 0x08 (unsigned byte), then the number of dimensions.
const IMAGE_MAGIC: u32 = 0x0000_0803;
const LABEL_MAGIC: u32 = 0x0000_0801;

/// Checks an IDX image file and returns its pixels: `count * 784` bytes, row-major 28x28.
pub(crate) fn parse_images<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a [u8], DataError> {
    let [_, count, rows, cols] = header(bytes, IMAGE_MAGIC, "image", path)?;
    let side = IMAGE_SIDE as u32;
    if (rows, cols) != (side, side) {
        let path = path.into();
        return Err(DataError::WrongDimensions { path, rows, cols });
    }
    payload(bytes, 16, count, IMAGE_PIXELS, "images", path)
}

/// Checks an IDX label file, including that every label names a class, and returns the labels.
pub(crate) fn parse_labels<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a [u8], DataError> {
    let [_, count] = header(bytes, LABEL_MAGIC, "label", path)?;
    let labels = payload(bytes, 8, count, 1, "labels", path)?;
    match labels.iter().position(|&label| usize::from(label) >= CLASSES) {
        Some(index) => Err(DataError::LabelOutOfRange { path: path.into(), label: labels[index], index }),
        None => Ok(labels),
    }
}

/// Reads the `N` big-endian u32 header fields, the first being the magic number.
fn header<const N: usize>(bytes: &[u8], magic: u32, what: &'static str, path: &Path) -> Result<[u32; N], DataError> {
    let header_len = 4 * N;
    let truncated = || DataError::HeaderTruncated { path: path.into(), len: bytes.len(), header_len };
    // Checking the magic number first reports the wrong kind of IDX file as such, even when
    // it is shorter than this kind's header.
    let found = bytes.first_chunk::<4>().ok_or_else(truncated)?;
    check_magic(u32::from_be_bytes(*found), magic, what, path)?;
    let head = bytes.get(..header_len).ok_or_else(truncated)?;
    let mut fields = [0; N];
    for (field, chunk) in fields.iter_mut().zip(head.chunks_exact(4)) {
        *field = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    Ok(fields)
}

fn check_magic(found: u32, expected: u32, what: &'static str, path: &Path) -> Result<(), DataError> {
    if found == expected {
        return Ok(());
    }
    let path = path.into();
    Err(DataError::WrongMagic { path, found, expected, what })
}

/// Returns the data after the header, which must hold exactly `count` items: a short file
/// means an interrupted copy, a long one means the header and data disagree.
fn payload<'a>(
    bytes: &'a [u8],
    header_len: usize,
    count: u32,
    item_len: usize,
    items: &'static str,
    path: &Path,
) -> Result<&'a [u8], DataError> {
    // u64 cannot overflow here: at most 16 + (2^32 - 1) * 784.
    let expected = header_len as u64 + u64::from(count) * item_len as u64;
    let actual = bytes.len() as u64;
    let path = path.into();
    if actual < expected {
        return Err(DataError::Truncated { path, count, items, expected, actual });
    }
    if actual > expected {
        return Err(DataError::TrailingBytes { path, count, items, expected, actual });
    }
    Ok(&bytes[header_len..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("x-idx")
    }

    fn images(count: u32, rows: u32, cols: u32, pixels: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for field in [IMAGE_MAGIC, count, rows, cols] {
            bytes.extend(field.to_be_bytes());
        }
        bytes.resize(bytes.len() + pixels, 7);
        bytes
    }

    fn labels(count: u32, labels: &[u8]) -> Vec<u8> {
        let mut bytes = LABEL_MAGIC.to_be_bytes().to_vec();
        bytes.extend(count.to_be_bytes());
        bytes.extend(labels);
        bytes
    }

    #[test]
    fn valid_files_yield_their_payload() {
        let bytes = images(2, 28, 28, 2 * IMAGE_PIXELS);
        assert_eq!(parse_images(&bytes, path()).unwrap(), &bytes[16..]);
        let bytes = labels(3, &[0, 9, 4]);
        assert_eq!(parse_labels(&bytes, path()).unwrap(), &[0, 9, 4]);
    }

    #[test]
    fn zero_items_is_valid() {
        assert!(parse_images(&images(0, 28, 28, 0), path()).unwrap().is_empty());
        assert!(parse_labels(&labels(0, &[]), path()).unwrap().is_empty());
    }

    #[test]
    fn rejects_short_header() {
        let err = parse_images(&[0, 0, 8, 3, 0], path()).unwrap_err();
        assert!(matches!(err, DataError::HeaderTruncated { len: 5, header_len: 16, .. }));
        let err = parse_labels(&[], path()).unwrap_err();
        assert!(matches!(err, DataError::HeaderTruncated { len: 0, header_len: 8, .. }));
    }

    #[test]
    fn rejects_label_file_as_images_and_vice_versa() {
        let err = parse_images(&labels(0, &[]), path()).unwrap_err();
        assert!(matches!(err, DataError::WrongMagic { found: 0x801, expected: 0x803, .. }));
        let err = parse_labels(&images(0, 28, 28, 0), path()).unwrap_err();
        assert!(matches!(err, DataError::WrongMagic { found: 0x803, expected: 0x801, .. }));
    }

    #[test]
    fn rejects_wrong_dimensions() {
        let err = parse_images(&images(1, 32, 28, 32 * 28), path()).unwrap_err();
        assert!(matches!(err, DataError::WrongDimensions { rows: 32, cols: 28, .. }));
    }

    #[test]
    fn rejects_wrong_length() {
        let err = parse_images(&images(2, 28, 28, IMAGE_PIXELS), path()).unwrap_err();
        assert!(matches!(err, DataError::Truncated { count: 2, expected: 1584, actual: 800, .. }));
        let err = parse_labels(&labels(1, &[1, 2]), path()).unwrap_err();
        assert!(matches!(err, DataError::TrailingBytes { expected: 9, actual: 10, .. }));
    }

    #[test]
    fn huge_count_does_not_overflow() {
        let err = parse_images(&images(u32::MAX, 28, 28, 0), path()).unwrap_err();
        assert!(matches!(err, DataError::Truncated { count: u32::MAX, .. }));
    }

    #[test]
    fn rejects_out_of_range_label() {
        let err = parse_labels(&labels(3, &[1, 10, 255]), path()).unwrap_err();
        assert!(matches!(err, DataError::LabelOutOfRange { label: 10, index: 1, .. }));
    }
}
