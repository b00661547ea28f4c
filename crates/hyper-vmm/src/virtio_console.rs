//! virtio-console with named ports (virtio 1.2, 5.3, VIRTIO_CONSOLE_F_MULTIPORT): the
//! agent channel. The guest sees `/dev/vportNpM` with `name` = `hyper.agent` in sysfs,
//! exactly as under qemu's virtio-serial, so the agent does not know which VMM it runs
//! under. The host end of each port is a Unix socket the VMM connects to (the daemon
//! listens), reconnecting when the daemon restarts.
//!
//! Queues: port 0 receive/transmit (0, 1), control receive/transmit (2, 3), then port n's
//! at 2n+2 and 2n+3. Every buffer the guest offers is checked against guest memory by
//! virtio-queue; control messages shorter than their header are dropped.
use super::mmio::VirtioDevice;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap, Permissions};

pub const F_MULTIPORT: u64 = 1 << 1;
const QUEUE_SIZE: u16 = 256;
/// Control events (virtio 1.2, 5.3.6.2).
pub const DEVICE_READY: u16 = 0;
pub const DEVICE_ADD: u16 = 1;
pub const PORT_READY: u16 = 3;
pub const PORT_OPEN: u16 = 6;
pub const PORT_NAME: u16 = 7;
/// Data from the host that the guest has not taken yet is bounded; the socket reader
/// waits above this.
pub const RX_BACKLOG: usize = 1 << 20;
/// The most taken from one chain the guest sends (Linux's port writes are at most
/// 32 KiB; splice may send a pipe's worth): the rest of a larger chain is dropped.
const TX_CHAIN_MAX: usize = 1 << 20;
/// Control messages are 8 bytes plus a port name.
const CONTROL_MAX: usize = 64;
/// Control messages waiting for the guest's control receive buffers.
pub const CONTROL_QUEUE_MAX: usize = 64;

/// A named port and its state.
pub struct AgentPort {
    pub name: String,
    /// The guest driver has set the port up (PORT_READY).
    pub ready: bool,
    /// The guest has the port open.
    pub guest_open: bool,
    host: Option<UnixStream>,
    rx: VecDeque<u8>,
}

impl AgentPort {
    pub fn new(name: &str) -> AgentPort {
        AgentPort {
            name: name.to_string(),
            ready: false,
            guest_open: false,
            host: None,
            rx: VecDeque::new(),
        }
    }
}

pub struct Console {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    pub ports: Vec<AgentPort>,
    control_out: VecDeque<Vec<u8>>,
}

fn control(id: u32, event: u16, value: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(8);
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&event.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m
}

impl Console {
    pub fn new(mem: GuestMemoryMmap, ports: Vec<AgentPort>) -> Console {
        Console {
            mem,
            queues: Vec::new(),
            ports,
            control_out: VecDeque::new(),
        }
    }

    fn rx_queue(port: usize) -> usize {
        if port == 0 {
            0
        } else {
            2 * port + 2
        }
    }

    /// Port of a transmit queue index.
    fn tx_port(queue: usize) -> Option<usize> {
        match queue {
            1 => Some(0),
            q if q >= 5 && q % 2 == 1 => Some((q - 3) / 2),
            _ => None,
        }
    }

    /// Fills the guest's receive buffers on `queue` from `data`; answers whether any was used.
    fn fill(
        mem: &GuestMemoryMmap,
        q: &mut Queue,
        mut next: impl FnMut(usize) -> Option<Vec<u8>>,
    ) -> bool {
        let mut used = Vec::new();
        if let Ok(mut iter) = q.iter(mem) {
            while let Some(chain) = iter.next() {
                let head = chain.head_index();
                let descs: Vec<_> = chain.writable().collect();
                let room: usize = descs.iter().map(|d| d.len() as usize).sum();
                let Some(data) = next(room).filter(|_| room > 0) else {
                    iter.go_to_previous_position();
                    break;
                };
                let mut written = 0usize;
                for d in descs {
                    if written == data.len() {
                        break;
                    }
                    let n = (d.len() as usize).min(data.len() - written);
                    if mem
                        .write_slice(&data[written..written + n], d.addr())
                        .is_err()
                    {
                        break;
                    }
                    written += n;
                }
                used.push((head, written as u32));
            }
        }
        for (head, len) in &used {
            let _ = q.add_used(mem, *head, *len);
        }
        !used.is_empty()
    }

