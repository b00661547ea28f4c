//! Docker's multiplexed stream framing ("stdcopy"), used for attach, logs and exec
//! output without a terminal: each frame is `stream u8 (1 stdout, 2 stderr) | 0 0 0 |
//! length u32 big-endian | payload`.

/// One frame of `payload` on `stream` (1 stdout, 2 stderr).
pub fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + payload.len());
    b.push(stream);
    b.extend_from_slice(&[0, 0, 0]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// The whole frames at the front of `buf` as `(stream, payload)`, and how many bytes
/// they took (an incomplete frame after them is left for more input).
pub fn parse(buf: &[u8]) -> (Vec<(u8, &[u8])>, usize) {
    let mut frames = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= 8 {
        let len =
            u32::from_be_bytes([buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]]) as usize;
        if buf.len() - pos - 8 < len {
            break;
        }
        frames.push((buf[pos], &buf[pos + 8..pos + 8 + len]));
        pos += 8 + len;
    }
    (frames, pos)
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_round_trip_and_partial_frames_wait() {
        let mut b = super::frame(1, b"hello");
        b.extend(super::frame(2, b"err"));
        let (f, used) = super::parse(&b[..b.len() - 1]);
        assert_eq!(f, vec![(1, &b"hello"[..])]);
        assert_eq!(used, 13);
        let (f, used) = super::parse(&b);
        assert_eq!(f, vec![(1, &b"hello"[..]), (2, &b"err"[..])]);
        assert_eq!(used, b.len());
    }
}
