//! A GPT disk that boots by BIOS and by UEFI, written into a plain file:
//! no loop device, no device-mapper, nothing mounted.
//!
//! | partition | sectors | what |
//! |---|---|---|
//! | 1 `bios` | 1–2 MiB | GRUB's core.img for BIOS (a BIOS boot partition) |
//! | 2 `esp` | 2–34 MiB | FAT, `EFI/BOOT/BOOTX64.EFI`: GRUB for UEFI |
//! | 3 `root` | 34 MiB–end | ext4 made with `mke2fs -d` at its offset |
//!
//! Both GRUBs are made with `grub-mkimage` with every module they need
//! built in and an early config that finds the root filesystem by UUID and
//! reads `/boot/grub/grub.cfg` there, so the ESP and the BIOS boot
//! partition hold nothing else. The BIOS part is what `grub-bios-setup`
//! would write, done by hand because it wants a block device: `boot.img`
//! into the MBR (its partition table kept) pointing at core.img's first
//! sector, and core.img's first sector pointing at the rest of it.

use super::{run, QemuImageError};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;

/// Where the partitions start, and the sizes of the first two.
const BIOS_BOOT_START: u64 = MIB;
const BIOS_BOOT_SIZE: u64 = MIB;
const ESP_START: u64 = 2 * MIB;
const ESP_SIZE: u64 = 32 * MIB;
const ROOT_START: u64 = ESP_START + ESP_SIZE;
/// The backup GPT at the end of the disk: header and 128 entries.
const BACKUP_GPT: u64 = 33 * SECTOR;

/// GPT partition types: BIOS boot, EFI system, Linux root (x86-64; what
/// systemd's discoverable partitions spec names).
pub const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// Where GRUB's files for each firmware are (grub-pc-bin, grub-efi-amd64-bin).
const GRUB_BIOS_DIR: &str = "/usr/lib/grub/i386-pc";
const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";

/// Modules built into both GRUB images: enough to find the root ext4 by
/// UUID on a GPT (or MBR) disk, run grub.cfg on the serial console and
/// load Linux.
const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "ext2",
    "search",
    "search_fs_uuid",
    "normal",
    "configfile",
    "linux",
    "boot",
    "echo",
    "test",
    "serial",
    "terminal",
];

/// boot.img's fields grub-bios-setup fills in (grub's `boot.h`): the LBA
/// of core.img (8 bytes), and the 2-byte jump that trusts the BIOS's boot
/// drive only when it says "hard disk" (NOPed for a hard disk).
const BOOT_KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE_CHECK: usize = 0x66;
/// boot.img's code ends where the MBR's disk signature and partition table
/// begin; its BIOS parameter block (bytes 3..0x5a) is the disk's own.
const BOOT_BPB: std::ops::Range<usize> = 3..0x5a;
const BOOT_CODE_END: usize = 0x1b8;

/// The sizes of a disk of `total` bytes: the root partition fills it up to
/// the backup GPT, rounded down to whole MiB.
pub struct Layout {
    pub total: u64,
    pub root_size: u64,
}

impl Layout {
    pub fn new(total: u64) -> Result<Self, QemuImageError> {
        let root_size = total.saturating_sub(ROOT_START + BACKUP_GPT) / MIB * MIB;
        if root_size < 256 * MIB {
            return Err(QemuImageError::Usage(format!(
                "--size {total} bytes: too small for a Debian system (at least 512M)"
            )));
        }
        Ok(Layout { total, root_size })
    }

    /// The byte offset of the root filesystem in the disk.
    pub fn root_offset(&self) -> u64 {
        ROOT_START
    }

    /// sfdisk's script for the partition table.
    fn sfdisk_script(&self) -> String {
        let part = |start: u64, size: u64, kind: &str, name: &str| {
            format!(
                "start={}, size={}, type={kind}, name=\"{name}\"\n",
                start / SECTOR,
                size / SECTOR
            )
        };
        [
            "label: gpt\n".to_string(),
            part(BIOS_BOOT_START, BIOS_BOOT_SIZE, BIOS_BOOT_TYPE, "bios"),
            part(ESP_START, ESP_SIZE, ESP_TYPE, "esp"),
            part(ROOT_START, self.root_size, ROOT_TYPE, "root"),
        ]
        .concat()
    }
}

/// Parses a size as mke2fs and qemu-img take it: a number of bytes, or
/// with K, M, G or T (powers of 1024). Hand-rolled: five lines.
pub fn parse_size(text: &str) -> Result<u64, QemuImageError> {
    let bad = || QemuImageError::Usage(format!("--size {text}: not a size (e.g. 2G, 4096M)"));
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let shift = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(bad)
}

