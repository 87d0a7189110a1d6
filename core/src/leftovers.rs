//! What a run leaves on the host when it dies before it can clean up
//! (SIGKILL, a crash), and the sweep that removes it later.
//!
//! A run [`claim`]s a dir `$TMPDIR/dep8-run.XXXXXX` and holds a lock on its
//! `lock` file while it lives (the kernel drops the lock when the process
//! dies, however it dies). Every temp file of the run is made inside it
//! (`tempfile`'s temp dir points there); the processes the run starts
//! carry the dir in their environment ([`tag`]) and their process groups
//! are written to its `groups` file. [`sweep`] (at the start of every run,
//! and `dep8 clean`) finds the dirs whose lock nobody holds: it kills their
//! processes, ends their schroot sessions and removes the dir.
//! A live run's dir, and anything that is not such a dir, is never touched.

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

const PREFIX: &str = "dep8-run.";

/// The environment variable that marks a run's processes with its dir.
const ENV: &str = "DEP8_RUN_DIR";

/// This process's run dir, once claimed.
struct RunDir {
    path: PathBuf,
    groups: Mutex<File>,
    _lock: Flock<File>,
}

static CURRENT: OnceLock<RunDir> = OnceLock::new();

/// Claims a run dir for this process and points every later temp file
/// into it. Once per process, before any other thread is started (it sets
/// an environment variable); later calls return the same dir.
pub fn claim() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(run) = CURRENT.get() {
        return Ok(run.path.clone());
    }
    let path = tempfile::Builder::new().prefix(PREFIX).tempdir()?.keep();
    // Traversable, as the temp dirs it holds are (a test's normal user
    // reaches the tree on null); writable by the owner only.
    let traversable = || std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(&path, traversable())?;
    let lock = File::create(path.join("lock"))?;
    let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| std::io::Error::from(errno))?;
    // Written once the lock is held: a sweep ignores a dir without it, so
    // it never takes a starting run for a dead one.
    std::fs::write(path.join("pid"), format!("{}\n", std::process::id()))?;
    std::fs::create_dir(path.join("tmp"))?;
    std::fs::set_permissions(path.join("tmp"), traversable())?;
    let groups = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path.join("groups"))?;
    let tmp = path.join("tmp");
    let _ = tempfile::env::override_temp_dir(&tmp);
    // Inherited from the fork on, so that a child caught between fork and
    // exec by a SIGKILL of dep8 is marked too. Claimed before any thread
    // starts (`dep8 run` claims before its runtime is built).
    std::env::set_var(ENV, &path);
    let run = RunDir {
        path: path.clone(),
        groups: Mutex::new(groups),
        _lock: lock,
    };
    if CURRENT.set(run).is_err() {
        // Another thread claimed first: use its dir, drop this one.
        let _ = std::fs::remove_dir_all(&path);
    }
    Ok(CURRENT.get().map(|r| r.path.clone()).unwrap_or(path))
}

/// Removes this process's run dir at the end of a run that cleaned up
/// after itself.
pub fn release() {
    if let Some(run) = CURRENT.get() {
        if let Err(e) = std::fs::remove_dir_all(&run.path) {
            tracing::warn!("removing {}: {e}", run.path.display());
        }
    }
}

/// Marks a command about to be started as the run's: a sweep finds it (and
/// what it starts) by this mark even if the run died before recording it.
pub fn tag(cmd: &mut std::process::Command) {
    if let Some(run) = CURRENT.get() {
        cmd.env(ENV, &run.path);
    }
}

/// [`tag`], and the command's own temp files go into the run's dir (for
/// helpers such as a virt server, not for tests: their `TMPDIR` is the
/// user's).
pub fn tag_helper(cmd: &mut std::process::Command) {
    tag(cmd);
    if let Some(run) = CURRENT.get() {
        cmd.env("TMPDIR", run.path.join("tmp"));
    }
}

/// Records a process group the run started (by its leader's pid), so that
/// a sweep kills it if the run dies first. Nothing without a claimed dir.
pub fn record_group(leader: u32) {
    let Some(run) = CURRENT.get() else { return };
    let Some(start) = start_time(leader) else {
        return;
    };
    if let Ok(mut file) = run.groups.lock() {
        let _ = writeln!(file, "{leader} {start}");
    }
}

/// Removes what dead runs left: kills their process groups, ends their
/// schroot sessions, removes their dirs. Returns a line per thing done.
pub fn sweep() -> Vec<String> {
    let mut done = Vec::new();
    let base = CURRENT
        .get()
        .and_then(|r| r.path.parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
    let Ok(entries) = std::fs::read_dir(&base) else {
        return done;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_run = entry.file_name().to_string_lossy().starts_with(PREFIX);
        if !is_run || CURRENT.get().is_some_and(|r| r.path == dir) {
            continue;
        }
        // No pid yet: a run still starting. Lock held: a live run.
        if !dir.join("pid").exists() {
            continue;
        }
        let Ok(lock) = File::open(dir.join("lock")) else {
            continue;
        };
        let Ok(_held) = Flock::lock(lock, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        done.extend(sweep_dead(&dir));
    }
    done
}

fn sweep_dead(dir: &Path) -> Vec<String> {
    let mut done = Vec::new();
    let groups = std::fs::read_to_string(dir.join("groups")).unwrap_or_default();
    for line in groups.lines() {
        let mut words = line.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(leader)), Some(Ok(start))) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(leader) = u32::try_from(leader) else {
            continue;
        };
        // A live leader with another start time: the pid was reused.
        if start_time(leader).is_some_and(|now| now != start) {
            continue;
        }
        if killpg(Pid::from_raw(leader as i32), Signal::SIGKILL).is_ok() {
            done.push(format!("killed process group {leader}"));
        }
    }
    let mark = format!("{ENV}={}\0", dir.display());
    for pid in tagged(&mark) {
        if nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
            done.push(format!("killed process {pid}"));
        }
    }
    if let Some(pid) = std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    {
        done.extend(end_schroot_sessions(pid));
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => done.push(format!("removed {}", dir.display())),
        Err(e) => done.push(format!("cannot remove {}: {e}", dir.display())),
    }
    done
}

/// Ends the schroot sessions the schroot backend began for the dead run
/// `pid` (it names them `dep8-CHROOT-PID-N`).
fn end_schroot_sessions(pid: u32) -> Vec<String> {
    let Ok(out) = std::process::Command::new("schroot")
        .args(["--list", "--all-sessions"])
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    let suffix = format!("-{pid}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("session:"))
        .filter(|name| {
            name.starts_with("dep8-")
                && name
                    .rsplit_once('-')
                    .is_some_and(|(head, _)| format!("{head}-").ends_with(&suffix))
        })
        .filter_map(|name| {
            let ended = std::process::Command::new("schroot")
                .args(["--end-session", "--chroot", name])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ended.then(|| format!("ended schroot session {name}"))
        })
        .collect()
}

/// The processes whose environment holds `mark`.
fn tagged(mark: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.windows(mark.len()).any(|w| w == mark.as_bytes()))
        })
        .collect()
}

/// A process's start time (clock ticks after boot), from /proc.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count from the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_and_of_nobody() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }
}
