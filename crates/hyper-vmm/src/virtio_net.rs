//! virtio-net (virtio 1.2, 5.1): one receive and one transmit queue, the guest's MAC and
//! largest MTU, no offloads (the guest checksums and segments; passt's stream carries no
//! virtio-net header to pass offloads through). Frames go to and come from a backend
//! descriptor the daemon hands over: a stream socket to passt (each frame after its
//! 32-bit big-endian length) or a tap device (a frame per read and write).
//!
//! The guest is not trusted: every chain is bounded by the queue size, each buffer is
//! checked against guest memory and its direction, a transmitted frame is at most
//! [`MAX_FRAME`] bytes, and the backend's frames that wait for receive buffers are capped
//! at [`RX_BACKLOG_BYTES`] (the reader waits beyond that, so a guest that posts no
//! buffers grows nothing on the host). Both directions may be rate limited with the
//! disks' token buckets (bytes/s and frames/s).
use super::mmio::VirtioDevice;
use super::rate_limit::{Limits, RateLimiter};
use hyper_vmm_api::config::NetFraming;
use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Feature bits (virtio 1.2, 5.1.3).
pub const F_MTU: u64 = 1 << 3;
pub const F_MAC: u64 = 1 << 5;
pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: u32 = 0;
pub const TX_QUEUE: u32 = 1;
/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
pub const HDR_LEN: usize = 12;
/// An Ethernet header: the shortest frame worth passing on.
pub const MIN_FRAME: usize = 14;
/// The largest frame either way: a 65535-byte packet with its Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 65535 + 18;
/// Host frames waiting for the guest's receive buffers, in bytes, before the backend
/// reader stops reading.
pub const RX_BACKLOG_BYTES: usize = 1 << 20;
/// How long a frame may wait for room in passt's socket before it is dropped (as a full
/// NIC queue drops); once part of a frame is out, the rest may take this long before the
/// link counts as broken.
const SEND_WAIT: Duration = Duration::from_millis(10);
const SEND_FINISH: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChainError {
    #[error("descriptor chain loops or exceeds the queue size")]
    Loop,
    #[error("descriptor at {0:#x} (+{1}) is outside guest memory")]
    OutOfMemory(u64, u32),
    #[error("descriptor has the wrong direction")]
    Direction,
    #[error("a frame of {0} bytes with its header is outside {min}..={max}", min = HDR_LEN + MIN_FRAME, max = HDR_LEN + MAX_FRAME)]
    FrameSize(u64),
    #[error("receive chain of no room")]
    NoRoom,
}

/// The descriptors of one chain, checked: no loop, inside guest memory, all in the wanted
/// direction.
fn checked<M: GuestMemory>(
    chain: impl Iterator<Item = Descriptor>,
    mem: &M,
    max_len: usize,
    writable: bool,
) -> Result<Vec<Descriptor>, ChainError> {
    let descs: Vec<Descriptor> = chain.take(max_len + 1).collect();
    if descs.len() > max_len || descs.last().is_some_and(|d| d.has_next()) {
        return Err(ChainError::Loop);
    }
    for d in &descs {
        if d.is_write_only() != writable {
            return Err(ChainError::Direction);
        }
        let access = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(d.addr(), d.len() as usize, access) {
            return Err(ChainError::OutOfMemory(d.addr().raw_value(), d.len()));
        }
    }
    Ok(descs)
}

/// The frame a transmit chain carries, without its virtio-net header.
pub fn parse_tx<M: GuestMemory>(
    chain: impl Iterator<Item = Descriptor>,
    mem: &M,
    max_len: usize,
) -> Result<Vec<u8>, ChainError> {
    let descs = checked(chain, mem, max_len, false)?;
    let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if !((HDR_LEN + MIN_FRAME) as u64..=(HDR_LEN + MAX_FRAME) as u64).contains(&total) {
        return Err(ChainError::FrameSize(total));
    }
    let mut buf = vec![0u8; total as usize];
    let mut at = 0usize;
    for d in &descs {
        let n = d.len() as usize;
        mem.read_slice(&mut buf[at..at + n], d.addr())
            .map_err(|_| ChainError::OutOfMemory(d.addr().raw_value(), d.len()))?;
        at += n;
    }
    buf.drain(..HDR_LEN);
    Ok(buf)
}

