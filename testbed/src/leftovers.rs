//! What a run leaves on the host when it dies before it can clean up
//! (SIGKILL, a crash), and the sweep that removes it later.
//!
//! A run [`claim`]s a dir `$TMPDIR/dep8-run.XXXXXX` and holds a lock on its
//! `lock` file while it lives (the kernel drops the lock when the process
//! dies, however it dies). Every temp file of the run is made inside it
//! (`tempfile`'s temp dir points there); the processes the run starts
//! carry the dir in their environment ([`tag`]) and their process groups
//! are written to its `groups` file. What a backend makes outside the dir
//! is noted too: a dir ([`record_path`]), or the command that removes it
//! ([`record_undo`], an lxc container). [`sweep`] (at the start of every
//! run, and `dep8 clean`) finds the dirs whose lock nobody holds: it kills
//! their processes, ends their schroot sessions, removes the dirs they made
//! elsewhere, runs their undo commands and then removes their own dir.
//! A live run's dir and what it recorded, and anything that is not such a
//! dir, is never touched.

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

/// Whether a backend could not clean up within its time ([`keep_for_sweep`]).
static KEEP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Leaves this process's run dir, and what it recorded, for a later sweep:
/// a backend gave up waiting for its clean-up (a hung `schroot
/// --end-session`), so [`release`] must not forget what is left.
pub fn keep_for_sweep() {
    KEEP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`keep_for_sweep`] was called.
pub fn kept_for_sweep() -> bool {
    KEEP.load(std::sync::atomic::Ordering::Relaxed)
}

/// Removes this process's run dir at the end of a run, after running the
/// undo commands it still holds: what its testbed made outside the dir
/// and could not remove itself (a signal stopped its close). Blocks. Not
/// when [`keep_for_sweep`] was called: the dir is then swept once this
/// process is gone.
pub fn release() {
    if kept_for_sweep() {
        if let Some(run) = CURRENT.get() {
            tracing::warn!(
                "{} is left for `dep8 clean` or the next run to sweep",
                run.path.display()
            );
        }
        return;
    }
    if let Some(run) = CURRENT.get() {
        for line in run_undo_commands(&run.path) {
            tracing::info!("left by the testbed: {line}");
        }
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

/// Makes a command about to be started die (SIGKILL) when dep8 dies, so
/// that a SIGKILL of dep8 does not leave it running until the next
/// [`sweep`]: the kernel's parent-death signal (`PR_SET_PDEATHSIG`).
///
/// That signal fires when the *thread* that started the command ends, not
/// the process. Only commands started from async code qualify: tokio's
/// worker threads (and the thread in `block_on`) live as long as the
/// runtime, which dep8 drops only once the run is over. A command started
/// on a `spawn_blocking` thread must not use this: that thread ends when
/// it has been idle for a while (the unshare holder is started there, and
/// ends by itself when dep8's end closes its stdin). Helpers that must
/// clean up their own testbed on the way out (an external virt server,
/// which does so on end of input) must not be killed this way either.
pub fn die_with_dep8(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let dep8 = nix::unistd::getpid();
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (two system calls), and nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // dep8 died before the signal was set: die now.
            if nix::unistd::getppid() != dep8 {
                return Err(std::io::Error::from(nix::errno::Errno::ESRCH));
            }
            Ok(())
        });
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

/// Records a dir the run made outside its own dir (a schroot session's
/// scratch dir in the host's /tmp), so that a sweep removes it if the run
/// dies first. Nothing without a claimed dir.
pub fn record_path(path: &Path) {
    let Some(run) = CURRENT.get() else { return };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.path.join("paths"));
    if let Ok(mut file) = file {
        let _ = writeln!(file, "{}", path.display());
    }
}

/// An undo command noted in the run dir; [`Undo::done`] forgets it once
/// the backend has cleaned up itself.
#[derive(Debug)]
pub struct Undo(Option<PathBuf>);

impl Undo {
    /// The thing is gone: a sweep must not run the command (the name may
    /// be someone else's by then).
    pub fn done(self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Notes `argv`, a command that removes something this run is about to
/// make outside its dir, for a sweep to run if the run dies first. Noted
/// before the thing is made, so that no SIGKILL falls between. Nothing
/// without a claimed dir.
pub fn record_undo(argv: &[String]) -> Undo {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let Some(run) = CURRENT.get() else {
        return Undo(None);
    };
    let dir = run.path.join("undo");
    let path = dir.join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
    // NUL-separated: any argument survives the round trip.
    let written =
        std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, argv.join("\0")));
    match written {
        Ok(()) => Undo(Some(path)),
        Err(e) => {
            tracing::warn!("noting {}: {e}", path.display());
            Undo(None)
        }
    }
}

