//! Booting: what the image's first sectors say about how it boots, and the
//! watcher that tells when a boot is done (the guest says so) or has failed.

use dep8_testbed::{Result, TestbedError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The GPT partition type of an EFI system partition.
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// The MBR partition type of an EFI system partition.
const MBR_ESP: u8 = 0xef;
/// Sectors read from the image: the MBR, the GPT header and 128 entries.
const SECTORS: usize = 34;

/// What an image's first sectors say about booting it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DiskBoot {
    /// Boot code in the MBR (GRUB's boot.img, SYSLINUX, ...): a BIOS boots it.
    pub mbr_code: bool,
    /// An EFI system partition (GPT or MBR): UEFI firmware boots from it.
    pub esp: bool,
}

impl DiskBoot {
    /// Reads the first sectors of `image` (in `format`) with `qemu-img dd`
    /// into `work`.
    pub fn inspect(image: &Path, format: &str, work: &Path) -> Result<DiskBoot> {
        let out = work.join("first-sectors");
        let _ = std::fs::remove_file(&out);
        dep8_testbed::exec::host_command(
            "qemu-img",
            &[
                "dd",
                "-f",
                format,
                "-O",
                "raw",
                "bs=512",
                &format!("count={SECTORS}"),
                &format!("if={}", image.display()),
                &format!("of={}", out.display()),
            ],
        )?;
        let bytes = std::fs::read(&out).map_err(|e| TestbedError::failure(out.display(), e))?;
        let _ = std::fs::remove_file(&out);
        Ok(DiskBoot::parse(&bytes))
    }

    fn parse(bytes: &[u8]) -> DiskBoot {
        let mut found = DiskBoot::default();
        if bytes.len() < 512 || bytes[510..512] != [0x55, 0xaa] {
            return found;
        }
        found.mbr_code = bytes[..440].iter().any(|&b| b != 0);
        let gpt = bytes.get(512..1024).filter(|h| h.starts_with(b"EFI PART"));
        let Some(header) = gpt else {
            found.esp = (0..4).any(|i| bytes[0x1be + 16 * i + 4] == MBR_ESP);
            return found;
        };
        let le32 = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        let entries_lba = u64::from_le_bytes(header[72..80].try_into().unwrap()) as usize;
        let (count, size) = (le32(80) as usize, le32(84) as usize);
        for i in 0..count {
            let at = entries_lba * 512 + i * size;
            let Some(entry) = bytes.get(at..at + 16) else {
                break;
            };
            found.esp |= guid(entry) == ESP_TYPE;
        }
        found
    }
}

/// A GUID as GPT stores it (the first three fields little-endian), in
/// its usual upper-case text form.
fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

/// A guest that has written nothing to its serial console for this long
/// does not boot.
const SILENT_CONSOLE: Duration = Duration::from_secs(60);

/// How often a boot in progress is reported (`-d`).
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How long a login prompt waits for the readiness signal before it is
/// taken as the sign: dep8's images print the prompt about when sshd is
/// up, and an image without dep8's readiness unit never signals.
const LOGIN_GRACE: Duration = Duration::from_secs(5);

/// How often the watcher looks.
const TICK: Duration = Duration::from_millis(50);

/// What firmware prints when it found nothing to boot: SeaBIOS, and OVMF
/// past the disks (trying the network, which dep8 never boots from, or
/// its UEFI shell).
const NOTHING_TO_BOOT: [&str; 4] = [
    "No bootable device",
    "Start PXE over",
    "Start HTTP Boot",
    "Shell> ",
];

/// The files one boot is watched through.
#[derive(Clone)]
pub struct BootFiles {
    /// The serial console (appended across boots).
    pub console: PathBuf,
    /// SeaBIOS's debug port.
    pub firmware: PathBuf,
    /// dep8's virtio-serial readiness port: the guest writes a line once
    /// sshd is up (`dep8-ready.service` in dep8's images).
    pub ready: PathBuf,
    /// QEMU's own stdout and stderr.
    pub qemu_log: PathBuf,
}