/// The buffers of a receive chain and their room.
pub fn parse_rx<M: GuestMemory>(
    chain: impl Iterator<Item = Descriptor>,
    mem: &M,
    max_len: usize,
) -> Result<(Vec<(GuestAddress, u32)>, usize), ChainError> {
    let descs = checked(chain, mem, max_len, true)?;
    let room: usize = descs.iter().map(|d| d.len() as usize).sum();
    if room == 0 {
        return Err(ChainError::NoRoom);
    }
    Ok((descs.iter().map(|d| (d.addr(), d.len())).collect(), room))
}

/// Where transmitted frames go.
pub trait FrameSink: Send {
    /// Sends one frame; false if it was dropped.
    fn send(&mut self, frame: &[u8]) -> bool;
}

/// Counters a test or the log can read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NetStats {
    pub tx_frames: u64,
    pub rx_frames: u64,
    /// Chains refused as malformed (they complete with nothing in them).
    pub refused: u64,
    /// Frames from the host dropped: larger than the guest's buffer, or malformed.
    pub rx_dropped: u64,
    /// Frames from the guest the backend did not take.
    pub tx_dropped: u64,
}

/// The virtio-net device (type 1).
pub struct Net {
    mem: GuestMemoryMmap,
    mac: [u8; 6],
    mtu: u16,
    rx: Option<Queue>,
    tx: Option<Queue>,
    sink: Box<dyn FrameSink>,
    pending: VecDeque<Vec<u8>>,
    pending_bytes: usize,
    tx_limit: Option<RateLimiter>,
    rx_limit: Option<RateLimiter>,
    /// Set while a direction waits for its rate limiter: when to look again.
    pub throttled_until: Option<Instant>,
    pub stats: NetStats,
}