    fn flush_control(&mut self) -> bool {
        let Some(q) = self.queues.get_mut(2) else {
            return false;
        };
        let pending = &mut self.control_out;
        Self::fill(&self.mem, q, |room| {
            // A control message goes whole or waits for a bigger buffer.
            if pending.front().is_some_and(|m| m.len() <= room) {
                pending.pop_front()
            } else {
                None
            }
        })
    }

    /// Hands waiting host data to the guest, once it has the port open: Linux discards
    /// what arrives on a generic port nobody opened, so data waits here until then.
    fn flush_rx(&mut self, port: usize) -> bool {
        let Some(p) = self.ports.get_mut(port).filter(|p| p.guest_open) else {
            return false;
        };
        let Some(q) = self.queues.get_mut(Self::rx_queue(port)) else {
            return false;
        };
        let rx = &mut p.rx;
        Self::fill(&self.mem, q, |room| {
            if rx.is_empty() {
                return None;
            }
            let n = room.min(rx.len());
            Some(rx.drain(..n).collect())
        })
    }

    /// Queues a control message for the guest, unless [`CONTROL_QUEUE_MAX`] wait already:
    /// a guest that repeats requests without posting receive buffers grows nothing.
    fn push_control(&mut self, msg: Vec<u8>) {
        if self.control_out.len() < CONTROL_QUEUE_MAX {
            self.control_out.push_back(msg);
        } else {
            tracing::debug!("virtio-console: control queue full, a message dropped");
        }
    }

    fn handle_control(&mut self, msg: &[u8]) {
        let id = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
        let event = u16::from_le_bytes([msg[4], msg[5]]);
        let value = u16::from_le_bytes([msg[6], msg[7]]);
        tracing::debug!("virtio-console: guest control id {id} event {event} value {value}");
        match event {
            DEVICE_READY if value == 1 => {
                for i in 0..self.ports.len() {
                    self.push_control(control(i as u32, DEVICE_ADD, 0));
                }
            }
            PORT_READY => {
                let Some(p) = self.ports.get_mut(id as usize) else {
                    return;
                };
                p.ready = value == 1;
                if p.ready {
                    let mut name = control(id, PORT_NAME, 1);
                    name.extend_from_slice(p.name.as_bytes());
                    let open = p.host.is_some();
                    self.push_control(name);
                    if open {
                        self.push_control(control(id, PORT_OPEN, 1));
                    }
                }
            }
            PORT_OPEN => {
                if let Some(p) = self.ports.get_mut(id as usize) {
                    p.guest_open = value == 1;
                }
            }
            _ => {}
        }
    }

    /// Takes every chain the guest offers on `q`, hands the bytes of its readable
    /// descriptors (at most `limit` of them) to `each`, and gives the chain back used with
    /// nothing written. A descriptor outside guest memory adds nothing and allocates
    /// nothing. Answers how many chains were taken.
    fn take_readable(
        mem: &GuestMemoryMmap,
        q: &mut Queue,
        limit: usize,
        mut each: impl FnMut(Vec<u8>),
    ) -> usize {
        let mut used = Vec::new();
        if let Ok(iter) = q.iter(mem) {
            for chain in iter {
                used.push(chain.head_index());
                let mut bytes = Vec::new();
                for d in chain.readable() {
                    let n = (d.len() as usize).min(limit - bytes.len());
                    if n == 0 || !mem.check_range(d.addr(), n, Permissions::Read) {
                        continue;
                    }
                    let start = bytes.len();
                    bytes.resize(start + n, 0);
                    if mem.read_slice(&mut bytes[start..], d.addr()).is_err() {
                        bytes.truncate(start);
                    }
                }
                each(bytes);
            }
        }
        for head in &used {
            let _ = q.add_used(mem, *head, 0);
        }
        used.len()
    }

