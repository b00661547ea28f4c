//! hyper-vmm's virtio-net device over a guest memory the input fills (descriptor tables,
//! rings and buffers of both queues): whatever the chains say, no panic, nothing sent to
//! the backend outside Ethernet's frame sizes, and host frames waiting for the guest stay
//! under the device's backlog bound.
use hyper_vmm::mmio::VirtioDevice;
use hyper_vmm::virtio_net::{FrameSink, Net, MAX_FRAME, MIN_FRAME, RX_QUEUE, TX_QUEUE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x1_0000;

struct Sink;

impl FrameSink for Sink {
    fn send(&mut self, frame: &[u8]) -> bool {
        assert!((MIN_FRAME..=MAX_FRAME).contains(&frame.len()));
        true
    }
}

/// A ready queue of 16 entries whose rings start at `base`.
fn queue(base: u32) -> Queue {
    let mut q = Queue::new(16).unwrap();
    q.set_desc_table_address(Some(base), Some(0));
    q.set_avail_ring_address(Some(base + 0x100), Some(0));
    q.set_used_ring_address(Some(base + 0x200), Some(0));
    q.set_ready(true);
    q
}

/// One run of the target on `data`.
pub fn run(data: &[u8]) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    let mut net = Net::new(mem.clone(), [2, 0, 0, 0, 0, 1], 1500, Box::new(Sink));
    net.activate(vec![queue(0), queue(0x400)]);
    net.process_queue(TX_QUEUE);
    for len in [MIN_FRAME, 1514, MAX_FRAME, MAX_FRAME + 1, 3] {
        net.receive(vec![0xab; len]);
    }
    net.process_queue(RX_QUEUE);
    net.process_queue(TX_QUEUE);
    assert!(net.backlog() <= 3 * MAX_FRAME);
}