/// Parses `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| {
            (p.len() == 2)
                .then(|| u8::from_str_radix(p, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

impl Net {
    pub fn new(mem: GuestMemoryMmap, mac: [u8; 6], mtu: u16, sink: Box<dyn FrameSink>) -> Net {
        Net {
            mem,
            mac,
            mtu,
            rx: None,
            tx: None,
            sink,
            pending: VecDeque::new(),
            pending_bytes: 0,
            tx_limit: None,
            rx_limit: None,
            throttled_until: None,
            stats: NetStats::default(),
        }
    }

    /// Limits each direction (token buckets of bytes/s and frames/s).
    pub fn with_limits(mut self, tx: Limits, rx: Limits) -> Net {
        self.tx_limit = RateLimiter::new(tx);
        self.rx_limit = RateLimiter::new(rx);
        self
    }

    pub fn is_limited(&self) -> bool {
        self.tx_limit.is_some() || self.rx_limit.is_some()
    }

    /// Bytes of host frames waiting for receive buffers.
    pub fn backlog(&self) -> usize {
        self.pending_bytes
    }

    /// A frame from the backend: queued for the guest, and handed over if it has
    /// buffers. Answers whether the guest got any.
    pub fn receive(&mut self, frame: Vec<u8>) -> bool {
        if !(MIN_FRAME..=MAX_FRAME).contains(&frame.len()) {
            self.stats.rx_dropped += 1;
            return false;
        }
        self.pending_bytes += frame.len();
        self.pending.push_back(frame);
        self.flush_rx()
    }

    /// Takes up both directions again after a rate limiter's wait.
    pub fn retry(&mut self) -> bool {
        self.throttled_until = None;
        let sent = self.process_tx();
        self.flush_rx() | sent
    }

    fn throttle(&mut self, wait: Duration, now: Instant) {
        let at = now + wait;
        self.throttled_until = Some(self.throttled_until.map_or(at, |t| t.min(at)));
    }

    /// Sends what the guest queued for transmission.
    fn process_tx(&mut self) -> bool {
        let mem = self.mem.clone();
        let Some(q) = self.tx.as_mut() else {
            return false;
        };
        let max = usize::from(q.size());
        let mut used = false;
        let mut wait = None;
        while let Some(chain) = q.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            match parse_tx(chain, &mem, max) {
                Ok(frame) => {
                    if let Some(l) = self.tx_limit.as_mut() {
                        if let Err(w) = l.consume(frame.len() as u64, Instant::now()) {
                            q.go_to_previous_position();
                            wait = Some(w);
                            break;
                        }
                    }
                    if self.sink.send(&frame) {
                        self.stats.tx_frames += 1;
                    } else {
                        self.stats.tx_dropped += 1;
                    }
                }
                Err(e) => {
                    tracing::debug!("virtio-net: refused a transmit chain: {e}");
                    self.stats.refused += 1;
                }
            }
            let _ = q.add_used(&mem, head, 0);
            used = true;
        }
        if let Some(w) = wait {
            self.throttle(w, Instant::now());
        }
        used
    }

    /// Hands waiting host frames to the guest's receive buffers.
    fn flush_rx(&mut self) -> bool {
        let mem = self.mem.clone();
        let Some(q) = self.rx.as_mut() else {
            return false;
        };
        let max = usize::from(q.size());
        let mut used = false;
        let mut wait = None;
        while let Some(len) = self.pending.front().map(Vec::len) {
            let Some(chain) = q.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            let (bufs, room) = match parse_rx(chain, &mem, max) {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!("virtio-net: refused a receive chain: {e}");
                    self.stats.refused += 1;
                    let _ = q.add_used(&mem, head, 0);
                    used = true;
                    continue;
                }
            };
            if room < HDR_LEN + len {
                // The frame does not fit the guest's buffers: it is dropped, the buffer
                // stays for the next one.
                q.go_to_previous_position();
                self.pending.pop_front();
                self.pending_bytes -= len;
                self.stats.rx_dropped += 1;
                continue;
            }
            if let Some(l) = self.rx_limit.as_mut() {
                if let Err(w) = l.consume(len as u64, Instant::now()) {
                    q.go_to_previous_position();
                    wait = Some(w);
                    break;
                }
            }
            let frame = self.pending.pop_front().expect("looked at above");
            self.pending_bytes -= len;
            let mut hdr = [0u8; HDR_LEN];
            // num_buffers: the frame is in this one buffer chain.
            hdr[10] = 1;
            let written = write_spread(&mem, &bufs, &[&hdr, &frame]);
            let _ = q.add_used(&mem, head, written as u32);
            self.stats.rx_frames += 1;
            used = true;
        }
        if let Some(w) = wait {
            self.throttle(w, Instant::now());
        }
        used
    }
}

/// Writes `parts` one after another across the buffers; answers the bytes written.
fn write_spread<M: GuestMemory>(mem: &M, bufs: &[(GuestAddress, u32)], parts: &[&[u8]]) -> usize {
    let mut written = 0usize;
    let mut bufs = bufs.iter().copied();
    let mut cur: Option<(GuestAddress, usize)> = None;
    for part in parts {
        let mut rest = *part;
        while !rest.is_empty() {
            let (addr, room) = match cur.take() {
                Some(c) if c.1 > 0 => c,
                _ => match bufs.next() {
                    Some((a, l)) => (a, l as usize),
                    None => return written,
                },
            };
            let n = room.min(rest.len());
            if mem.write_slice(&rest[..n], addr).is_err() {
                return written;
            }
            written += n;
            rest = &rest[n..];
            cur = Some((addr.unchecked_add(n as u64), room - n));
        }
    }
    written
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        1
    }
    fn features(&self) -> u64 {
        F_MAC | F_MTU
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], status (u16), max_virtqueue_pairs (u16), mtu (u16).
        let mut cfg = [0u8; 12];
        cfg[..6].copy_from_slice(&self.mac);
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        cfg[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = *cfg.get(offset as usize + i).unwrap_or(&0);
        }
    }
    fn activate(&mut self, queues: Vec<Queue>) {
        let mut q = queues.into_iter();
        self.rx = q.next();
        self.tx = q.next();
    }
    fn reset(&mut self) {
        self.rx = None;
        self.tx = None;
        self.pending.clear();
        self.pending_bytes = 0;
    }
    fn process_queue(&mut self, index: u32) -> bool {
        match index {
            RX_QUEUE => self.flush_rx(),
            TX_QUEUE => self.process_tx(),
            _ => false,
        }
    }
}

