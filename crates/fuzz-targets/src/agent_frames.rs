//! Both sides of the agent channel on any bytes: frames are read (with resynchronization
//! after garbage) and their payloads parsed as what each side expects (the agent:
//! requests; the host: responses, events, status and stats). Nothing may panic, no frame
//! may carry more than the protocol's cap, and a frame read re-encodes to bytes that read
//! back as the same frame.
use hyperd_agent::protocol::{Event, Frame, Request, Response, Stats, Status, MAX_PAYLOAD};

/// One run of the target on `data`.
pub fn run(data: &[u8]) {
    let mut r = std::io::Cursor::new(data);
    for _ in 0..64 {
        match Frame::read_from(&mut r) {
            Ok(Some(f)) => {
                assert!(f.payload.len() <= MAX_PAYLOAD as usize);
                let again = Frame::read_from(&mut std::io::Cursor::new(f.encode()))
                    .expect("a frame re-reads")
                    .expect("a frame");
                assert_eq!(
                    (again.kind, again.stream, &again.payload),
                    (f.kind, f.stream, &f.payload)
                );
                let _ = f.parse::<Request>();
                let _ = f.parse::<Response>();
                let _ = f.parse::<Event>();
                let _ = f.parse::<Status>();
                let _ = f.parse::<Stats>();
            }
            Ok(None) | Err(_) => break,
        }
    }
}