    /// The guest's control messages (queue 3).
    fn process_control_tx(&mut self) -> bool {
        let Some(q) = self.queues.get_mut(3) else {
            return false;
        };
        let mut msgs = Vec::new();
        let taken = Self::take_readable(&self.mem, q, CONTROL_MAX, |m| {
            if m.len() >= 8 {
                msgs.push(m);
            }
        });
        for m in msgs {
            self.handle_control(&m);
        }
        let mut sent = self.flush_control();
        for port in 0..self.ports.len() {
            sent |= self.flush_rx(port);
        }
        taken > 0 || sent
    }

    /// Data the guest sends on a port goes to the port's host socket (or nowhere while
    /// no host is connected, as with an unplugged chardev).
    fn process_tx(&mut self, port: usize, queue: usize) -> bool {
        let (Some(q), Some(p)) = (self.queues.get_mut(queue), self.ports.get_mut(port)) else {
            return false;
        };
        let taken = Self::take_readable(&self.mem, q, TX_CHAIN_MAX, |bytes| {
            tracing::debug!(
                "virtio-console: guest sent {} bytes on port {port}",
                bytes.len()
            );
            if p.host
                .as_mut()
                .is_some_and(|h| h.write_all(&bytes).is_err())
            {
                p.host = None;
            }
        });
        taken > 0
    }

    /// The host end of `port` connected (or went away, `None`).
    pub fn set_host(&mut self, port: usize, host: Option<UnixStream>) -> bool {
        let Some(p) = self.ports.get_mut(port) else {
            return false;
        };
        let open = host.is_some();
        p.host = host;
        if !p.ready {
            return false;
        }
        self.push_control(control(port as u32, PORT_OPEN, u16::from(open)));
        self.flush_control()
    }

    /// Bytes from the host for `port`; answers whether the guest got any.
    pub fn receive(&mut self, port: usize, data: &[u8]) -> bool {
        if let Some(p) = self.ports.get_mut(port) {
            p.rx.extend(data);
        }
        let used = self.flush_rx(port);
        tracing::debug!(
            "virtio-console: {} bytes from the host for port {port}, {} waiting",
            data.len(),
            self.backlog(port)
        );
        used
    }

    /// Control messages waiting for the guest's receive buffers.
    pub fn control_out_len(&self) -> usize {
        self.control_out.len()
    }

    pub fn backlog(&self, port: usize) -> usize {
        self.ports.get(port).map(|p| p.rx.len()).unwrap_or(0)
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        3
    }
    fn features(&self) -> u64 {
        F_MULTIPORT
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2 * self.ports.len() + 2]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows (u16 each), max_nr_ports (u32), emerg_wr (u32).
        let mut cfg = [0u8; 12];
        cfg[4..8].copy_from_slice(&(self.ports.len() as u32).to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = *cfg.get(offset as usize + i).unwrap_or(&0);
        }
    }
    fn activate(&mut self, queues: Vec<Queue>) {
        self.queues = queues;
    }
    fn reset(&mut self) {
        self.queues.clear();
        self.control_out.clear();
        for p in &mut self.ports {
            p.ready = false;
            p.guest_open = false;
        }
    }
    fn process_queue(&mut self, index: u32) -> bool {
        let index = index as usize;
        tracing::trace!("virtio-console: queue {index} notified");
        match index {
            2 => self.flush_control(),
            3 => self.process_control_tx(),
            _ => match Self::tx_port(index) {
                Some(port) => self.process_tx(port, index),
                None => (0..self.ports.len())
                    .find(|p| Self::rx_queue(*p) == index)
                    .is_some_and(|p| self.flush_rx(p)),
            },
        }
    }
}