/// The backend's descriptor as a frame sink.
pub struct FdLink {
    fd: Arc<OwnedFd>,
    framing: NetFraming,
    broken: bool,
}

impl FdLink {
    pub fn new(fd: Arc<OwnedFd>, framing: NetFraming) -> FdLink {
        FdLink {
            fd,
            framing,
            broken: false,
        }
    }

    /// One whole message on the stream socket: dropped if the socket has no room for it
    /// soon, finished (or the link declared broken) once part of it is out.
    fn send_stream(&mut self, msg: &[u8]) -> bool {
        let start = Instant::now();
        let mut off = 0usize;
        while off < msg.len() {
            let rest = &msg[off..];
            // SAFETY: send reads `rest.len()` bytes from `rest`, a live slice; the fd is
            // owned by this link for its lifetime.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n > 0 {
                off += n as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => {
                    let limit = if off == 0 { SEND_WAIT } else { SEND_FINISH };
                    if start.elapsed() >= limit {
                        if off > 0 {
                            tracing::warn!("virtio-net: the backend stopped reading mid-frame");
                            self.broken = true;
                        }
                        return false;
                    }
                    wait_writable(self.fd.as_raw_fd(), limit.saturating_sub(start.elapsed()));
                }
                _ => {
                    tracing::warn!("virtio-net: the backend link failed: {err}");
                    self.broken = true;
                    return false;
                }
            }
        }
        true
    }
}

fn wait_writable(fd: i32, within: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd record, which lives across the call.
    unsafe { libc::poll(&mut p, 1, within.as_millis().max(1) as i32) };
}

impl FrameSink for FdLink {
    fn send(&mut self, frame: &[u8]) -> bool {
        if self.broken {
            return false;
        }
        match self.framing {
            NetFraming::Stream => {
                let mut msg = Vec::with_capacity(4 + frame.len());
                msg.extend_from_slice(&(frame.len() as u32).to_be_bytes());
                msg.extend_from_slice(frame);
                self.send_stream(&msg)
            }
            NetFraming::Tap => {
                // SAFETY: write reads `frame.len()` bytes from `frame`, a live slice.
                let n =
                    unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
                n == frame.len() as isize
            }
        }
    }
}

/// Reads the backend's frames one at a time (`Ok(None)` at its end).
pub struct FrameReader<R: Read> {
    src: R,
    framing: NetFraming,
    buf: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the backend announced a frame of {0} bytes")]
    FrameSize(u32),
    #[error("backend: {0}")]
    Io(#[from] std::io::Error),
}

impl<R: Read> FrameReader<R> {
    pub fn new(src: R, framing: NetFraming) -> FrameReader<R> {
        FrameReader {
            src,
            framing,
            buf: vec![0u8; MAX_FRAME + 1],
        }
    }

    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        match self.framing {
            NetFraming::Stream => {
                let mut len = [0u8; 4];
                match self.src.read_exact(&mut len) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
                let n = u32::from_be_bytes(len);
                if n as usize > MAX_FRAME {
                    return Err(LinkError::FrameSize(n));
                }
                let mut frame = vec![0u8; n as usize];
                self.src.read_exact(&mut frame)?;
                Ok(Some(frame))
            }
            NetFraming::Tap => loop {
                match self.src.read(&mut self.buf) {
                    Ok(0) => return Ok(None),
                    Ok(n) => return Ok(Some(self.buf[..n].to_vec())),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                }
            },
        }
    }
}

