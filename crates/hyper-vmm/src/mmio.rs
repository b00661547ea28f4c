//! The virtio-mmio transport (virtio 1.2, 4.2.2): the register window a driver uses to
//! find a device, negotiate features, set up queues and notify them. Every guest access is
//! checked: unaligned or unknown registers are ignored, queue sizes above the device's
//! maximum are refused, queue setup is frozen once the driver is running.
use virtio_queue::{Queue, QueueT};

pub const MAGIC: u32 = 0x7472_6976; // "virt"
pub const VERSION: u32 = 2;
pub const VENDOR: u32 = 0x4859_5045; // "HYPE"
/// Device status bits.
pub const ACKNOWLEDGE: u32 = 1;
pub const DRIVER: u32 = 2;
pub const DRIVER_OK: u32 = 4;
pub const FEATURES_OK: u32 = 8;
pub const FAILED: u32 = 128;
/// Interrupt status bit: a used ring changed.
pub const INT_USED_RING: u32 = 1;
/// VIRTIO_F_VERSION_1: a modern device.
pub const F_VERSION_1: u64 = 1 << 32;

/// A virtio device behind the transport.
pub trait VirtioDevice {
    fn device_type(&self) -> u32;
    fn features(&self) -> u64;
    fn queue_max_sizes(&self) -> Vec<u16>;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The features the driver accepted, told just before [`VirtioDevice::activate`].
    fn set_acked_features(&mut self, features: u64) {
        let _ = features;
    }
    /// The driver is running: the device takes its queues.
    fn activate(&mut self, queues: Vec<Queue>);
    /// The driver notified queue `index`: the device works through it and answers whether
    /// it used buffers (then the driver gets an interrupt).
    fn process_queue(&mut self, index: u32) -> bool {
        let _ = index;
        false
    }
    /// The driver reset the device: it gives up its queues.
    fn reset(&mut self) {}
}

