//! dep8's PVH loader: how an uncompressed (ELF) kernel boots without
//! making every `loadvm` slower.
//!
//! QEMU starts an ELF kernel by its PVH entry (`-kernel vmlinux`), which
//! spares the seconds a bzImage spends decompressing itself under
//! emulation. But QEMU keeps such a kernel as a ROM blob and writes it
//! into guest RAM again on every system reset, and `loadvm` resets the
//! system before it loads the snapshot. Under TCG that write throws away
//! every translated block of the kernel's code one by one, each time
//! flushing the vCPU's whole jump cache: `perf` showed it as 40% of the
//! main thread's time in a revert, 0.1–0.17 s of each `loadvm`.
//!
//! So QEMU is given a small PVH kernel of dep8's instead
//! (`pvh-loader.S`, assembled into `pvh-loader.bin`), and the real kernel
//! as the fw_cfg file [`FW_CFG_NAME`], which no reset writes anywhere.
//! The loader copies the kernel's segments into place with fw_cfg DMA (a
//! `memcpy` in QEMU) and jumps to the kernel's own PVH entry. A reboot
//! runs it again.
//!
//! The ELF headers are read by hand (a few fields, with positioned reads)
//! rather than with an ELF crate: the kernel is 65 MB and only its
//! program headers and one note are needed.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The fw_cfg file the loader reads the kernel from (`name` in the .S).
pub const FW_CFG_NAME: &str = "opt/dep8/vmlinux";

/// What the loader writes to the firmware log before it halts.
pub const FAILURE_MARK: &str = "dep8 PVH loader:";

/// The loader's code, assembled from `pvh-loader.S` by
/// `as --32` and `ld -m elf_i386 -Ttext=0x800000 --oformat binary`; its
/// last two words are `entry` and `count`, the segment table follows.
const CODE: &[u8] = include_bytes!("pvh-loader.bin");

/// Where the loader is linked to run (8 MiB, below any x86 kernel's
/// 16 MiB load address).
const LOADER_ADDR: u64 = 0x80_0000;

/// Xen's ELF note type for the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// One PT_LOAD segment of the kernel.
#[derive(Debug, Clone, PartialEq)]
struct Segment {
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// What the loader needs to know of a PVH kernel.
#[derive(Debug, PartialEq)]
struct PvhKernel {
    entry: u64,
    segments: Vec<Segment>,
}

/// Writes the loader for `kernel` into `dir` and returns its path, or
/// `None` where `kernel` is not an ELF with a PVH entry that the loader
/// can place (QEMU is then given the kernel itself).
pub fn write_loader(kernel: &Path, dir: &Path) -> Option<PathBuf> {
    let parsed = std::fs::File::open(kernel)
        .ok()
        .and_then(|file| read_kernel(&file))
        .filter(placeable);
    let Some(parsed) = parsed else {
        tracing::debug!(
            "qemu: {} is not a PVH ELF kernel dep8's loader can place",
            kernel.display()
        );
        return None;
    };
    let path = dir.join("pvh-loader.elf");
    match std::fs::write(&path, loader_elf(&parsed)) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!("qemu: writing {}: {e}", path.display());
            None
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_at(file: &std::fs::File, offset: u64, len: u64) -> Option<Vec<u8>> {
    let mut buf = vec![0; usize::try_from(len).ok().filter(|&n| n <= 1 << 20)?];
    file.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}

/// The PVH entry and the segments of a little-endian x86-64 ELF kernel.
fn read_kernel(file: &std::fs::File) -> Option<PvhKernel> {
    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    let header = read_at(file, 0, 64)?;
    let elf64_le_x86_64 = header.starts_with(b"\x7fELF\x02\x01") && u16_at(&header, 18) == 62;
    if !elf64_le_x86_64 {
        return None;
    }
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 32),
        u64::from(u16_at(&header, 54)),
        u64::from(u16_at(&header, 56)),
    );
    if phentsize < 56 {
        return None;
    }
    let table = read_at(file, phoff, phentsize * phnum)?;
    let mut entry = None;
    let mut segments = Vec::new();
    for ph in table.chunks(phentsize as usize) {
        let (kind, offset, paddr) = (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 24));
        let (filesz, memsz, align) = (u64_at(ph, 32), u64_at(ph, 40), u64_at(ph, 48));
        match kind {
            PT_LOAD if memsz > 0 => segments.push(Segment {
                offset,
                paddr,
                filesz,
                memsz,
            }),
            PT_NOTE => entry = entry.or_else(|| pvh_entry(&read_at(file, offset, filesz)?, align)),
            _ => {}
        }
    }
    Some(PvhKernel {
        entry: entry?,
        segments,
    })
}