/// This process's run dir, if it claimed one.
pub fn current() -> Option<PathBuf> {
    CURRENT.get().map(|run| run.path.clone())
}

/// Records a schroot session the run is about to begin as `name`, so that
/// a sweep ends it if the run dies first. Callers may name sessions
/// themselves (debci passes `--session-id=debci-SUITE-ARCH-PACKAGE`), and
/// then the name does not tell whose a session is. Nothing without a
/// claimed dir.
pub fn record_schroot_session(name: &str) {
    let Some(run) = CURRENT.get() else { return };
    let _ = OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.path.join("sessions"))
        .and_then(|mut file| writeln!(file, "{name}"));
}

/// What a [`sweep`] did.
#[derive(Debug, Default)]
pub struct Swept {
    /// A line per thing done for dead runs.
    pub done: Vec<String>,
    /// A line per run dir left alone because its run is alive.
    pub live: Vec<String>,
}

/// Removes what dead runs left: kills their process groups, ends their
/// schroot sessions, removes their dirs. A run that is dying (killed, its
/// process not yet gone) is waited for, so that a sweep right after a
/// `kill -9` does not take it for a live one.
pub fn sweep() -> Swept {
    let mut swept = Swept::default();
    let base = CURRENT
        .get()
        .and_then(|r| r.path.parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
    let Ok(entries) = std::fs::read_dir(&base) else {
        return swept;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_run = entry.file_name().to_string_lossy().starts_with(PREFIX);
        if !is_run || CURRENT.get().is_some_and(|r| r.path == dir) {
            continue;
        }
        // Only our own runs: what another user put in a shared $TMPDIR
        // must not make us kill or remove anything.
        let ours = std::fs::symlink_metadata(&dir).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw()
        });
        if !ours {
            continue;
        }
        // No pid yet: a run still starting. Lock held: a live run.
        if !dir.join("pid").exists() {
            continue;
        }
        let Ok(lock) = File::open(dir.join("lock")) else {
            continue;
        };
        match lock_of_dead_run(&dir, lock) {
            Ok(_held) => swept.done.extend(sweep_dead(&dir)),
            Err(pid) => swept.live.push(format!(
                "left {}: its run (pid {pid}) is running",
                dir.display()
            )),
        }
    }
    swept
}