/// Feeds the backend's frames into the device until the backend closes or the VM ends,
/// waiting while the guest leaves [`RX_BACKLOG_BYTES`] unreceived.
pub fn connect_backend(
    slot: Arc<Mutex<super::machine::VirtioSlot<Net>>>,
    fd: Arc<OwnedFd>,
    framing: NetFraming,
    ending: Arc<(Mutex<Option<super::machine::Ending>>, Condvar)>,
) -> std::io::Result<()> {
    let file = std::fs::File::from(fd.try_clone()?);
    std::thread::Builder::new()
        .name("net-rx".into())
        .spawn(move || {
            let src = std::io::BufReader::with_capacity(256 * 1024, file);
            let mut reader = FrameReader::new(src, framing);
            loop {
                while slot.lock().unwrap().transport.device.backlog() > RX_BACKLOG_BYTES {
                    if ending.0.lock().unwrap().is_some() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                match reader.next_frame() {
                    Ok(Some(frame)) => slot.lock().unwrap().device_event(|n| n.receive(frame)),
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!("virtio-net: {e}; the link is closed");
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const MAC: [u8; 6] = [2, 0x68, 0x79, 0x70, 0x64, 1];

    /// Frames the device sent, for the test to look at.
    #[derive(Clone, Default)]
    struct Sent(Arc<Mutex<Vec<Vec<u8>>>>);
    impl FrameSink for Sent {
        fn send(&mut self, frame: &[u8]) -> bool {
            self.0.lock().unwrap().push(frame.to_vec());
            true
        }
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// One chain of `descs` whose table entries start at `offset`.
    fn chain(descs: &[RawDescriptor], offset: u16) -> Vec<RawDescriptor> {
        let n = descs.len();
        descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let d = SplitDescriptor::from(*d);
                let (flags, next) = if i + 1 == n {
                    (d.flags(), 0)
                } else {
                    (d.flags() | VRING_DESC_F_NEXT as u16, offset + i as u16 + 1)
                };
                RawDescriptor::from(SplitDescriptor::new(d.addr().0, d.len(), flags, next))
            })
            .collect()
    }

    fn used_idx(m: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
        m.read_obj(q.used_addr().unchecked_add(2)).unwrap()
    }

    fn used_len(m: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, i: u64) -> u32 {
        m.read_obj(q.used_addr().unchecked_add(4 + 8 * i + 4))
            .unwrap()
    }

    fn mock(m: &GuestMemoryMmap, n: u64) -> MockSplitQueue<'_, GuestMemoryMmap> {
        MockSplitQueue::create(m, GuestAddress(n * 0x1_0000), 16)
    }

    /// Queue n's rings live at n * 64 KiB; buffers from 1 MiB.
    fn setup(sent: &Sent) -> (GuestMemoryMmap, Net) {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let mut n = Net::new(m.clone(), MAC, 1500, Box::new(sent.clone()));
        let queues = (0..2)
            .map(|i| mock(&m, i).create_queue::<Queue>().unwrap())
            .collect();
        n.activate(queues);
        (m, n)
    }

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        vec![fill; len]
    }

    #[test]
    fn config_names_the_mac_and_mtu() {
        let (_, n) = setup(&Sent::default());
        let mut cfg = [0u8; 12];
        n.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], &MAC);
        assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1500);
        assert_eq!(n.features(), F_MAC | F_MTU);
        assert_eq!(parse_mac("02:68:79:70:64:01"), Some(MAC));
        for bad in [
            "02:68:79:70:64",
            "02:68:79:70:64:01:00",
            "2:68:79:70:64:01",
            "zz:68:79:70:64:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn frames_cross_both_ways_with_the_header_stripped_and_added() {
        let sent = Sent::default();
        let (m, mut n) = setup(&sent);
        let (rx, tx) = (mock(&m, 0), mock(&m, 1));
        // Transmit: the header in one buffer, the frame split over two.
        m.write_slice(&[0u8; HDR_LEN], GuestAddress(0x10_0000))
            .unwrap();
        m.write_slice(&frame(20, 0xaa), GuestAddress(0x11_0000))
            .unwrap();
        m.write_slice(&frame(40, 0xbb), GuestAddress(0x12_0000))
            .unwrap();
        tx.add_desc_chains(
            &chain(
                &[
                    desc(0x10_0000, HDR_LEN as u32, 0),
                    desc(0x11_0000, 20, 0),
                    desc(0x12_0000, 40, 0),
                ],
                0,
            ),
            0,
        )
        .unwrap();
        assert!(n.process_queue(TX_QUEUE));
        let got = sent.0.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), 60);
        assert_eq!(&got[0][..20], &frame(20, 0xaa)[..]);
        assert_eq!(used_idx(&m, &tx), 1);

        // Receive: a frame waits for a buffer, then fills it after a header with
        // num_buffers = 1.
        assert!(!n.receive(frame(100, 0xcc)));
        assert_eq!(n.backlog(), 100);
        rx.add_desc_chains(
            &chain(&[desc(0x20_0000, 64, W), desc(0x21_0000, 1500, W)], 0),
            0,
        )
        .unwrap();
        assert!(n.process_queue(RX_QUEUE));
        assert_eq!(n.backlog(), 0);
        assert_eq!(used_len(&m, &rx, 0), (HDR_LEN + 100) as u32);
        let mut hdr = [0u8; HDR_LEN];
        m.read_slice(&mut hdr, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(hdr[10], 1);
        let mut first = [0u8; 52];
        m.read_slice(&mut first, GuestAddress(0x20_0000 + HDR_LEN as u64))
            .unwrap();
        assert!(first.iter().all(|b| *b == 0xcc));
        let mut rest = [0u8; 48];
        m.read_slice(&mut rest, GuestAddress(0x21_0000)).unwrap();
        assert!(rest.iter().all(|b| *b == 0xcc));
        assert_eq!(n.stats.rx_frames, 1);
        assert_eq!(n.stats.tx_frames, 1);
    }

    #[test]
    fn hostile_transmit_chains_are_refused_and_returned() {
        let sent = Sent::default();
        let (m, mut n) = setup(&sent);
        let tx = mock(&m, 1);
        // Outside guest memory; a writable buffer; shorter than a header and an Ethernet
        // header; longer than the largest frame (spread over many buffers).
        tx.add_desc_chains(&[desc(0x4000_0000, 64, 0)], 0).unwrap();
        tx.add_desc_chains(&[desc(0x10_0000, 64, W)], 1).unwrap();
        tx.add_desc_chains(&[desc(0x10_0000, (HDR_LEN + 13) as u32, 0)], 2)
            .unwrap();
        let big: Vec<RawDescriptor> = (0..3)
            .map(|i| desc(0x10_0000 + i * 0x1_0000, 0x8000, 0))
            .collect();
        tx.add_desc_chains(&chain(&big, 3), 3).unwrap();
        assert!(n.process_queue(TX_QUEUE));
        assert_eq!(n.stats.refused, 4);
        assert!(
            sent.0.lock().unwrap().is_empty(),
            "nothing reached the backend"
        );
        assert_eq!(used_idx(&m, &tx), 4, "every chain is given back");
    }

    #[test]
    fn a_looping_chain_is_refused() {
        let sent = Sent::default();
        let (m, mut n) = setup(&sent);
        let tx = mock(&m, 1);
        // Four descriptors that point at each other in a circle.
        let ring: Vec<RawDescriptor> = (0..4u16)
            .map(|i| {
                RawDescriptor::from(SplitDescriptor::new(
                    0x10_0000 + u64::from(i) * 64,
                    64,
                    VRING_DESC_F_NEXT as u16,
                    (i + 1) % 4,
                ))
            })
            .collect();
        tx.add_desc_chains(&ring, 0).unwrap();
        n.process_queue(TX_QUEUE);
        assert_eq!(n.stats.refused, 1);
        assert!(sent.0.lock().unwrap().is_empty());
    }

    #[test]
    fn hostile_receive_chains_and_oversized_frames_are_dropped() {
        let sent = Sent::default();
        let (m, mut n) = setup(&sent);
        let rx = mock(&m, 0);
        // A read-only receive buffer is refused (given back empty); the frame stays.
        rx.add_desc_chains(&[desc(0x20_0000, 2048, 0)], 0).unwrap();
        assert!(n.receive(frame(100, 1)));
        assert_eq!(n.stats.refused, 1);
        assert_eq!(n.backlog(), 100);
        // A buffer too small for the frame: the frame is dropped, the buffer kept and
        // used for the next frame that fits.
        rx.add_desc_chains(&[desc(0x20_0000, 64, W)], 1).unwrap();
        n.process_queue(RX_QUEUE);
        assert_eq!(n.stats.rx_dropped, 1);
        assert_eq!(n.backlog(), 0);
        assert!(n.receive(frame(40, 2)));
        assert_eq!(n.stats.rx_frames, 1);
        // Frames outside Ethernet's sizes never queue.
        assert!(!n.receive(frame(MAX_FRAME + 1, 3)));
        assert!(!n.receive(frame(10, 3)));
        assert_eq!(n.backlog(), 0);
        assert_eq!(n.stats.rx_dropped, 3);
    }

    #[test]
    fn the_rate_limiter_holds_frames_back_until_its_time() {
        let sent = Sent::default();
        let (m, n) = setup(&sent);
        let mut n = n.with_limits(
            Limits {
                bytes_per_sec: 0,
                ops_per_sec: 2,
            },
            Limits::default(),
        );
        let tx = mock(&m, 1);
        m.write_slice(&[0u8; 64], GuestAddress(0x10_0000)).unwrap();
        for i in 0..4 {
            tx.add_desc_chains(&[desc(0x10_0000, 64, 0)], i).unwrap();
        }
        n.process_queue(TX_QUEUE);
        assert_eq!(sent.0.lock().unwrap().len(), 2, "two frames a second");
        let until = n.throttled_until.expect("the rest waits");
        assert!(until > Instant::now());
        std::thread::sleep(until - Instant::now());
        n.retry();
        assert_eq!(sent.0.lock().unwrap().len(), 3);
        assert_eq!(used_idx(&m, &tx), 3, "the waiting chains stay in the ring");
    }

    #[test]
    fn the_stream_reader_refuses_oversized_frames_and_ends_cleanly() {
        let mut data = Vec::new();
        data.extend_from_slice(&20u32.to_be_bytes());
        data.extend_from_slice(&[7u8; 20]);
        data.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        let mut r = FrameReader::new(&data[..], NetFraming::Stream);
        assert_eq!(r.next_frame().unwrap().unwrap(), vec![7u8; 20]);
        assert!(matches!(r.next_frame(), Err(LinkError::FrameSize(_))));
        let mut end = FrameReader::new(&[][..], NetFraming::Stream);
        assert!(end.next_frame().unwrap().is_none());
    }

    #[test]
    fn the_tap_link_keeps_frame_boundaries() {
        // A datagram socket pair stands in for the tap: one frame per read and write.
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let mut link = FdLink::new(Arc::new(OwnedFd::from(a)), NetFraming::Tap);
        assert!(link.send(&frame(60, 1)));
        assert!(link.send(&frame(1514, 2)));
        let mut r = FrameReader::new(std::fs::File::from(OwnedFd::from(b)), NetFraming::Tap);
        assert_eq!(r.next_frame().unwrap().unwrap(), frame(60, 1));
        assert_eq!(r.next_frame().unwrap().unwrap(), frame(1514, 2));
    }

    #[test]
    fn the_stream_link_frames_each_message() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut link = FdLink::new(Arc::new(OwnedFd::from(a)), NetFraming::Stream);
        assert!(link.send(&[1, 2, 3]));
        let mut r = FrameReader::new(b, NetFraming::Stream);
        assert_eq!(r.next_frame().unwrap().unwrap(), vec![1, 2, 3]);
    }
}
