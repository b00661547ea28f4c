//! mCM's `base64Image` body scanner on any bytes: it must never panic, and never write
//! more than the input could decode to.

/// One run of the target on `data`.
pub fn run(data: &[u8]) {
    let mut out = Vec::new();
    let max = 1 << 16;
    let _ = hyperd::api::base64_field::read(data, max, "base64Image", &mut out);
    assert!(out.len() <= data.len());
}
