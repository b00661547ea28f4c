//! virtio-blk requests: parsed from a descriptor chain without trusting the guest (every
//! address and length is checked against guest memory, chains have a bounded length and
//! loops are refused), then executed against a backing file.
use super::mmio::VirtioDevice;
use super::rate_limit::{Limits, RateLimiter};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

pub const SECTOR_SIZE: u64 = 512;
/// Request types and statuses (virtio 1.2, 5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
/// Bytes of the device id GET_ID returns.
pub const ID_BYTES: usize = 20;
/// The request header: type, reserved, sector.
const HEADER_LEN: u32 = 16;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("descriptor chain too short")]
    TooShort,
    #[error("descriptor chain loops or exceeds the queue size")]
    Loop,
    #[error("request header is {0} bytes, needs 16")]
    ShortHeader(u32),
    #[error("descriptor at {0:#x} (+{1}) is outside guest memory")]
    OutOfMemory(u64, u32),
    #[error("descriptor of zero length")]
    ZeroLength,
    #[error("descriptor has the wrong direction")]
    Direction,
    #[error("status descriptor must be writable and at least 1 byte")]
    Status,
    #[error("data length {0} is not a multiple of 512")]
    NotSectorMultiple(u64),
}

#[derive(Debug, PartialEq)]
pub struct Request {
    pub kind: u32,
    pub sector: u64,
    /// Data buffers in guest memory, in order.
    pub data: Vec<(GuestAddress, u32)>,
    pub status: GuestAddress,
}

impl Request {
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|(_, l)| u64::from(*l)).sum()
    }
}

/// Parses the request a descriptor chain carries. `max_len` bounds the chain (the queue
/// size): a chain that still points on after that many descriptors is a loop.
pub fn parse<M: GuestMemory>(
    chain: impl Iterator<Item = Descriptor>,
    mem: &M,
    max_len: usize,
) -> Result<Request, RequestError> {
    let descs: Vec<Descriptor> = chain.take(max_len + 1).collect();
    if descs.len() > max_len || descs.last().is_some_and(|d| d.has_next()) {
        return Err(RequestError::Loop);
    }
    if descs.len() < 2 {
        return Err(RequestError::TooShort);
    }
    for d in &descs {
        if d.len() == 0 {
            return Err(RequestError::ZeroLength);
        }
        let access = if d.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(d.addr(), d.len() as usize, access) {
            return Err(RequestError::OutOfMemory(d.addr().raw_value(), d.len()));
        }
    }
    let head = &descs[0];
    if head.is_write_only() {
        return Err(RequestError::Direction);
    }
    if head.len() < HEADER_LEN {
        return Err(RequestError::ShortHeader(head.len()));
    }
    let kind: u32 = mem
        .read_obj(head.addr())
        .map_err(|_| RequestError::OutOfMemory(head.addr().raw_value(), 4))?;
    let sector: u64 = mem
        .read_obj(
            head.addr()
                .checked_add(8)
                .ok_or(RequestError::OutOfMemory(head.addr().raw_value(), 16))?,
        )
        .map_err(|_| RequestError::OutOfMemory(head.addr().raw_value(), 16))?;
    let status = descs.last().expect("two or more");
    if !status.is_write_only() {
        return Err(RequestError::Status);
    }
    let data_descs = &descs[1..descs.len() - 1];
    // Reads fill guest buffers (writable); writes take them (readable).
    let want_writable = kind == T_IN || kind == T_GET_ID;
    if data_descs
        .iter()
        .any(|d| d.is_write_only() != want_writable)
    {
        return Err(RequestError::Direction);
    }
    let req = Request {
        kind,
        sector,
        data: data_descs.iter().map(|d| (d.addr(), d.len())).collect(),
        status: status.addr(),
    };
    if (kind == T_IN || kind == T_OUT) && !req.data_len().is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::NotSectorMultiple(req.data_len()));
    }
    Ok(req)
}

/// The most a request copies at once between the file and guest memory: a guest's
/// request may name its whole memory, the copy buffer stays this size.
pub const CHUNK: usize = 64 * 1024;

/// `(offset, length)` pieces of at most [`CHUNK`] bytes covering `len`.
fn chunks(len: u32) -> impl Iterator<Item = (u64, usize)> {
    let len = len as usize;
    (0..len)
        .step_by(CHUNK)
        .map(move |at| (at as u64, CHUNK.min(len - at)))
}

