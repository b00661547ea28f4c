//! hyper-vmm's virtio-console (the agent port's device) over a guest memory the input
//! fills (the rings and buffers of its four queues): control messages, port data and
//! receive buffers in any shape never panic it, and what waits for the guest stays
//! bounded.
use hyper_vmm::mmio::VirtioDevice;
use hyper_vmm::virtio_console::{AgentPort, Console, CONTROL_QUEUE_MAX, RX_BACKLOG};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x1_0000;

/// One run of the target on `data`.
pub fn run(data: &[u8]) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    let mut c = Console::new(mem, vec![AgentPort::new("hyper.agent")]);
    let queues = (0..4u32)
        .map(|i| {
            let base = i * 0x400;
            let mut q = Queue::new(16).unwrap();
            q.set_desc_table_address(Some(base), Some(0));
            q.set_avail_ring_address(Some(base + 0x100), Some(0));
            q.set_used_ring_address(Some(base + 0x200), Some(0));
            q.set_ready(true);
            q
        })
        .collect();
    c.activate(queues);
    let (host, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    c.set_host(0, Some(host));
    c.receive(0, &data[..n.min(4096)]);
    for q in [3u32, 2, 1, 0, 3, 0] {
        c.process_queue(q);
    }
    assert!(c.backlog(0) <= RX_BACKLOG + 4096);
    assert!(c.control_out_len() <= CONTROL_QUEUE_MAX);
}