/// The PVH entry in a PT_NOTE segment's notes (`align`: the segment's).
fn pvh_entry(notes: &[u8], align: u64) -> Option<u64> {
    let up = |n: usize| n.next_multiple_of(align.max(4) as usize);
    let mut at = 0;
    while at + 12 <= notes.len() {
        let (namesz, descsz, kind) = (
            u32_at(notes, at) as usize,
            u32_at(notes, at + 4) as usize,
            u32_at(notes, at + 8),
        );
        let desc = at + 12 + up(namesz);
        let name = notes.get(at + 12..at + 12 + namesz)?;
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == b"Xen\0" {
            let d = notes.get(desc..desc + descsz)?;
            return match descsz {
                4 => Some(u64::from(u32_at(d, 0))),
                8 => Some(u64_at(d, 0)),
                _ => None,
            };
        }
        at = desc + up(descsz);
    }
    None
}

/// Whether the loader can load `kernel`: 32-bit addresses and sizes,
/// segments in file order, none over the loader's page.
fn placeable(kernel: &PvhKernel) -> bool {
    // Sums of a file's own fields: checked, as a crafted ELF may overflow.
    let fits = |n: Option<u64>| n.is_some_and(|n| n <= u64::from(u32::MAX));
    let loader = LOADER_ADDR..LOADER_ADDR + 0x1000;
    let mut end_in_file = 0;
    !kernel.segments.is_empty()
        && fits(Some(kernel.entry))
        && kernel.segments.iter().all(|s| {
            let in_order = s.offset >= end_in_file;
            let (end, file_end) = (s.paddr.checked_add(s.memsz), s.offset.checked_add(s.filesz));
            end_in_file = file_end.unwrap_or(u64::MAX);
            in_order
                && s.filesz <= s.memsz
                && fits(end)
                && fits(file_end)
                && end.is_some_and(|end| end <= loader.start || s.paddr >= loader.end)
        })
}