/// The file behind a virtio-blk device.
pub struct Backend {
    pub file: File,
    pub sectors: u64,
    pub read_only: bool,
    pub serial: String,
}

impl Backend {
    /// Runs a parsed request; writes its status byte and returns the bytes written into
    /// guest memory (for the used ring).
    pub fn execute<M: GuestMemory>(&self, req: &Request, mem: &M) -> u32 {
        let (status, written) = match self.run(req, mem) {
            Ok(n) => (S_OK, n),
            Err(s) => (s, 0),
        };
        let _ = mem.write_obj(status, req.status);
        written + 1
    }

    fn run<M: GuestMemory>(&self, req: &Request, mem: &M) -> Result<u32, u8> {
        let in_range = || {
            let end = req
                .sector
                .checked_add(req.data_len() / SECTOR_SIZE)
                .ok_or(S_IOERR)?;
            if end > self.sectors {
                return Err(S_IOERR);
            }
            Ok(req.sector * SECTOR_SIZE)
        };
        match req.kind {
            T_IN => {
                let mut offset = in_range()?;
                let mut buf = vec![0u8; CHUNK.min(req.data_len() as usize)];
                for (addr, len) in &req.data {
                    for (at, n) in chunks(*len) {
                        let b = &mut buf[..n];
                        self.file.read_exact_at(b, offset).map_err(|_| S_IOERR)?;
                        let to = addr.checked_add(at).ok_or(S_IOERR)?;
                        mem.write_slice(b, to).map_err(|_| S_IOERR)?;
                        offset += n as u64;
                    }
                }
                Ok(req.data_len() as u32)
            }
            T_OUT => {
                if self.read_only {
                    return Err(S_IOERR);
                }
                let mut offset = in_range()?;
                let mut buf = vec![0u8; CHUNK.min(req.data_len() as usize)];
                for (addr, len) in &req.data {
                    for (at, n) in chunks(*len) {
                        let b = &mut buf[..n];
                        let from = addr.checked_add(at).ok_or(S_IOERR)?;
                        mem.read_slice(b, from).map_err(|_| S_IOERR)?;
                        self.file.write_all_at(b, offset).map_err(|_| S_IOERR)?;
                        offset += n as u64;
                    }
                }
                Ok(0)
            }
            T_FLUSH => self.file.sync_data().map(|_| 0).map_err(|_| S_IOERR),
            T_GET_ID => {
                let (addr, len) = *req.data.first().ok_or(S_IOERR)?;
                let mut id = [0u8; ID_BYTES];
                let s = self.serial.as_bytes();
                id[..s.len().min(ID_BYTES)].copy_from_slice(&s[..s.len().min(ID_BYTES)]);
                let n = (len as usize).min(ID_BYTES);
                mem.write_slice(&id[..n], addr).map_err(|_| S_IOERR)?;
                Ok(n as u32)
            }
            _ => Err(S_UNSUPP),
        }
    }
}

/// Feature bits (virtio 1.2, 5.2.3).
pub const F_RO: u64 = 1 << 5;
pub const F_FLUSH: u64 = 1 << 9;
pub const QUEUE_SIZE: u16 = 256;

/// The virtio-blk device (type 2): one request queue, worked through when the driver
/// notifies it.
pub struct Block {
    backend: Backend,
    mem: GuestMemoryMmap,
    queue: Option<Queue>,
    /// Requests refused as malformed (they complete with nothing written).
    pub refused: u64,
    read_limit: Option<RateLimiter>,
    write_limit: Option<RateLimiter>,
    /// Set while a request waits for its rate limiter: when to look again.
    pub throttled_until: Option<Instant>,
}

impl Block {
    pub fn new(backend: Backend, mem: GuestMemoryMmap) -> Block {
        Block {
            backend,
            mem,
            queue: None,
            refused: 0,
            read_limit: None,
            write_limit: None,
            throttled_until: None,
        }
    }

    /// Limits reads and writes (token buckets of bytes/s and requests/s each).
    pub fn with_limits(mut self, read: Limits, write: Limits) -> Block {
        self.read_limit = RateLimiter::new(read);
        self.write_limit = RateLimiter::new(write);
        self
    }

    pub fn is_limited(&self) -> bool {
        self.read_limit.is_some() || self.write_limit.is_some()
    }

