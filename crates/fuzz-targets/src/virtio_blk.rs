//! hyper-vmm's virtio-blk device over a guest memory the input fills (descriptor table,
//! rings, request headers and buffers): whatever the chains say, no panic, and the
//! backing file never grows past its size (no write lands beyond the disk's end).
use hyper_vmm::mmio::VirtioDevice;
use hyper_vmm::virtio_blk::{Backend, Block, SECTOR_SIZE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x1_0000;
const SECTORS: u64 = 16;

/// One run of the target on `data`.
pub fn run(data: &[u8]) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    let file = tempfile::tempfile().unwrap();
    file.set_len(SECTORS * SECTOR_SIZE).unwrap();
    let backend = Backend {
        file: file.try_clone().unwrap(),
        sectors: SECTORS,
        read_only: data.first().is_some_and(|b| b & 1 == 1),
        serial: "fuzz".into(),
    };
    let mut q = Queue::new(16).unwrap();
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x100), Some(0));
    q.set_used_ring_address(Some(0x200), Some(0));
    q.set_ready(true);
    let mut blk = Block::new(backend, mem);
    blk.activate(vec![q]);
    blk.process_queue(0);
    blk.process_queue(0);
    assert_eq!(file.metadata().unwrap().len(), SECTORS * SECTOR_SIZE);
}
