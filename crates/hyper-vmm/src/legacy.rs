//! The legacy devices on the port I/O bus: the 8250 UART at 0x3f8 (the guest console,
//! into a writer such as the VM's console log) and the i8042 at 0x60/0x64, whose CPU reset
//! command is how the guest ends the VM (`reboot=k`). Both from vm-superio.
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vm_superio::serial::NoEvents;
use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const SERIAL_PORT: u16 = 0x3f8;
pub const I8042_DATA: u16 = 0x60;
pub const I8042_COMMAND: u16 = 0x64;

/// A line a device raises: remembered (the i8042's reset) and, when wired to an
/// interrupt (the UART's IRQ 4 through an irqfd), signalled to KVM.
#[derive(Clone, Default)]
pub struct Flag(Arc<AtomicBool>, Option<Arc<EventFd>>);

impl Flag {
    pub fn irq(evt: Arc<EventFd>) -> Flag {
        Flag(Arc::default(), Some(evt))
    }
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Trigger for Flag {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::SeqCst);
        if let Some(e) = &self.1 {
            e.write(1)?;
        }
        Ok(())
    }
}

/// What a vCPU's port I/O goes to.
pub trait PioBus {
    /// Handles a write; returns `true` when the write asks for the VM to reset.
    fn write(&mut self, port: u16, data: &[u8]) -> bool;
    fn read(&mut self, port: u16, data: &mut [u8]);
}

pub struct LegacyDevices {
    serial: Serial<Flag, NoEvents, Box<dyn Write + Send>>,
    i8042: I8042Device<Flag>,
    reset: Flag,
}

impl LegacyDevices {
    pub fn new(console: Box<dyn Write + Send>) -> LegacyDevices {
        Self::with_serial_irq(console, Flag::default())
    }

    pub fn with_serial_irq(console: Box<dyn Write + Send>, irq: Flag) -> LegacyDevices {
        let reset = Flag::default();
        LegacyDevices {
            serial: Serial::new(irq, console),
            i8042: I8042Device::new(reset.clone()),
            reset,
        }
    }
}

impl PioBus for LegacyDevices {
    fn write(&mut self, port: u16, data: &[u8]) -> bool {
        let Some(&byte) = data.first() else {
            return false;
        };
        match port {
            SERIAL_PORT..=0x3ff => {
                let _ = self.serial.write((port - SERIAL_PORT) as u8, byte);
            }
            I8042_DATA | I8042_COMMAND => {
                let _ = self.i8042.write((port - I8042_DATA) as u8, byte);
            }
            _ => {}
        }
        self.reset.is_set()
    }

    fn read(&mut self, port: u16, data: &mut [u8]) {
        let value = match port {
            SERIAL_PORT..=0x3ff => self.serial.read((port - SERIAL_PORT) as u8),
            I8042_DATA | I8042_COMMAND => self.i8042.read((port - I8042_DATA) as u8),
            // Nothing else on the bus: reads float high.
            _ => 0xff,
        };
        data.fill(value);
    }
}