    /// Whether the rate limiter lets `req` go now (recording when to retry if not).
    fn admit(&mut self, req: &Request) -> bool {
        let limiter = match req.kind {
            T_IN => self.read_limit.as_mut(),
            T_OUT => self.write_limit.as_mut(),
            _ => None,
        };
        let Some(l) = limiter else { return true };
        let now = Instant::now();
        match l.consume(req.data_len(), now) {
            Ok(()) => true,
            Err(wait) => {
                self.throttled_until = Some(now + wait);
                false
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        2
    }
    fn features(&self) -> u64 {
        F_FLUSH | if self.backend.read_only { F_RO } else { 0 }
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `capacity` (in 512-byte sectors) is offered; the rest reads as zero.
        let cap = self.backend.sectors.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = *cap.get(offset as usize + i).unwrap_or(&0);
        }
    }
    fn activate(&mut self, mut queues: Vec<Queue>) {
        self.queue = queues.pop();
    }
    fn reset(&mut self) {
        self.queue = None;
    }
    fn process_queue(&mut self, index: u32) -> bool {
        if index != 0 {
            return false;
        }
        let limited = self.is_limited();
        self.throttled_until = None;
        let mem = self.mem.clone();
        let mut parsed = Vec::new();
        {
            let Some(q) = self.queue.as_mut() else {
                return false;
            };
            let max = usize::from(q.size());
            if let Ok(iter) = q.iter(&mem) {
                for chain in iter {
                    let head = chain.head_index();
                    parsed.push((head, parse(chain, &mem, max)));
                    // One request at a time when limited: the next may have to wait.
                    if limited {
                        break;
                    }
                }
            }
        }
        let mut done = Vec::new();
        for (head, req) in parsed {
            let len = match req {
                Ok(req) => {
                    if !self.admit(&req) {
                        // Not yet: the request stays in the ring for the retry.
                        if let Some(q) = self.queue.as_mut() {
                            q.go_to_previous_position();
                        }
                        break;
                    }
                    self.backend.execute(&req, &mem)
                }
                Err(e) => {
                    tracing::debug!("virtio-blk: refused a request: {e}");
                    self.refused += 1;
                    0
                }
            };
            done.push((head, len));
        }
        let q = self.queue.as_mut().expect("checked above");
        for (head, len) in &done {
            let _ = q.add_used(&mem, *head, *len);
        }
        if limited && !done.is_empty() && self.throttled_until.is_none() {
            // More may be waiting behind the one request taken: come back at once.
            self.throttled_until = Some(Instant::now());
        }
        !done.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestMemoryMmap;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
        m.write_obj(kind, GuestAddress(HDR)).unwrap();
        m.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        m.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    }

    fn backend(sectors: u64, read_only: bool) -> Backend {
        let f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i / SECTOR_SIZE) as u8)
            .collect();
        f.write_all_at(&data, 0).unwrap();
        Backend {
            file: f,
            sectors,
            read_only,
            serial: "hyper-s0".into(),
        }
    }

    fn parse_chain(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<Request, RequestError> {
        let q = MockSplitQueue::new(m, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        parse(chain, m, 16)
    }

    #[test]
    fn chained_read_fills_every_buffer() {
        let m = mem();
        header(&m, T_IN, 2);
        let req = parse_chain(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 512, W),
                desc(DATA + 4096, 1024, W),
                desc(STATUS, 1, W),
            ],
        )
        .unwrap();
        assert_eq!(req.data.len(), 2);
        let b = backend(8, true);
        assert_eq!(b.execute(&req, &m), 1536 + 1);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
        assert_eq!(m.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 2);
        assert_eq!(m.read_obj::<u8>(GuestAddress(DATA + 4096)).unwrap(), 3);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(DATA + 4096 + 512)).unwrap(),
            4
        );
    }

    #[test]
    fn requests_larger_than_the_copy_buffer_go_in_chunks() {
        assert_eq!(
            chunks(3 * CHUNK as u32 + 512).collect::<Vec<_>>(),
            vec![
                (0, CHUNK),
                (CHUNK as u64, CHUNK),
                (2 * CHUNK as u64, CHUNK),
                (3 * CHUNK as u64, 512)
            ]
        );
        assert_eq!(chunks(0).count(), 0);
        // A 200 KiB read and write through one descriptor each land whole.
        let m = mem();
        let sectors = 400u64;
        let b = backend(sectors, false);
        header(&m, T_IN, 0);
        let len = (sectors * SECTOR_SIZE) as u32;
        let req = parse_chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, len, W), desc(STATUS, 1, W)],
        )
        .unwrap();
        assert_eq!(b.execute(&req, &m), len + 1);
        for s in [0u64, 127, 128, 255, 399] {
            let at = GuestAddress(DATA + s * SECTOR_SIZE);
            assert_eq!(m.read_obj::<u8>(at).unwrap(), s as u8, "sector {s}");
        }
        header(&m, T_OUT, 0);
        m.write_slice(&vec![0xee; len as usize], GuestAddress(DATA))
            .unwrap();
        let req = parse_chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, len, 0), desc(STATUS, 1, W)],
        )
        .unwrap();
        assert_eq!(b.execute(&req, &m), 1);
        let mut back = vec![0u8; len as usize];
        b.file.read_exact_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|x| *x == 0xee));
    }

    #[test]
    fn writes_flush_and_id() {
        let m = mem();
        let b = backend(4, false);
        header(&m, T_OUT, 1);
        m.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        let req = parse_chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
        )
        .unwrap();
        b.execute(&req, &m);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
        let mut back = [0u8; 1];
        b.file.read_exact_at(&mut back, 512).unwrap();
        assert_eq!(back[0], 0xab);
        header(&m, T_FLUSH, 0);
        let req = parse_chain(&m, &[desc(HDR, 16, 0), desc(STATUS, 1, W)]).unwrap();
        b.execute(&req, &m);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
        header(&m, T_GET_ID, 0);
        let req = parse_chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 20, W), desc(STATUS, 1, W)],
        )
        .unwrap();
        b.execute(&req, &m);
        let mut id = [0u8; 8];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"hyper-s0");
    }

    #[test]
    fn refuses_malformed_chains() {
        let m = mem();
        header(&m, T_IN, 0);
        let end = 0x40_0000u64;
        let cases: Vec<(Vec<RawDescriptor>, RequestError)> = vec![
            (vec![desc(HDR, 16, 0)], RequestError::TooShort),
            (
                vec![desc(end - 8, 16, 0), desc(STATUS, 1, W)],
                RequestError::OutOfMemory(end - 8, 16),
            ),
            (
                vec![desc(HDR, 16, 0), desc(end, 512, W), desc(STATUS, 1, W)],
                RequestError::OutOfMemory(end, 512),
            ),
            (
                vec![
                    desc(HDR, 16, 0),
                    desc(u64::MAX - 10, 512, W),
                    desc(STATUS, 1, W),
                ],
                RequestError::OutOfMemory(u64::MAX - 10, 512),
            ),
            (
                vec![desc(HDR, 16, 0), desc(DATA, 0, W), desc(STATUS, 1, W)],
                RequestError::ZeroLength,
            ),
            (
                vec![desc(HDR, 8, 0), desc(STATUS, 1, W)],
                RequestError::ShortHeader(8),
            ),
            (
                vec![desc(HDR, 16, W), desc(STATUS, 1, W)],
                RequestError::Direction,
            ),
            (
                vec![desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)],
                RequestError::Direction,
            ),
            (
                vec![desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, 0)],
                RequestError::Status,
            ),
            (
                vec![desc(HDR, 16, 0), desc(DATA, 100, W), desc(STATUS, 1, W)],
                RequestError::NotSectorMultiple(100),
            ),
        ];
        for (descs, want) in cases {
            assert_eq!(parse_chain(&m, &descs), Err(want));
        }
    }

    #[test]
    fn refuses_descriptor_loops() {
        let m = mem();
        header(&m, T_IN, 0);
        let q = MockSplitQueue::new(&m, 16);
        let next = VRING_DESC_F_NEXT as u16;
        // 0 -> 1 -> 2 -> 1 -> ...: never ends.
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, next, 1)),
            RawDescriptor::from(SplitDescriptor::new(DATA, 512, W | next, 2)),
            RawDescriptor::from(SplitDescriptor::new(DATA + 512, 512, W | next, 1)),
        ];
        q.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        let chain = queue.pop_descriptor_chain(&m).expect("a chain");
        assert_eq!(parse(chain, &m, 16), Err(RequestError::Loop));
    }

    #[test]
    fn out_of_range_sectors_and_read_only_writes_fail_with_ioerr() {
        let m = mem();
        let b = backend(4, true);
        // (type, sector, data descriptor flags) -> the status the device must write.
        let cases = [
            (T_IN, 4, W, S_IOERR),
            (T_IN, u64::MAX, W, S_IOERR),
            (T_OUT, 0, 0, S_IOERR),
        ];
        for (kind, sector, flags, want) in cases {
            header(&m, kind, sector);
            let req = parse_chain(
                &m,
                &[desc(HDR, 16, 0), desc(DATA, 512, flags), desc(STATUS, 1, W)],
            )
            .unwrap();
            b.execute(&req, &m);
            assert_eq!(
                m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
                want,
                "type {kind} sector {sector}"
            );
        }
        header(&m, 99, 0);
        let req = parse_chain(&m, &[desc(HDR, 16, 0), desc(STATUS, 1, W)]).unwrap();
        b.execute(&req, &m);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_UNSUPP);
    }

    fn used_idx(m: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
        m.read_obj(GuestAddress(q.used_addr().0 + 2)).unwrap()
    }

    /// The device end to end over a queue in guest memory: a good request among a loop
    /// and one pointing outside guest memory. All three complete (the guest is never left
    /// waiting), the bad two with nothing written and counted.
    #[test]
    fn the_device_serves_good_requests_and_refuses_bad_ones_without_panicking() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        let next = VRING_DESC_F_NEXT as u16;
        header(&m, T_IN, 1);
        let raw =
            |addr, len, flags, n| RawDescriptor::from(SplitDescriptor::new(addr, len, flags, n));
        let descs = [
            // good: header, one sector, status
            raw(HDR, 16, next, 1),
            raw(DATA, 512, W | next, 2),
            raw(STATUS, 1, W, 0),
            // loop: 3 -> 4 -> 3
            raw(HDR, 16, next, 4),
            raw(DATA + 4096, 512, W | next, 3),
            // outside guest memory
            raw(HDR, 16, next, 6),
            raw(0x1000_0000, 512, W | next, 7),
            raw(STATUS + 16, 1, W, 0),
        ];
        q.add_desc_chains(&descs[..3], 0).unwrap();
        q.add_desc_chains(&descs[3..5], 3).unwrap();
        q.add_desc_chains(&descs[5..], 5).unwrap();
        let mut dev = Block::new(backend(8, false), m.clone());
        dev.activate(vec![q.create_queue().unwrap()]);
        assert!(dev.process_queue(0));
        assert_eq!(used_idx(&m, &q), 3);
        assert_eq!(dev.refused, 2);
        let mut sector = [0u8; 512];
        m.read_slice(&mut sector, GuestAddress(DATA)).unwrap();
        assert!(sector.iter().all(|b| *b == 1), "sector 1 was read");
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
        // Another queue index, or nothing new: no work, no interrupt.
        assert!(!dev.process_queue(1));
        assert!(!dev.process_queue(0));
    }

    /// With a limit of one read per second the second request waits in the ring, and the
    /// device says when to look again.
    #[test]
    fn rate_limited_requests_wait_in_the_ring() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        header(&m, T_IN, 0);
        let chain = [desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)];
        let linked = |base: u16| {
            chain
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let d = SplitDescriptor::from(*d);
                    let last = i == chain.len() - 1;
                    RawDescriptor::from(SplitDescriptor::new(
                        d.addr().0,
                        d.len(),
                        d.flags() | if last { 0 } else { VRING_DESC_F_NEXT as u16 },
                        if last { 0 } else { base + i as u16 + 1 },
                    ))
                })
                .collect::<Vec<_>>()
        };
        q.add_desc_chains(&linked(0), 0).unwrap();
        q.add_desc_chains(&linked(3), 3).unwrap();
        let limits = Limits {
            bytes_per_sec: 0,
            ops_per_sec: 1,
        };
        let mut dev = Block::new(backend(4, false), m.clone()).with_limits(limits, limits);
        assert!(dev.is_limited());
        dev.activate(vec![q.create_queue().unwrap()]);
        assert!(dev.process_queue(0));
        assert_eq!(used_idx(&m, &q), 1);
        // The second one: not yet.
        assert!(!dev.process_queue(0));
        assert_eq!(used_idx(&m, &q), 1);
        let due = dev.throttled_until.expect("the device says when to retry");
        assert!(due > Instant::now() + std::time::Duration::from_millis(500));
    }
}