/// How long a sweep waits for a run whose process is exiting.
const DYING_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a sweep waits for a run whose process is gone (or a zombie)
/// while something still holds its lock: a child it forked, on its way to
/// exec or death. A run whose pid this sweep cannot see (another pid
/// namespace sharing the temp dir) holds it for good, and is left alone
/// after this.
const GONE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The run dir's lock, once its run is dead: at once if nobody holds it;
/// after a wait (at most [`DYING_LIMIT`] or [`GONE_LIMIT`]) if its run's
/// process is exiting or gone. Otherwise the run's pid, as the pid file
/// says.
fn lock_of_dead_run(dir: &Path, lock: File) -> Result<Flock<File>, String> {
    let pid = std::fs::read_to_string(dir.join("pid"))
        .map(|p| p.trim().to_string())
        .unwrap_or_default();
    let started = std::time::Instant::now();
    let mut lock = lock;
    loop {
        lock = match Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
            Ok(held) => return Ok(held),
            Err((lock, _)) => lock,
        };
        let limit = match pid.parse().map(process_state) {
            Ok(ProcessState::Exiting) => DYING_LIMIT,
            Ok(ProcessState::Gone) => GONE_LIMIT,
            Ok(ProcessState::Running) | Err(_) => return Err(pid),
        };
        if started.elapsed() >= limit {
            return Err(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Where a process is in its life, as far as its open files go.
#[derive(Debug, PartialEq, Eq)]
enum ProcessState {
    Running,
    /// SIGKILL pending, or exiting: its open files (a run's lock) go once
    /// all its threads have exited, which may take a moment after
    /// `kill -9` returns.
    Exiting,
    /// No such process, or a zombie (which holds no files).
    Gone,
}

/// `PF_EXITING` in a task's flags (the kernel's include/linux/sched.h).
const PF_EXITING: u64 = 0x4;

fn process_state(pid: u32) -> ProcessState {
    let (Some(stat), Ok(status)) = (
        stat_fields(format!("/proc/{pid}/stat")),
        std::fs::read_to_string(format!("/proc/{pid}/status")),
    ) else {
        return ProcessState::Gone;
    };
    let zombie = is_zombie(&stat);
    let exiting = stat
        .get(6)
        .and_then(|flags| flags.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_EXITING != 0);
    // Pending signals, the process's own (ShdPnd) and its first thread's.
    const SIGKILL_BIT: u64 = 1 << (Signal::SIGKILL as u64 - 1);
    let kill_pending = status.lines().any(|line| {
        line.strip_prefix("ShdPnd:")
            .or_else(|| line.strip_prefix("SigPnd:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & SIGKILL_BIT != 0)
    });
    match (zombie, kill_pending || exiting) {
        // A killed process's first thread may be a zombie while its other
        // threads still exit (and hold its files).
        (true, _) if live_threads(pid) > 0 => ProcessState::Exiting,
        (true, _) => ProcessState::Gone,
        (false, true) => ProcessState::Exiting,
        (false, false) => ProcessState::Running,
    }
}

/// How many threads of process `pid` are not zombies.
fn live_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|task| stat_fields(task.path().join("stat")).is_some_and(|s| !is_zombie(&s)))
        .count()
}

/// Whether the fields of a `stat` file ([`stat_fields`]) are a zombie's
/// (or a dead task's).
fn is_zombie(stat: &[String]) -> bool {
    stat.first()
        .is_some_and(|state| matches!(state.as_str(), "Z" | "X"))
}

/// How long a sweep waits for a dead run's killed processes to be gone.
const KILLED_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

fn sweep_dead(dir: &Path) -> Vec<String> {
    let mut done = Vec::new();
    let groups = std::fs::read_to_string(dir.join("groups")).unwrap_or_default();
    let mut killed_groups = Vec::new();
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
            killed_groups.push(leader);
        }
    }
    let mark = format!("{ENV}={}\0", dir.display());
    let mut killed = Vec::new();
    for pid in tagged(&mark) {
        if nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
            done.push(format!("killed process {pid}"));
            killed.push(pid);
        }
    }
    // A killed `schroot --begin-session` may still be making its session,
    // and a killed process may still hold a mount: what they leave is only
    // known once they are gone.
    let survivors = await_gone(&killed_groups, &killed, KILLED_LIMIT);
    if !survivors.is_empty() {
        done.push(format!(
            "left {} for a later sweep: still running {KILLED_LIMIT:?} after SIGKILL: {}",
            dir.display(),
            survivors.join(", ")
        ));
        return done;
    }
    let pid = std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok());
    let recorded = std::fs::read_to_string(dir.join("sessions")).unwrap_or_default();
    let (ended, hung) = end_schroot_sessions(pid, &recorded);
    done.extend(ended);
    if !hung.is_empty() {
        done.push(format!(
            "left {} for a later sweep: {}",
            dir.display(),
            hung.join("; ")
        ));
        return done;
    }
    // After the sessions: their mounts no longer hold these. Only dirs
    // dep8 names (`dep8-*`), whatever the file says.
    let paths = std::fs::read_to_string(dir.join("paths")).unwrap_or_default();
    let made_by_dep8 = |p: &&Path| {
        p.is_absolute()
            && p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("dep8-"))
            && !p.components().any(|c| c == std::path::Component::ParentDir)
    };
    for path in paths
        .lines()
        .map(Path::new)
        .filter(made_by_dep8)
        .filter(|p| p.is_dir())
    {
        match std::fs::remove_dir_all(path) {
            Ok(()) => done.push(format!("removed {}", path.display())),
            Err(e) => done.push(format!("cannot remove {}: {e}", path.display())),
        }
    }
    done.extend(run_undo_commands(dir));
    match std::fs::remove_dir_all(dir) {
        Ok(()) => done.push(format!("removed {}", dir.display())),
        Err(e) => done.push(format!("cannot remove {}: {e}", dir.display())),
    }
    done
}

