//! The Intel MultiProcessor table (MP spec 1.4): how a guest without ACPI learns its
//! CPUs, its I/O APIC and how ISA interrupts reach it. hyperd's kernel has no ACPI, so
//! this is what lets it start application processors and route the virtio-mmio
//! interrupts (IRQ 5 and up) through the I/O APIC. Written by hand, as Firecracker
//! does: the table is a few fixed-layout records with byte checksums.
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the table goes: the last KiB of base memory, which the e820 map leaves out and
/// where the kernel looks for the floating pointer.
pub const MPTABLE_START: u64 = 0x9_fc00;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// I/O APIC pins routed (KVM's I/O APIC has 24).
pub const IOAPIC_PINS: u8 = 24;
/// The kernel's NR_CPUS: the table (and the VMM) allow no more vCPUs.
pub use hyper_vmm_api::config::MAX_VCPUS;
const APIC_VERSION: u8 = 0x14;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs: hyperd's VMs have 1 to {MAX_VCPUS}")]
    Vcpus(u8),
    #[error("writing the MP table: {0}")]
    Memory(String),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The table for `vcpus` processors (APIC ids 0..vcpus, 0 the boot processor).
pub fn build(vcpus: u8) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MptableError::Vcpus(vcpus));
    }
    let ioapic_id = vcpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        entries.push(0); // processor
        entries.push(id);
        entries.push(APIC_VERSION);
        entries.push(if id == 0 { 0x3 } else { 0x1 }); // enabled, boot processor
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // APIC | FPU
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]); // bus 0
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[2, ioapic_id, APIC_VERSION, 1]); // I/O APIC, enabled
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 2;
    for irq in 0..IOAPIC_PINS {
        // ISA IRQ n on pin n, conforming polarity and trigger.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 as ExtINT, LINT1 as NMI on every local APIC.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = MPTABLE_START as u32 + 16;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"HYPERD  ");
    header.extend_from_slice(b"hyper-vmm   ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // extended table
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec 1.4
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0; 5]); // no default configuration, no IMCR
    fp[10] = checksum(&fp);

    let mut out = fp;
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the table for `vcpus` processors at [`MPTABLE_START`].
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    let bytes = build(vcpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|e| MptableError::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_checks_out_for_every_cpu_count() {
        for n in 1..=MAX_VCPUS {
            let t = build(n).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count, u16::from(n) + 2 + u16::from(IOAPIC_PINS) + 2);
            // The whole table fits in the last KiB of base memory.
            assert!(MPTABLE_START + t.len() as u64 <= 0xa_0000);
            // Exactly one boot processor.
            let bsps = (0..n as usize)
                .filter(|i| table[44 + 20 * i + 3] & 2 != 0)
                .count();
            assert_eq!(bsps, 1);
        }
        assert!(build(0).is_err());
        assert!(build(MAX_VCPUS + 1).is_err());
    }
}
