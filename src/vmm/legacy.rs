//! The legacy devices on the port I/O bus: the 8250 UART at 0x3f8 (the guest console,
//! into a writer such as the VM's console log) and the i8042 at 0x60/0x64, whose CPU reset
//! command is how the guest ends the VM (`reboot=k`). Both from vm-superio.
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vm_superio::serial::NoEvents;
use vm_superio::{I8042Device, Serial, Trigger};

pub const SERIAL_PORT: u16 = 0x3f8;
pub const I8042_DATA: u16 = 0x60;
pub const I8042_COMMAND: u16 = 0x64;

/// A line a device raises (the i8042's reset; the UART's interrupt, not wired yet).
#[derive(Clone, Default)]
pub struct Flag(Arc<AtomicBool>);

impl Flag {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Trigger for Flag {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::SeqCst);
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
        let reset = Flag::default();
        LegacyDevices {
            serial: Serial::new(Flag::default(), console),
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