/// Ends the schroot sessions the schroot backend began for the dead run
/// `pid` (it names them `dep8-CHROOT-PID-N`) and those it `recorded` (one
/// name a line: [`record_schroot_session`]). Returns a line per session
/// ended, and the `schroot --end-session`s that did not finish in time.
fn end_schroot_sessions(pid: Option<u32>, recorded: &str) -> (Vec<String>, Vec<String>) {
    let (mut ended, mut hung) = (Vec::new(), Vec::new());
    let Ok(list) =
        crate::exec::host_output_within("schroot", &["--list", "--all-sessions"], SCHROOT_LIMIT)
    else {
        return (ended, hung);
    };
    let suffix = pid.map(|pid| format!("-{pid}-"));
    let names = list
        .lines()
        .filter_map(|l| l.strip_prefix("session:"))
        .filter(|name| {
            let named_after_pid = suffix.as_ref().is_some_and(|suffix| {
                name.starts_with("dep8-")
                    && name
                        .rsplit_once('-')
                        .is_some_and(|(head, _)| format!("{head}-").ends_with(suffix))
            });
            named_after_pid || recorded.lines().any(|line| line == *name)
        });
    for name in names {
        // schroot may fail with EBUSY while the kernel lets go of the
        // session's mounts (its processes were just killed): retried,
        // as the schroot backend does. A hung one is not.
        for attempt in 0..5u64 {
            std::thread::sleep(std::time::Duration::from_millis(200 * attempt));
            let started = std::time::Instant::now();
            match crate::exec::host_output_within(
                "schroot",
                &["--quiet", "--end-session", "--chroot", name],
                SCHROOT_LIMIT,
            ) {
                Ok(_) => {
                    ended.push(format!("ended schroot session {name}"));
                    break;
                }
                Err(e) if started.elapsed() >= SCHROOT_LIMIT => {
                    hung.push(e.detail());
                    break;
                }
                Err(_) => {}
            }
        }
    }
    (ended, hung)
}

/// How long a sweep waits for a `schroot` command.
const SCHROOT_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// The pauses before each try of an undo command: one that fails may have
/// caught its thing in a transition left by the dead run (an lxc clone
/// still starting or stopping), so it is tried again a few times.
const UNDO_RETRIES_MS: [u64; 5] = [0, 300, 700, 1500, 3000];

