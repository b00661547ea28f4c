//! The boot vCPU's state for Linux's 64-bit boot protocol (Documentation/x86/boot.rst):
//! long mode with identity-mapped page tables for the first GiB, a flat GDT, the zero page
//! in RSI; plus the CPUID the guest sees, the MSRs it starts with and its local APIC's
//! interrupt lines. As Firecracker does for an ELF vmlinux.
use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_segment, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest physical layout below 1 MiB.
pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 4;
const APIC_MODE_EXTINT: u32 = 7;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("vCPU setup: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    #[error("writing the boot tables into guest memory: {0}")]
    Memory(String),
    #[error("MSRs: {0}")]
    Msrs(String),
}

/// A GDT entry (base, limit, flags as in the Intel SDM's segment descriptor).
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0xffff)
}

/// The KVM segment register a GDT entry describes.
fn segment(entry: u64, index: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff);
    let mut limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    if bit(55) == 1 {
        limit = (limit << 12) | 0xfff;
    }
    let present = bit(47);
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and the identity page tables (2 MiB pages over the
/// first GiB) into guest memory.
fn write_tables(mem: &GuestMemoryMmap) -> Result<[u64; 4], CpuError> {
    let gdt = [
        0,
        gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
        gdt_entry(0xc093, 0, 0xfffff), // data
        gdt_entry(0x808b, 0, 0xfffff), // TSS
    ];
    let w = |v: u64, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .map_err(|e| CpuError::Memory(e.to_string()))
    };
    for (i, e) in gdt.iter().enumerate() {
        w(*e, GDT_START + 8 * i as u64)?;
    }
    w(0, IDT_START)?;
    w(PDPTE_START | 0x03, PML4_START)?;
    w(PDE_START | 0x03, PDPTE_START)?;
    for i in 0..512u64 {
        // Present, writable, 2 MiB page.
        w((i << 21) | 0x83, PDE_START + i * 8)?;
    }
    Ok(gdt)
}

/// Puts the boot vCPU in long mode at the kernel's 64-bit entry, the zero page in RSI.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: u64) -> Result<(), CpuError> {
    let gdt = write_tables(mem)?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    let code = segment(gdt[1], 1);
    let data = segment(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], 3);
    sregs.cr3 = PML4_START;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)?;

    let mut regs = vcpu.get_regs()?;
    regs.rflags = 2;
    regs.rip = entry;
    regs.rsp = BOOT_STACK;
    regs.rbp = BOOT_STACK;
    regs.rsi = ZERO_PAGE_START;
    vcpu.set_regs(&regs)?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)?;
    Ok(())
}

/// What every vCPU needs whatever its role: CPUID (the host's supported set, with this
/// vCPU's APIC id, the VM's processor count and the hypervisor bit), boot MSRs, and LINT0/LINT1 wired as ExtINT/NMI.
pub fn setup_vcpu(vcpu: &VcpuFd, id: u8, count: u8, supported: &CpuId) -> Result<(), CpuError> {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // APIC id, logical processor count; hypervisor present.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= 1 << 31;
                if count > 1 {
                    e.edx |= 1 << 28;
                }
            }
            0xb => e.edx = u32::from(id),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid)?;

    let msrs = Msrs::from_entries(&[
        kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            data: MTRR_ENABLE_WRITEBACK,
            ..Default::default()
        },
    ])
    .map_err(|e| CpuError::Msrs(format!("{e:?}")))?;
    let set = vcpu.set_msrs(&msrs)?;
    if set != msrs.as_slice().len() {
        return Err(CpuError::Msrs(format!(
            "KVM took {set} of {} boot MSRs",
            msrs.as_slice().len()
        )));
    }

    let mut lapic = vcpu.get_lapic()?;
    set_delivery_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)?;
    Ok(())
}

fn set_delivery_mode(lapic: &mut kvm_lapic_state, reg: usize, mode: u32) {
    let bytes: Vec<u8> = lapic.regs[reg..reg + 4].iter().map(|b| *b as u8).collect();
    let v = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let v = (v & !0x700) | (mode << 8);
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        lapic.regs[reg + i] = *b as _;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_long_mode_segments() {
        let code = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.base, code.limit, code.selector), (0, 0xffff_ffff, 8));
        assert_eq!((code.l, code.db, code.present, code.type_), (1, 0, 1, 0xb));
        let data = segment(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.l, data.db, data.s, data.type_), (0, 1, 1, 3));
        assert_eq!(segment(0, 0).unusable, 1);
    }
}