/// How the guest said it is up.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// dep8's readiness port.
    Signalled,
    /// A login prompt on the serial console and no signal for
    /// [`LOGIN_GRACE`] (an image without dep8's readiness unit).
    LoginPrompt,
}

/// The one watcher of a boot: until the guest says it is up, it fails the
/// boot as soon as QEMU exits, the firmware finds nothing to boot, the
/// console stays silent for [`SILENT_CONSOLE`], or `limit` passes; every
/// error carries the console's tail. With `show` the console is copied to
/// stderr as it comes.
pub struct BootWatch {
    files: BootFiles,
    what: String,
    show: bool,
    console_from: u64,
    ready_from: u64,
}

impl BootWatch {
    /// Starts watching a boot of `what` (the image) from now on: what the
    /// files held before is not this boot's.
    pub fn new(files: BootFiles, what: String, show: bool) -> Self {
        BootWatch {
            console_from: file_len(&files.console),
            ready_from: file_len(&files.ready),
            files,
            what,
            show,
        }
    }

    /// Waits until the guest is up.
    pub async fn wait(
        &mut self,
        qemu: &mut tokio::process::Child,
        limit: Duration,
    ) -> Result<Ready> {
        let started = Instant::now();
        let mut reported = Duration::ZERO;
        let mut shown = self.console_from;
        let silence = SILENT_CONSOLE.min(limit);
        let mut login_prompt: Option<Instant> = None;
        loop {
            let waited = started.elapsed();
            let console = read_from(&self.files.console, self.console_from);
            if self.show {
                let new = &console[(shown - self.console_from) as usize..];
                let _ = std::io::stderr().write_all(new);
                shown += new.len() as u64;
            }
            let text = String::from_utf8_lossy(&console);
            if !read_from(&self.files.ready, self.ready_from).is_empty() {
                return Ok(Ready::Signalled);
            }
            if text.contains(" login: ") {
                let seen = *login_prompt.get_or_insert_with(Instant::now);
                if seen.elapsed() > LOGIN_GRACE {
                    return Ok(Ready::LoginPrompt);
                }
            }
            if let Ok(Some(status)) = qemu.try_wait() {
                return Err(self.failure(format!(
                    "QEMU exited while booting {} ({status}): {}",
                    self.what,
                    tail(&self.files.qemu_log, 5)
                )));
            }
            let firmware = tail(&self.files.firmware, 5);
            let end = tail_of(&text, 15);
            if let Some(line) = firmware
                .lines()
                .find(|l| l.starts_with(crate::pvh::FAILURE_MARK))
            {
                return Err(self.failure(format!(
                    "{} cannot be booted: the kernel could not be loaded ({line}); \
                     does it fit in the guest's RAM (--ram-size)?",
                    self.what
                )));
            }
            if NOTHING_TO_BOOT
                .iter()
                .any(|w| end.contains(w) || firmware.contains(w))
            {
                return Err(self.failure(format!(
                    "{} cannot be booted: the firmware found no boot loader on it \
                     (and no kernel was given with --kernel); firmware:\n{firmware}",
                    self.what
                )));
            }
            if console.is_empty() && waited > silence {
                return Err(self.failure(format!(
                    "{} does not boot: the serial console stayed silent for {}s \
                     (no boot loader or kernel writes to it)",
                    self.what,
                    silence.as_secs()
                )));
            }
            if waited > limit {
                return Err(self.failure(format!(
                    "{} did not come up within {}s",
                    self.what,
                    limit.as_secs()
                )));
            }
            if waited >= reported + PROGRESS_EVERY {
                reported = waited;
                let last = tail_of(&text, 1);
                tracing::info!(
                    "qemu: booting for {}s; console: {}",
                    waited.as_secs(),
                    if console.is_empty() {
                        "(silent)"
                    } else {
                        last.trim()
                    }
                );
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// A boot failure with this boot's console tail.
    fn failure(&self, msg: String) -> TestbedError {
        let console = tail_from(&self.files.console, self.console_from, 15);
        TestbedError::Failure(format!("{msg}\nconsole:\n{console}"))
    }
}

/// The bytes of `path` from `offset` on (none if it is missing).
fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut bytes);
        }
    }
    bytes
}

