//! hyper-vmm's virtio-mmio register file driven by any sequence of guest reads and
//! writes (offset, width, value): never a panic, only queue indexes the device has are
//! ever notified, and the device is activated at most once per reset with queues no
//! larger than it offered.
use hyper_vmm::mmio::{MmioTransport, VirtioDevice};
use virtio_queue::{Queue, QueueT};

struct Device {
    activations: u32,
}

impl VirtioDevice for Device {
    fn device_type(&self) -> u32 {
        2
    }
    fn features(&self) -> u64 {
        1 << 5
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![256, 16]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0x5a);
    }
    fn activate(&mut self, queues: Vec<Queue>) {
        self.activations += 1;
        assert!(queues[0].size() <= 256 && queues[1].size() <= 16);
    }
    fn process_queue(&mut self, index: u32) -> bool {
        assert!(index < 2);
        true
    }
    fn reset(&mut self) {
        self.activations = 0;
    }
}

/// One run of the target on `data`.
pub fn run(data: &[u8]) {
    let mut t = MmioTransport::new(Device { activations: 0 });
    for op in data.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([op[0], op[1]]) & 0x1ff);
        let width = [1usize, 2, 4, 8][usize::from(op[2] & 3)];
        let value = &op[3..7];
        let mut buf = [0u8; 8];
        if op[2] & 4 == 0 {
            t.read(offset, &mut buf[..width]);
        } else {
            buf[..4].copy_from_slice(value);
            t.write(offset, &buf[..width]);
            t.process_notifications();
        }
        assert!(t.device.activations <= 1);
    }
}
