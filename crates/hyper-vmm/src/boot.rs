//! Loading the guest: hyperd's uncompressed ELF vmlinux (linux-loader), its 64-bit entry
//! (and the PVH entry qemu uses), the initramfs, the kernel command line, and the zero
//! page with the e820 map of guest memory (Linux's 64-bit boot protocol).
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use std::path::Path;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the kernel goes (1 MiB, above the legacy area) and the command line (below it).
pub const HIMEM_START: u64 = 0x10_0000;
pub const CMDLINE_START: u64 = 0x2_0000;
pub const CMDLINE_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {0}: {1}")]
    Kernel(String, String),
    #[error("the kernel has no PVH entry point (build it with CONFIG_PVH)")]
    NoPvhEntry,
    #[error("command line: {0}")]
    Cmdline(String),
    #[error("initramfs {0}: {1}")]
    Initrd(String, String),
    #[error("guest memory: {0}")]
    Memory(String),
}

/// The loaded kernel.
#[derive(Debug)]
pub struct LoadedKernel {
    /// The PVH 32-bit entry point.
    pub entry: GuestAddress,
    /// The ELF entry: `startup_64`, where the 64-bit boot protocol starts.
    pub kernel_load: GuestAddress,
    pub kernel_end: u64,
}

/// Loads an ELF vmlinux and its command line into guest memory.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    cmdline: &str,
) -> Result<LoadedKernel, BootError> {
    let mut f = std::fs::File::open(kernel)
        .map_err(|e| BootError::Kernel(kernel.display().to_string(), e.to_string()))?;
    let loaded = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| BootError::Kernel(kernel.display().to_string(), e.to_string()))?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr,
        _ => return Err(BootError::NoPvhEntry),
    };
    let mut c = Cmdline::new(CMDLINE_MAX).map_err(|e| BootError::Cmdline(e.to_string()))?;
    c.insert_str(cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &c)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    Ok(LoadedKernel {
        entry,
        kernel_load: loaded.kernel_load,
        kernel_end: loaded.kernel_end,
    })
}

/// Where an initramfs was put.
#[derive(Debug, Clone, Copy)]
pub struct LoadedInitrd {
    pub addr: GuestAddress,
    pub size: u32,
}

/// Loads an initramfs at the top of guest RAM (below `ram_end`), page aligned, above the
/// kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    ram_end: u64,
) -> Result<LoadedInitrd, BootError> {
    let err = |e: String| BootError::Initrd(path.display().to_string(), e);
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let size = bytes.len() as u64;
    let addr = ram_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or_else(|| err(format!("{size} bytes do not fit in guest memory")))?;
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|e| err(e.to_string()))?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size: size as u32,
    })
}

/// Writes the zero page (`struct boot_params`) the 64-bit entry reads: loader id, command
/// line, initramfs and the e820 map.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    at: GuestAddress,
    cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
    ram_bytes: u64,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.kernel_alignment = 0x100_0000;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr.0 as u32;
        params.hdr.ramdisk_size = i.size;
    }
    let map = e820(ram_bytes);
    for (slot, (addr, size)) in params.e820_table.iter_mut().zip(&map) {
        slot.addr = *addr;
        slot.size = *size;
        slot.r#type = 1; // E820_RAM
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, at)
        .map_err(|e| BootError::Memory(e.to_string()))
}

/// The e820 map of `mem_bytes` of guest RAM: the low 640 KiB, then everything from 1 MiB.
pub fn e820(mem_bytes: u64) -> Vec<(u64, u64)> {
    vec![
        (0, 0x9_fc00),
        (HIMEM_START, mem_bytes.saturating_sub(HIMEM_START)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    /// The project's guest kernel (built by kernel-config/build.sh) loads, with a PVH entry.
    #[test]
    fn loads_hyperds_vmlinux() {
        // Where scripts/setup.sh caches it: HYPERD_KERNEL, HYPERD_CACHE, ~/.cache/hyperd.
        let kernel = std::env::var_os("HYPERD_KERNEL")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HYPERD_CACHE")
                    .map(|d| std::path::PathBuf::from(d).join("vmlinux"))
            })
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/hyperd/vmlinux")
            });
        assert!(
            kernel.exists(),
            "{} is missing: run kernel-config/build.sh",
            kernel.display()
        );
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let k = load_kernel(&mem, &kernel, "console=ttyS0 reboot=k").unwrap();
        assert!(k.kernel_load.0 >= HIMEM_START);
        assert!(k.kernel_end > k.kernel_load.0 && k.kernel_end < 64 << 20);
        assert!(
            k.entry.0 >= HIMEM_START && k.entry.0 < k.kernel_end,
            "{k:?}"
        );
        let mut back = [0u8; 22];
        mem.read_slice(&mut back, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&back[..], b"console=ttyS0 reboot=k");
        // A file that is not a kernel, and a command line too long, are refused.
        let not_elf = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_elf.path(), b"not an ELF file at all").unwrap();
        assert!(matches!(
            load_kernel(&mem, not_elf.path(), ""),
            Err(BootError::Kernel(..))
        ));
        assert!(matches!(
            load_kernel(&mem, &kernel, &"x".repeat(CMDLINE_MAX + 1)),
            Err(BootError::Cmdline(_))
        ));
        assert_eq!(e820(64 << 20)[1], (HIMEM_START, (64 << 20) - HIMEM_START));
    }
}