/// The loader as a PVH ELF: its code, the table for `kernel` after it,
/// one PT_LOAD at [`LOADER_ADDR`] and the PVH note.
fn loader_elf(kernel: &PvhKernel) -> Vec<u8> {
    let mut image = CODE.to_vec();
    let params = image.len() - 8;
    image[params..params + 4].copy_from_slice(&(kernel.entry as u32).to_le_bytes());
    image[params + 4..].copy_from_slice(&(kernel.segments.len() as u32).to_le_bytes());
    let mut in_file = 0;
    for s in &kernel.segments {
        for word in [s.offset - in_file, s.paddr, s.filesz, s.memsz - s.filesz] {
            image.extend((word as u32).to_le_bytes());
        }
        in_file = s.offset + s.filesz;
    }
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    let note_at = EHDR + 2 * PHDR;
    let mut note = Vec::new();
    note.extend(4u32.to_le_bytes());
    note.extend(8u32.to_le_bytes());
    note.extend(XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    note.extend(b"Xen\0");
    note.extend(LOADER_ADDR.to_le_bytes());
    let code_at = note_at + note.len() as u64;

    let mut elf = Vec::new();
    elf.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(62u16.to_le_bytes()); // EM_X86_64
    elf.extend(1u32.to_le_bytes());
    elf.extend(LOADER_ADDR.to_le_bytes()); // e_entry
    elf.extend(EHDR.to_le_bytes()); // e_phoff
    elf.extend(0u64.to_le_bytes()); // e_shoff
    elf.extend(0u32.to_le_bytes()); // e_flags
    for half in [EHDR as u16, PHDR as u16, 2, 64, 0, 0] {
        elf.extend(half.to_le_bytes());
    }
    let mut phdr = |kind: u32, flags: u32, offset: u64, addr: u64, size: u64, align: u64| {
        elf.extend(kind.to_le_bytes());
        elf.extend(flags.to_le_bytes());
        for word in [offset, addr, addr, size, size, align] {
            elf.extend(word.to_le_bytes());
        }
    };
    phdr(1, 7, code_at, LOADER_ADDR, image.len() as u64, 4); // PT_LOAD, RWX
    phdr(4, 4, note_at, 0, note.len() as u64, 4); // PT_NOTE
    elf.extend(note);
    elf.extend(image);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> PvhKernel {
        PvhKernel {
            entry: 0x100_0000 + 0x1234,
            segments: vec![
                Segment {
                    offset: 0x20_0000,
                    paddr: 0x100_0000,
                    filesz: 0x10_0000,
                    memsz: 0x10_0000,
                },
                Segment {
                    offset: 0x40_0000,
                    paddr: 0x200_0000,
                    filesz: 0x1000,
                    memsz: 0x3000,
                },
            ],
        }
    }

    #[test]
    fn the_loader_elf_reads_back_as_a_pvh_kernel_with_its_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loader");
        std::fs::write(&path, loader_elf(&kernel())).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let loader = read_kernel(&file).expect("the loader is a PVH ELF itself");
        assert_eq!(loader.entry, LOADER_ADDR);
        assert_eq!(loader.segments.len(), 1);
        let seg = &loader.segments[0];
        assert_eq!(seg.paddr, LOADER_ADDR);
        let bytes = std::fs::read(&path).unwrap();
        let image = &bytes[seg.offset as usize..(seg.offset + seg.filesz) as usize];
        let table = &image[CODE.len() - 8..];
        let words: Vec<u32> = table.chunks(4).map(|w| u32_at(w, 0)).collect();
        assert_eq!(
            words,
            [
                0x100_1234, 2, // entry, count
                0x20_0000, 0x100_0000, 0x10_0000, 0, // skip, paddr, filesz, zero
                0x10_0000, 0x200_0000, 0x1000, 0x2000,
            ]
        );
    }

    #[test]
    fn kernels_the_loader_cannot_place_are_left_to_qemu() {
        let mut k = kernel();
        k.segments.swap(0, 1);
        assert!(!placeable(&k), "segments out of file order");
        let mut k = kernel();
        k.segments[1].paddr = 0x1_0000_0000;
        assert!(!placeable(&k), "above 4 GiB");
        let mut k = kernel();
        k.segments[0].paddr = LOADER_ADDR - 0x1000;
        assert!(!placeable(&k), "over the loader");
        let mut k = kernel();
        k.segments[1].memsz = u64::MAX;
        assert!(!placeable(&k), "an end past u64");
        assert!(placeable(&kernel()));
        let not_elf = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            not_elf.path(),
            b"MZ not an ELF at all, but long enough to read 64 bytes of it",
        )
        .unwrap();
        assert_eq!(read_kernel(not_elf.as_file()), None);
    }

    /// The committed `pvh-loader.bin` is what `pvh-loader.S` assembles to
    /// (where binutils are installed).
    #[test]
    fn the_loader_code_is_its_source_assembled() {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/pvh-loader.S");
        let (obj, bin) = (dir.path().join("l.o"), dir.path().join("l.bin"));
        let ran = |cmd: &mut std::process::Command| cmd.status().map(|s| s.success());
        match ran(std::process::Command::new("as")
            .arg("--32")
            .arg("-o")
            .arg(&obj)
            .arg(&src))
        {
            Err(e) => {
                eprintln!("SKIP: no assembler ({e})");
                return;
            }
            Ok(ok) => assert!(ok, "as failed on {}", src.display()),
        }
        let linked = ran(std::process::Command::new("ld")
            .args([
                "-m",
                "elf_i386",
                "-Ttext=0x800000",
                "--oformat",
                "binary",
                "-o",
            ])
            .arg(&bin)
            .arg(&obj));
        assert!(linked.unwrap(), "ld failed");
        assert!(
            std::fs::read(&bin).unwrap() == CODE,
            "src/pvh-loader.bin is stale: assemble src/pvh-loader.S again (see CODE's doc)"
        );
    }
}