/// The length of `path` (0 if it is missing): where what is appended to
/// it from now on starts.
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    tail_of(&std::fs::read_to_string(path).unwrap_or_default(), lines)
}

/// The last `lines` lines of what was appended to a log file from
/// `offset` on, for error messages.
pub fn tail_from(path: &Path, offset: u64, lines: usize) -> String {
    tail_of(&String::from_utf8_lossy(&read_from(path, offset)), lines)
}

pub fn tail_of(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk as `dep8 image build qemu` lays it out (sfdisk on a file),
    /// with and without boot code in the MBR.
    #[test]
    fn reads_the_partition_table() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let script = format!(
            "label: gpt\nstart=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649\n\
             start=4096, size=8192, type={ESP_TYPE}\nstart=12288, type=linux\n"
        );
        let mut sfdisk = std::process::Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&disk)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sfdisk (package fdisk)");
        sfdisk
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(sfdisk.wait().unwrap().success());
        let found = DiskBoot::inspect(&disk, "raw", dir.path()).unwrap();
        assert_eq!(
            found,
            DiskBoot {
                mbr_code: false,
                esp: true
            }
        );
        let mut bytes = std::fs::read(&disk).unwrap();
        bytes[0] = 0xeb;
        assert!(DiskBoot::parse(&bytes).mbr_code);
        // No partition table at all.
        assert_eq!(DiskBoot::parse(&[0u8; 17408]), DiskBoot::default());
    }

    /// The watcher on files written by hand and a stand-in for QEMU: the
    /// readiness line, the firmware's words, QEMU exiting, silence; what
    /// the files held before the watch began is not this boot's.
    #[tokio::test]
    async fn the_watcher_tells_up_from_failed() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| dir.path().join(name);
        let files = BootFiles {
            console: file("console"),
            firmware: file("firmware"),
            ready: file("ready"),
            qemu_log: file("qemu.log"),
        };
        let append = |path: &Path, text: &str| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        append(&files.ready, "ready\n");
        append(&files.firmware, "No bootable device.\n");
        let mut qemu = tokio::process::Command::new("sleep")
            .arg("600")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let watch = || BootWatch::new(files.clone(), "disk.img".into(), false);
        let limit = Duration::from_secs(60);

        let mut up = watch();
        append(&files.console, "GRUB: loading Linux\n");
        append(&files.ready, "ready\n");
        assert_eq!(up.wait(&mut qemu, limit).await.unwrap(), Ready::Signalled);

        std::fs::write(&files.firmware, "").unwrap();
        let mut nothing = watch();
        append(&files.firmware, "No bootable device.\n");
        let err = nothing
            .wait(&mut qemu, limit)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("disk.img cannot be booted"), "{err}");
        std::fs::write(&files.firmware, "").unwrap();

        let mut silent = watch();
        let err = silent
            .wait(&mut qemu, Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("stayed silent"), "{err}");

        let mut exited = tokio::process::Command::new("true").spawn().unwrap();
        let mut gone = watch();
        append(&files.console, "[    0.000000] Linux version 6.1\n");
        let err = gone.wait(&mut exited, limit).await.unwrap_err().to_string();
        assert!(
            err.contains("QEMU exited") && err.contains("Linux version"),
            "{err}"
        );
    }

    #[test]
    fn guid_text() {
        let bytes = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        assert_eq!(guid(&bytes), ESP_TYPE);
    }
}