/// Writes the partitioned, bootable disk `disk` (a raw file) from the root
/// tree `root`, whose ext4 gets `uuid`. `work` holds the intermediate files.
pub fn write(
    layout: &Layout,
    root: &Path,
    uuid: &str,
    disk: &Path,
    work: &Path,
) -> Result<(), QemuImageError> {
    for dir in [GRUB_BIOS_DIR, GRUB_EFI_DIR] {
        if !Path::new(dir).is_dir() {
            return Err(QemuImageError::Usage(format!(
                "{dir} is missing: install grub-pc-bin and grub-efi-amd64-bin \
                 (the boot loaders written into the image)"
            )));
        }
    }
    let file = std::fs::File::create(disk).map_err(|e| QemuImageError::io(disk.display(), e))?;
    file.set_len(layout.total)
        .map_err(|e| QemuImageError::io(disk.display(), e))?;
    drop(file);
    run_with_input(
        Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(disk),
        &layout.sfdisk_script(),
    )?;
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "dep8-root", "-U", uuid])
        .arg("-E")
        .arg(format!("offset={}", layout.root_offset()))
        .arg("-d")
        .arg(root)
        .arg(disk)
        .arg(format!("{}k", layout.root_size / 1024)))?;

    // The serial console first, so that anything GRUB says (a root it
    // cannot find) is in the console log.
    let early = work.join("grub-early.cfg");
    std::fs::write(
        &early,
        format!(
            "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n\
             search --no-floppy --fs-uuid --set=root {uuid}\nset prefix=($root)/boot/grub\n"
        ),
    )
    .map_err(|e| QemuImageError::io(early.display(), e))?;
    let core = work.join("core.img");
    grub_mkimage("i386-pc", &early, &core, &["biosdisk"])?;
    install_bios(disk, &core)?;
    let efi = work.join("BOOTX64.EFI");
    grub_mkimage("x86_64-efi", &early, &efi, &[])?;
    write_esp(disk, &efi, work)
}

/// `grub-mkimage` for `format` with [`GRUB_MODULES`] and `more`.
fn grub_mkimage(
    format: &str,
    early: &Path,
    out: &Path,
    more: &[&str],
) -> Result<(), QemuImageError> {
    run(Command::new("grub-mkimage")
        .args(["-O", format, "-p", "/boot/grub", "-c"])
        .arg(early)
        .arg("-o")
        .arg(out)
        .args(GRUB_MODULES)
        .args(more))
}

/// Writes core.img into the BIOS boot partition and boot.img's code into
/// the MBR, each pointing at the next.
fn install_bios(disk: &Path, core: &Path) -> Result<(), QemuImageError> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| QemuImageError::io(path.display(), e));
    let mut core_img = read(core)?;
    if core_img.len() as u64 > BIOS_BOOT_SIZE {
        return Err(QemuImageError::Step(format!(
            "GRUB's core.img ({} bytes) does not fit its {BIOS_BOOT_SIZE}-byte partition",
            core_img.len()
        )));
    }
    let core_sector = BIOS_BOOT_START / SECTOR;
    // The blocklist at the end of core.img's first sector (diskboot.img):
    // where the rest of core.img starts; its length is grub-mkimage's.
    let blocklist = SECTOR as usize - 12;
    core_img[blocklist..blocklist + 8].copy_from_slice(&(core_sector + 1).to_le_bytes());
    write_at(disk, BIOS_BOOT_START, &core_img)?;

    let mut boot_img = read(&Path::new(GRUB_BIOS_DIR).join("boot.img"))?;
    boot_img[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8]
        .copy_from_slice(&core_sector.to_le_bytes());
    boot_img[BOOT_DRIVE_CHECK..BOOT_DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    write_at(disk, 0, &boot_img[..BOOT_BPB.start])?;
    write_at(
        disk,
        BOOT_BPB.end as u64,
        &boot_img[BOOT_BPB.end..BOOT_CODE_END],
    )
}

/// Makes the FAT ESP as a file with mkfs.vfat and mtools, holding GRUB as
/// the removable-media path every UEFI firmware boots, and copies it in.
fn write_esp(disk: &Path, efi: &Path, work: &Path) -> Result<(), QemuImageError> {
    let esp = work.join("esp.img");
    run(Command::new("mkfs.vfat")
        .args(["-n", "EFI", "-C"])
        .arg(&esp)
        .arg((ESP_SIZE / 1024).to_string()))?;
    run(Command::new("mmd")
        .arg("-i")
        .arg(&esp)
        .args(["::/EFI", "::/EFI/BOOT"]))?;
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&esp)
        .arg(efi)
        .arg("::/EFI/BOOT/BOOTX64.EFI"))?;
    let bytes = std::fs::read(&esp).map_err(|e| QemuImageError::io(esp.display(), e))?;
    write_at(disk, ESP_START, &bytes)
}

/// Writes `bytes` into `disk` at `offset`, leaving the rest as it is.
fn write_at(disk: &Path, offset: u64, bytes: &[u8]) -> Result<(), QemuImageError> {
    let io = |e| QemuImageError::io(disk.display(), e);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(io)?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    file.write_all(bytes).map_err(io)
}

/// Runs a command with `input` on its stdin; fails as [`run`] does.
fn run_with_input(cmd: &mut Command, input: &str) -> Result<(), QemuImageError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| QemuImageError::Step(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| QemuImageError::io(&program, e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| QemuImageError::io(&program, e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(QemuImageError::Step(format!(
        "{program} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("4096M").unwrap(), 4 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("2X").is_err());
        assert!(parse_size("G").is_err());
    }

    #[test]
    fn layout_fills_the_disk_up_to_the_backup_gpt() {
        let layout = Layout::new(2 << 30).unwrap();
        assert_eq!(layout.root_offset(), 34 * MIB);
        assert!(layout.root_offset() + layout.root_size + BACKUP_GPT <= 2 << 30);
        assert!(layout
            .sfdisk_script()
            .contains(&format!("start=69632, size={}", layout.root_size / 512)));
        assert!(Layout::new(100 * MIB).is_err());
    }
}