/// Keeps port 0 connected to the host socket at `path`: connects (retrying while the
/// daemon is not listening), forwards what arrives into the guest, and reconnects after
/// the daemon goes away.
pub fn connect_host(slot: Arc<Mutex<super::machine::VirtioSlot<Console>>>, path: PathBuf) {
    std::thread::Builder::new()
        .name("agent-port".into())
        .spawn(move || loop {
            let Ok(mut stream) = UnixStream::connect(&path) else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let Ok(writer) = stream.try_clone() else {
                continue;
            };
            slot.lock()
                .unwrap()
                .device_event(|c| c.set_host(0, Some(writer)));
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                while slot.lock().unwrap().transport.device.backlog(0) > RX_BACKLOG {
                    std::thread::sleep(Duration::from_millis(1));
                }
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => slot
                        .lock()
                        .unwrap()
                        .device_event(|c| c.receive(0, &buf[..n])),
                }
            }
            slot.lock().unwrap().device_event(|c| c.set_host(0, None));
            std::thread::sleep(Duration::from_millis(20));
        })
        .expect("spawning the agent port thread");
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestAddress};

    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn used_idx(m: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
        m.read_obj(q.used_addr().unchecked_add(2)).unwrap()
    }

    /// Queue n's rings live at n * 64 KiB; buffers from 1 MiB.
    fn setup() -> (GuestMemoryMmap, Console) {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let mut c = Console::new(m.clone(), vec![AgentPort::new("hyper.agent")]);
        let queues = (0..4)
            .map(|n| {
                MockSplitQueue::create(&m, GuestAddress(n * 0x1_0000), 16)
                    .create_queue::<Queue>()
                    .unwrap()
            })
            .collect();
        c.activate(queues);
        (m, c)
    }

    fn mock(m: &GuestMemoryMmap, n: u64) -> MockSplitQueue<'_, GuestMemoryMmap> {
        MockSplitQueue::create(m, GuestAddress(n * 0x1_0000), 16)
    }

    #[test]
    fn ports_are_announced_named_and_carry_data_both_ways() {
        let (m, mut c) = setup();
        let (rx, ctl_rx, ctl_tx) = (mock(&m, 0), mock(&m, 2), mock(&m, 3));
        // The host connects before the driver is ready; its bytes wait.
        let (host, mut peer) = UnixStream::pair().unwrap();
        assert!(!c.set_host(0, Some(host)));
        assert!(!c.receive(0, b"ping"));
        // The driver offers control buffers and says DEVICE_READY.
        ctl_rx
            .add_desc_chains(
                &[
                    desc(0x10_0000, 64, W),
                    desc(0x10_1000, 64, W),
                    desc(0x10_2000, 64, W),
                ],
                0,
            )
            .unwrap();
        m.write_slice(&control(u32::MAX, DEVICE_READY, 1), GuestAddress(0x20_0000))
            .unwrap();
        ctl_tx.add_desc_chains(&[desc(0x20_0000, 8, 0)], 0).unwrap();
        assert!(c.process_queue(3));
        let mut msg = [0u8; 8];
        m.read_slice(&mut msg, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(msg.to_vec(), control(0, DEVICE_ADD, 0));
        // PORT_READY: the device names the port and says the host is there.
        m.write_slice(&control(0, PORT_READY, 1), GuestAddress(0x20_0100))
            .unwrap();
        ctl_tx.add_desc_chains(&[desc(0x20_0100, 8, 0)], 1).unwrap();
        assert!(c.process_queue(3));
        let mut name = [0u8; 19];
        m.read_slice(&mut name, GuestAddress(0x10_1000)).unwrap();
        assert_eq!(&name[..8], &control(0, PORT_NAME, 1)[..]);
        assert_eq!(&name[8..], b"hyper.agent");
        m.read_slice(&mut msg, GuestAddress(0x10_2000)).unwrap();
        assert_eq!(msg.to_vec(), control(0, PORT_OPEN, 1));
        assert_eq!(used_idx(&m, &ctl_rx), 3);
        // The driver offers receive buffers: the bytes still wait, for nobody in the
        // guest has the port open (Linux would discard them).
        rx.add_desc_chains(&[desc(0x30_0000, 2, W), desc(0x30_1000, 64, W)], 0)
            .unwrap();
        assert!(!c.process_queue(0));
        assert_eq!(c.backlog(0), 4);
        // The agent opens the port: now they arrive.
        m.write_slice(&control(0, PORT_OPEN, 1), GuestAddress(0x20_0200))
            .unwrap();
        ctl_tx.add_desc_chains(&[desc(0x20_0200, 8, 0)], 2).unwrap();
        assert!(c.process_queue(3));
        let mut got = [0u8; 4];
        m.read_slice(&mut got[..2], GuestAddress(0x30_0000))
            .unwrap();
        m.read_slice(&mut got[2..], GuestAddress(0x30_1000))
            .unwrap();
        assert_eq!(&got, b"ping");
        assert_eq!(c.backlog(0), 0);
        // What the guest sends reaches the host.
        m.write_slice(b"pong", GuestAddress(0x38_0000)).unwrap();
        let tx = mock(&m, 1);
        tx.add_desc_chains(&[desc(0x38_0000, 4, 0)], 0).unwrap();
        assert!(c.process_queue(1));
        let mut back = [0u8; 4];
        peer.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"pong");
    }

    #[test]
    fn malformed_control_messages_and_buffers_are_refused() {
        let (m, mut c) = setup();
        let (ctl_rx, ctl_tx) = (mock(&m, 2), mock(&m, 3));
        // A 4-byte control message, one outside guest memory, one for a port that does
        // not exist: all used, none acted on.
        m.write_slice(&control(7, PORT_READY, 1), GuestAddress(0x20_0000))
            .unwrap();
        ctl_tx
            .add_desc_chains(
                &[
                    desc(0x20_0000, 4, 0),
                    desc(0x4000_0000, 8, 0),
                    desc(0x20_0000, 8, 0),
                ],
                0,
            )
            .unwrap();
        assert!(c.process_queue(3));
        assert_eq!(used_idx(&m, &ctl_tx), 3);
        assert!(c.control_out.is_empty());
        assert!(!c.ports[0].ready);
        // A control receive buffer too small for a message is not written into.
        c.control_out.push_back(control(0, DEVICE_ADD, 0));
        ctl_rx.add_desc_chains(&[desc(0x10_0000, 4, W)], 0).unwrap();
        assert!(!c.process_queue(2));
        assert_eq!(c.control_out.len(), 1);
        // Unknown queues are ignored.
        assert!(!c.process_queue(9));
    }

    #[test]
    fn repeated_control_requests_without_receive_buffers_stay_bounded() {
        let (m, mut c) = setup();
        let ctl_tx = mock(&m, 3);
        // The guest says DEVICE_READY and PORT_READY over and over and never posts a
        // control receive buffer: the answers waiting for it stay capped.
        m.write_slice(&control(u32::MAX, DEVICE_READY, 1), GuestAddress(0x20_0000))
            .unwrap();
        m.write_slice(&control(0, PORT_READY, 1), GuestAddress(0x20_0100))
            .unwrap();
        for round in 0..200u16 {
            ctl_tx
                .add_desc_chains(
                    &[desc(0x20_0000, 8, 0), desc(0x20_0100, 8, 0)],
                    (round % 8) * 2,
                )
                .unwrap();
            c.process_queue(3);
        }
        assert_eq!(c.control_out.len(), CONTROL_QUEUE_MAX);
    }
}