pub struct MmioTransport<D: VirtioDevice> {
    pub device: D,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    pub interrupt_status: u32,
    config_generation: u32,
    /// Queue indexes the driver notified, for the device loop.
    pub notified: Vec<u32>,
    activated: bool,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(device: D) -> MmioTransport<D> {
        let queues = device
            .queue_max_sizes()
            .into_iter()
            .map(|m| Queue::new(m).expect("device queue sizes are powers of two"))
            .collect();
        MmioTransport {
            device,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            notified: Vec::new(),
            activated: false,
        }
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn features(&self) -> u64 {
        self.device.features() | F_VERSION_1
    }

    /// A driver read at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        let v: u32 = match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR,
            0x10 => match self.device_features_sel {
                0 => self.features() as u32,
                1 => (self.features() >> 32) as u32,
                _ => 0,
            },
            0x34 => self.queue().map(|q| u32::from(q.max_size())).unwrap_or(0),
            0x44 => self.queue().map(|q| u32::from(q.ready())).unwrap_or(0),
            0x60 => self.interrupt_status,
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// Hands the queue notifications the driver made to the device; answers whether the
    /// driver is owed an interrupt (and records it in the interrupt status).
    pub fn process_notifications(&mut self) -> bool {
        let mut used = false;
        for q in std::mem::take(&mut self.notified) {
            used |= self.device.process_queue(q);
        }
        if used {
            self.interrupt_status |= INT_USED_RING;
        }
        used
    }

    /// Runs `f` on the device (an event from outside the guest, such as input arriving);
    /// answers whether the driver is owed an interrupt.
    pub fn device_event(&mut self, f: impl FnOnce(&mut D) -> bool) -> bool {
        // Outside events reach the device even before the driver runs (a host connecting);
        // only a running driver gets interrupts.
        if !f(&mut self.device) || !self.activated {
            return false;
        }
        self.interrupt_status |= INT_USED_RING;
        true
    }

    /// A driver write at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 || data.len() != 4 || !offset.is_multiple_of(4) {
            // The config spaces of hyperd's devices are read-only; odd accesses are dropped.
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        // Queue setup is only allowed before the driver runs (and not after a failure).
        let setting_up = self.status & (DRIVER_OK | FAILED) == 0 && self.status & FEATURES_OK != 0;
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 if self.status & FEATURES_OK == 0 => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 if setting_up => {
                if let Some(q) = self.queue() {
                    if v <= u32::from(q.max_size()) {
                        q.set_size(v as u16);
                    }
                }
            }
            0x44 if setting_up => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            0x50 if self.activated && (v as usize) < self.queues.len() => self.notified.push(v),
            0x64 => self.interrupt_status &= !v,
            0x70 => self.set_status(v),
            0x80 if setting_up => self
                .queue()
                .into_iter()
                .for_each(|q| q.set_desc_table_address(Some(v), None)),
            0x84 if setting_up => self
                .queue()
                .into_iter()
                .for_each(|q| q.set_desc_table_address(None, Some(v))),
            0x90 if setting_up => self
                .queue()
                .into_iter()
                .for_each(|q| q.set_avail_ring_address(Some(v), None)),
            0x94 if setting_up => self
                .queue()
                .into_iter()
                .for_each(|q| q.set_avail_ring_address(None, Some(v))),
            0xa0 if setting_up => self
                .queue()
                .into_iter()
                .for_each(|q| q.set_used_ring_address(Some(v), None)),
            0xa4 if setting_up => self
                .queue()
                .into_iter()
                .for_each(|q| q.set_used_ring_address(None, Some(v))),
            _ => {}
        }
    }

    fn fresh_queues(&self) -> Vec<Queue> {
        self.device
            .queue_max_sizes()
            .into_iter()
            .map(|m| Queue::new(m).expect("device queue sizes are powers of two"))
            .collect()
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            // Reset: everything the driver set up is forgotten.
            self.queues = self.fresh_queues();
            self.queue_sel = 0;
            self.device_features_sel = 0;
            self.driver_features_sel = 0;
            self.driver_features = 0;
            self.status = 0;
            self.interrupt_status = 0;
            self.notified.clear();
            self.activated = false;
            self.device.reset();
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        // FEATURES_OK only for features the device offered.
        if v & FEATURES_OK != 0
            && self.status & FEATURES_OK == 0
            && self.driver_features & !self.features() != 0
        {
            self.status = v & !FEATURES_OK;
            return;
        }
        self.status = v;
        if v & DRIVER_OK != 0 && !self.activated && v & FAILED == 0 {
            if self.queues.iter().all(|q| q.ready() && q.size() > 0) {
                self.activated = true;
                let fresh = self.fresh_queues();
                let queues = std::mem::replace(&mut self.queues, fresh);
                self.device.set_acked_features(self.driver_features);
                self.device.activate(queues);
            } else {
                self.status |= FAILED;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        activated: Option<Vec<u16>>,
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            2
        }
        fn features(&self) -> u64 {
            1 << 5
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![128]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let cfg = 4096u64.to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = *cfg.get(offset as usize + i).unwrap_or(&0);
            }
        }
        fn activate(&mut self, queues: Vec<Queue>) {
            self.activated = Some(queues.iter().map(|q| q.size()).collect());
        }
    }

    fn rd(t: &mut MmioTransport<Fake>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport<Fake>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport<Fake>) {
        wr(t, 0x70, ACKNOWLEDGE | DRIVER);
        wr(t, 0x24, 0);
        wr(t, 0x20, 1 << 5);
        wr(t, 0x24, 1);
        wr(t, 0x20, 1); // VERSION_1
        wr(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    }

    #[test]
    fn a_driver_brings_the_device_up() {
        let mut t = MmioTransport::new(Fake { activated: None });
        assert_eq!(
            (rd(&mut t, 0x00), rd(&mut t, 0x04), rd(&mut t, 0x08)),
            (MAGIC, VERSION, 2)
        );
        wr(&mut t, 0x14, 1);
        assert_eq!(rd(&mut t, 0x10), 1, "VERSION_1 offered");
        negotiate(&mut t);
        assert_eq!(t.status() & FEATURES_OK, FEATURES_OK);
        assert_eq!(rd(&mut t, 0x34), 128);
        wr(&mut t, 0x38, 64);
        wr(&mut t, 0x80, 0x1000);
        wr(&mut t, 0x90, 0x2000);
        wr(&mut t, 0xa0, 0x3000);
        wr(&mut t, 0x44, 1);
        wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert!(t.is_activated());
        assert_eq!(t.device.activated, Some(vec![64]));
        wr(&mut t, 0x50, 0);
        wr(&mut t, 0x50, 7); // no such queue
        assert_eq!(t.notified, vec![0]);
        let mut cap = [0u8; 8];
        t.read(0x100, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 4096);
    }

    #[test]
    fn refuses_what_a_driver_must_not_do() {
        let mut t = MmioTransport::new(Fake { activated: None });
        // Features the device did not offer: FEATURES_OK does not stick.
        wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER);
        wr(&mut t, 0x20, 1 << 7);
        wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(t.status() & FEATURES_OK, 0);
        wr(&mut t, 0x70, 0);
        negotiate(&mut t);
        // Queue sizes above the maximum, unaligned and short accesses: ignored.
        wr(&mut t, 0x38, 4096);
        t.write(0x38, &[8, 0]);
        t.write(0x39, &8u32.to_le_bytes());
        // DRIVER_OK while a queue is not ready: the device is not activated, it fails.
        wr(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert!(!t.is_activated());
        assert_eq!(t.status() & FAILED, FAILED);
        // Notifications before activation are dropped; reads of unknown registers are 0.
        wr(&mut t, 0x50, 0);
        assert!(t.notified.is_empty());
        assert_eq!(rd(&mut t, 0xe0), 0);
        let mut short = [0xffu8; 2];
        t.read(0x00, &mut short);
        assert_eq!(short, [0, 0]);
        // A reset starts over.
        wr(&mut t, 0x70, 0);
        assert_eq!(t.status(), 0);
        assert_eq!(rd(&mut t, 0xfc), 2, "config generation moves on resets");
    }
}