/// Runs the undo commands a dead run noted ([`record_undo`]), the last
/// noted first (a thing may depend on one made before it: an lxc clone on
/// the run's base container), each until it succeeds or its tries
/// ([`UNDO_RETRIES_MS`]) are spent.
fn run_undo_commands(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("undo")) else {
        return Vec::new();
    };
    let mut notes: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path())))
        .collect();
    notes.sort_unstable_by_key(|(number, _)| std::cmp::Reverse(*number));
    notes
        .into_iter()
        .filter_map(|(_, note)| {
            let argv = std::fs::read_to_string(note).ok()?;
            let argv: Vec<&str> = argv.split('\0').collect();
            let ran = UNDO_RETRIES_MS.iter().any(|&pause| {
                std::thread::sleep(std::time::Duration::from_millis(pause));
                std::process::Command::new(argv[0])
                    .args(&argv[1..])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
            ran.then(|| format!("ran {}", argv.join(" ")))
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

/// Waits (at most `limit`) until no process is left, or only zombies, in
/// the process groups `groups` and of the processes `pids`; returns those
/// still there then, as `process PID` lines.
fn await_gone(groups: &[u32], pids: &[u32], limit: std::time::Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left: Vec<String> = live_processes()
            .filter(|(pid, group)| pids.contains(pid) || groups.contains(group))
            .map(|(pid, _)| format!("process {pid}"))
            .collect();
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The (pid, process group) of every process that is not a zombie.
fn live_processes() -> impl Iterator<Item = (u32, u32)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            // State, ppid, pgrp.
            let stat = stat_fields(e.path().join("stat"))?;
            let group = stat.get(2)?.parse().ok()?;
            (!is_zombie(&stat)).then_some((pid, group))
        })
}

/// A process's start time (clock ticks after boot), from /proc.
fn start_time(pid: u32) -> Option<u64> {
    stat_field(pid, 19)
}

/// Numeric field `n` of /proc/PID/stat, counted from the state (0).
fn stat_field(pid: u32, n: usize) -> Option<u64> {
    stat_fields(format!("/proc/{pid}/stat"))?
        .get(n)?
        .parse()
        .ok()
}

/// The fields of a /proc `stat` file after the command name, from the
/// state (0) on. The name may hold spaces and parentheses: they are
/// counted from the last ')'.
fn stat_fields(path: impl AsRef<Path>) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(String::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_runs_undo_commands_run_with_their_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("an odd name");
        std::fs::create_dir(dir.path().join("undo")).unwrap();
        let argv = ["touch", done.to_str().unwrap()].join("\0");
        std::fs::write(dir.path().join("undo/0"), argv).unwrap();
        let said = run_undo_commands(dir.path());
        assert!(done.exists(), "{said:?}");
        assert_eq!(said, [format!("ran touch {}", done.display())]);
    }

    #[test]
    fn undo_commands_run_the_last_noted_first() {
        let dir = tempfile::tempdir().unwrap();
        let order = dir.path().join("order");
        std::fs::create_dir(dir.path().join("undo")).unwrap();
        // 10 after 2: by number, not by name.
        for n in [2, 10, 1] {
            let script = format!("echo {n} >> {}", order.display());
            std::fs::write(
                dir.path().join(format!("undo/{n}")),
                ["sh", "-c", &script].join("\0"),
            )
            .unwrap();
        }
        run_undo_commands(dir.path());
        assert_eq!(std::fs::read_to_string(&order).unwrap(), "10\n2\n1\n");
    }

    #[test]
    fn await_gone_waits_for_a_killed_group_and_no_longer() {
        use std::os::unix::process::CommandExt;
        let mut leader = std::process::Command::new("sh")
            .args(["-c", "sleep 60 & exec sleep 60"])
            .process_group(0)
            .spawn()
            .unwrap();
        let group = leader.id();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let running = await_gone(&[group], &[], std::time::Duration::ZERO);
        assert_eq!(running.len(), 2, "the shell's two sleeps: {running:?}");
        killpg(Pid::from_raw(group as i32), Signal::SIGKILL).unwrap();
        // The leader stays a zombie until reaped: gone all the same.
        let left = await_gone(&[group], &[], std::time::Duration::from_secs(10));
        assert!(left.is_empty(), "{left:?}");
        leader.wait().unwrap();
    }

    #[test]
    fn an_undo_command_that_fails_at_first_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let tried = dir.path().join("tried");
        std::fs::create_dir(dir.path().join("undo")).unwrap();
        // Fails the first time (a clone still stopping), then succeeds.
        let script = format!("test -e {0} || {{ touch {0}; exit 1; }}", tried.display());
        std::fs::write(dir.path().join("undo/0"), ["sh", "-c", &script].join("\0")).unwrap();
        let said = run_undo_commands(dir.path());
        assert_eq!(said.len(), 1, "{said:?}");
    }

    /// A run dir whose lock a shell holds for `seconds`; its pid file
    /// names `pid`, or the shell if `None`.
    fn run_dir_locked_for(
        seconds: &str,
        pid: Option<u32>,
    ) -> (tempfile::TempDir, std::process::Child) {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("lock");
        let mut holder = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 9>'{}' && flock 9 && echo locked && exec sleep {seconds}",
                lock.display()
            ))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(holder.stdout.take().unwrap(), 7),
            &mut said,
        )
        .unwrap();
        assert_eq!(said, "locked\n");
        let pid = pid.unwrap_or(holder.id());
        std::fs::write(dir.path().join("pid"), format!("{pid}\n")).unwrap();
        (dir, holder)
    }

    #[test]
    fn a_live_runs_dir_is_left_alone_at_once() {
        let (dir, mut holder) = run_dir_locked_for("60", None);
        let started = std::time::Instant::now();
        let lock = File::open(dir.path().join("lock")).unwrap();
        assert_eq!(
            lock_of_dead_run(dir.path(), lock).err(),
            Some(holder.id().to_string())
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        holder.kill().unwrap();
        holder.wait().unwrap();
    }

    #[test]
    fn a_dead_runs_lock_still_held_by_a_child_is_waited_for() {
        // The run's process is gone (no such pid); a process it started
        // still holds the lock for a moment, as a child caught between
        // fork and exec, or a killed dep8's last thread, does.
        let (dir, mut holder) = run_dir_locked_for("0.2", Some(u32::MAX));
        let lock = File::open(dir.path().join("lock")).unwrap();
        assert!(lock_of_dead_run(dir.path(), lock).is_ok());
        assert!(
            holder.try_wait().unwrap().is_some(),
            "taken before the holder ended"
        );
    }

    #[test]
    fn a_killed_process_is_on_its_way_out_and_a_sleeping_one_runs() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        assert_eq!(process_state(child.id()), ProcessState::Running);
        child.kill().unwrap();
        // Exiting, or already a zombie until reaped; then gone.
        assert_ne!(process_state(child.id()), ProcessState::Running);
        child.wait().unwrap();
        assert_eq!(process_state(child.id()), ProcessState::Gone);
        assert_eq!(live_threads(child.id()), 0);
        // This test's process: its threads, this one among them.
        assert!(live_threads(std::process::id()) >= 1);
    }

    #[test]
    fn start_time_of_self_and_of_nobody() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }
}
