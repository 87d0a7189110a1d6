//! dep8's package cache, shared by every run on one machine: the `.deb`s
//! apt downloads in testbeds, and the package lists `apt-get update` makes.
//!
//! It works through the [`Testbed`] trait alone (`exec`, `copy_down`,
//! `copy_up`), so every backend gets it — containers, VMs and ssh hosts
//! alike — without mounting anything into the testbed or changing its apt
//! configuration:
//!
//! - **Packages.** Before apt installs, dep8 asks it what it would download
//!   (`--print-uris`: file name and SHA256 from the signed lists), copies
//!   the cached files with those hashes into the testbed's
//!   `/var/cache/apt/archives`, and lets apt fetch the rest. Afterwards the
//!   files apt fetched are copied up and stored under their SHA256. A file
//!   is cached, and handed to a testbed, only when its content has the hash
//!   the testbed's own lists give, so the cache never changes what gets
//!   installed: a stale or corrupt entry is never used (an older version
//!   has another hash, and is simply not asked for).
//! - **Lists.** After `apt-get update`, the testbed's lists are stored under
//!   a key made of its apt sources, architectures, apt configuration and
//!   keyrings. A later update with the same key copies them down: younger
//!   than the maximum age, they are used as they are; older, `apt-get
//!   update` refreshes them, fetching only the indexes that changed (apt
//!   asks the archive with If-Modified-Since). Testbeds with a local
//!   source (`file:`, `copy:`, `cdrom:`) always update: such a repository
//!   can change from one run to the next without a new name.
//!
//! Concurrent runs are safe: entries appear by `rename` of complete files
//! (two runs storing the same package store the same bytes), and a lists
//! entry is replaced under an exclusive `flock` while readers hold a shared
//! one. A failing cache never fails a run: dep8 says why in the log and
//! lets apt download.
//!
//! - **Upgrades.** `-U`'s dist-upgrade and autoremove are a function of
//!   the installed packages, the lists and apt's configuration. When they
//!   changed nothing, the digest of those inputs is noted; a later run
//!   whose testbed has the same digest skips them (and says so), since
//!   they would change nothing again.
//!
//! - **Download plans.** What apt would download for a command is likewise
//!   a function of the command, the packages already in apt's archive and
//!   those same inputs. apt's answer (`--print-uris`) is noted under their
//!   digest, and a testbed in the same state asking the same takes it from
//!   there: each install then costs one apt run, not two. The hashes in it
//!   are those of the lists the digest covers, so they are still the
//!   lists' own.
//!
//! Layout under the cache dir: `debs/SHA256.deb`, `lists/KEY/` (`lists/`
//! and apt's `srcpkgcache.bin`; locked by `lists/KEY.lock`),
//! `upgrades/DIGEST` (empty), `plans/DIGEST` (apt's `--print-uris`),
//! `install-logs/KEY` (apt's output when the layer KEY was kept),
//! `tmp/` (staging, on the same file system for the renames). Backends may
//! keep unpacked root filesystems in `rootfs/` ([`kept`]), and layers of
//! installed packages there under [`AptCache::layer_key`].

use crate::blocking;
use crate::testbed::kept;
pub use crate::testbed::kept::usage;
use crate::testbed::{ExecRequest, Tap, Testbed, TestbedError};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Where apt keeps the packages it downloads, in the testbed.
const ARCHIVES: &str = "/var/cache/apt/archives";

/// Where apt keeps its package lists, in the testbed.
const LISTS: &str = "/var/lib/apt/lists";

/// apt's binary cache of the lists (without the installed packages): kept
/// with them, it spares the next apt command parsing them all again (apt
/// checks it against the lists' sizes and times, which copies keep).
const SRCPKGCACHE: &str = "/var/cache/apt/srcpkgcache.bin";

/// Prints the key of the testbed's apt lists (a SHA256 of everything that
/// decides what `apt-get update` fetches and trusts), then `local` when a
/// source is on the testbed itself, else `remote`.
const LISTS_KEY: &str = r#"{
    cat /etc/apt/sources.list /etc/apt/sources.list.d/* /etc/apt/apt.conf /etc/apt/apt.conf.d/* 2>/dev/null
    dpkg --print-architecture; dpkg --print-foreign-architectures
    find /etc/apt/trusted.gpg /etc/apt/trusted.gpg.d /etc/apt/keyrings /usr/share/keyrings \
        -type f -exec cat {} + 2>/dev/null
} | sha256sum | cut -c1-64
if cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
    grep -qE '^[^#]*(^|[[:space:]]|\])(file|copy|cdrom):'; then echo local; else echo remote; fi
"#;

/// Prints everything that decides what apt resolves in the testbed: the
/// installed packages and their auto-installed marks, the sources, apt's
/// configuration and preferences, the architectures, the machine id (apt's
/// phased updates, as Ubuntu's archive has them, pick machines by it), and
/// the package lists: the Release files, which hold the hashes of the
/// indexes they sign, the name and size of each list a Release file
/// covers, and the whole of any other (a flat repository's without one).
const APT_STATE: &str = r#"cat /var/lib/dpkg/status /var/lib/apt/extended_states /etc/machine-id \
    /etc/apt/sources.list /etc/apt/sources.list.d/* /etc/apt/apt.conf /etc/apt/apt.conf.d/* \
    /etc/apt/preferences /etc/apt/preferences.d/* 2>/dev/null
dpkg --print-architecture; dpkg --print-foreign-architectures
if cd /var/lib/apt/lists 2>/dev/null; then
    set --
    for list in *; do
        [ -f "$list" ] && [ "$list" != lock ] || continue
        case $list in *Release) cat "$list"; continue ;; esac
        signed=
        for release in *Release; do
            release=${release%Release}
            case $list in "${release%In}"*) signed=1; break ;; esac
        done
        if [ -n "$signed" ]; then set -- "$@" "$list"; else cat "$list"; fi
    done
    [ $# -eq 0 ] || wc -c "$@"
fi"#;

/// Prints a SHA256 of what decides what `apt-get dist-upgrade` and `apt-get
/// autoremove` do in the testbed ([`APT_STATE`]).
fn upgrade_inputs_script() -> String {
    format!("{{\n{APT_STATE}\n}} | sha256sum | cut -c1-64")
}

/// Prints a SHA256 of what decides what the apt-get command `$1` would
/// download: the command, the packages already in apt's archive (which
/// apt does not download again), and [`APT_STATE`].
fn plan_inputs_script() -> String {
    format!(
        "{{\nprintf '%s\\n' \"$1\"\n\
         find {ARCHIVES} -maxdepth 1 -name '*.deb' -printf '%f %s\\n' | sort\n\
         {APT_STATE}\n}} | sha256sum | cut -c1-64"
    )
}

/// Prints a SHA256 of what decides what the apt-get script `$1` installs:
/// the script and [`APT_STATE`].
fn install_inputs_script() -> String {
    format!("{{\nprintf '%s\\n' \"$1\"\n{APT_STATE}\n}} | sha256sum | cut -c1-64")
}

/// Empties the testbed's lists (not the lock or `partial/`), before the
/// cached ones are copied in.
const CLEAR_LISTS: &str =
    "find /var/lib/apt/lists -mindepth 1 -maxdepth 1 -type f ! -name lock -delete";

/// Hard-links (else copies) the packages named in the arguments from apt's
/// archive into the dir `$1`, those that exist.
const GATHER: &str = r#"dir=$1; shift; rm -rf "$dir"; mkdir -p "$dir"
cd /var/cache/apt/archives
for f; do [ -f "$f" ] && { ln "$f" "$dir/" 2>/dev/null || cp "$f" "$dir/"; }; done; true"#;

/// What a kept layer holds (see [`AptCache::layer_key`]): changed when what
/// goes into one changes, so that older layers are not used.
const LAYER_FORMAT: &str = "dep8 test dependencies layer 1";

/// How often a lists lock that another run holds is tried again.
const LOCK_RETRY: Duration = Duration::from_millis(100);

/// Why the cache was not used (never fatal: the run goes on without it).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A command or a copy in the testbed failed.
    #[error("{}", .0.detail())]
    Testbed(#[from] TestbedError),
    /// A command in the testbed said why it failed.
    #[error("{0}")]
    Command(String),
    /// A file system call under `path` failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The shared cache, as a run uses it.
#[derive(Clone, Debug)]
pub struct AptCache {
    dir: PathBuf,
    /// Cached lists older than this are refreshed.
    lists_max_age: Duration,
}

/// A package apt would download: its file name in apt's archive and the
/// SHA256 the signed lists give for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Download {
    pub file: String,
    pub sha256: String,
}

/// What the testbed's apt lists are, for the cache.
#[derive(Debug)]
pub enum ListsKey {
    /// Remote sources only: lists with this key may be reused.
    Cacheable(String),
    /// A source on the testbed itself: never reused.
    Local,
}

/// Whether the cached lists were used.
#[derive(Debug)]
pub enum ListsReuse {
    /// Copied into the testbed; this old.
    Reused(Duration),
    /// Not cached for these sources.
    Missing,
    /// Copied into the testbed, but this old: to be updated.
    Stale(Duration),
}

impl AptCache {
    /// The default age under which cached lists are reused.
    pub const DEFAULT_LISTS_MAX_AGE: Duration = Duration::from_secs(300);

    pub fn new(dir: PathBuf, lists_max_age: Duration) -> Self {
        AptCache { dir, lists_max_age }
    }

    /// `$DEP8_CACHE_DIR`; else `/var/cache/dep8` for root and
    /// `$XDG_CACHE_HOME/dep8` (`~/.cache/dep8`) for other users.
    pub fn default_dir() -> Option<PathBuf> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = var("DEP8_CACHE_DIR") {
            return Some(dir.into());
        }
        if nix::unistd::geteuid().is_root() {
            return Some("/var/cache/dep8".into());
        }
        var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .map(|base| base.join("dep8"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn lists_max_age(&self) -> Duration {
        self.lists_max_age
    }

    fn debs(&self) -> PathBuf {
        self.dir.join("debs")
    }

    fn lists(&self, key: &str) -> PathBuf {
        self.dir.join("lists").join(key)
    }

    /// An I/O error of the cache dir.
    fn io_error(&self, source: std::io::Error) -> CacheError {
        CacheError::Io {
            path: self.dir.clone(),
            source,
        }
    }

    /// A new staging dir in the cache (removed on drop), after removing
    /// those a killed run left behind.
    async fn staging(&self) -> Result<tempfile::TempDir, CacheError> {
        let tmp = self.dir.join("tmp");
        blocking(move || {
            std::fs::create_dir_all(&tmp)?;
            remove_stale_staging(&tmp);
            tempfile::Builder::new().prefix(STAGING).tempdir_in(tmp)
        })
        .await
        .map_err(|e| self.io_error(e))
    }

    /// Copies into the testbed's apt archive the cached packages that the
    /// apt-get command `apt` would download, and returns the downloads
    /// still missing (to [`AptCache::store_debs`] after apt ran).
    pub async fn seed_debs(&self, tb: &dyn Testbed, apt: &str, log: &Tap) -> Vec<Download> {
        let planned = match self.planned_downloads(tb, apt, log).await {
            Ok(planned) => planned,
            Err(why) => {
                say(log, &format!("package cache not used: {why}"));
                return Vec::new();
            }
        };
        if planned.is_empty() {
            return planned;
        }
        match self.seed(tb, &planned).await {
            Ok(missing) => {
                let hits = planned.len() - missing.len();
                say(
                    log,
                    &format!(
                        "package cache: {hits} of {} packages from dep8's cache, {} to download",
                        planned.len(),
                        missing.len()
                    ),
                );
                missing
            }
            Err(why) => {
                say(log, &format!("package cache not used: {why}"));
                planned
            }
        }
    }

    /// What apt says `apt` (an apt-get command line) would download.
    /// `--print-uris` gives MD5 sums unless SHA256 is asked for. apt's
    /// answer is remembered under a digest of everything it depends on
    /// ([`plan_inputs_script`]): a testbed in the same state asking the
    /// same gets it from the cache, without apt resolving it all again.
    async fn planned_downloads(
        &self,
        tb: &dyn Testbed,
        apt: &str,
        log: &Tap,
    ) -> Result<Vec<Download>, CacheError> {
        let inputs = self.digest(tb, &plan_inputs_script(), Some(apt)).await.ok();
        let remembered = inputs.as_ref().map(|digest| self.plans().join(digest));
        if let Some(path) = &remembered {
            if let Ok(text) = tokio::fs::read_to_string(path).await {
                return Ok(parse_print_uris(&text));
            }
        }
        let plan = format!("{apt} --print-uris -qq -o Acquire::ForceHash=SHA256");
        let out = tb.exec(ExecRequest::shell(&plan).capture()).await?;
        if !out.status.success() {
            // apt will say why itself when it runs for real.
            return Ok(Vec::new());
        }
        let text = out.stdout_text();
        if let Some(path) = remembered {
            // Not stored, the answer still serves this install.
            if let Err(why) = self.store_note(path, text.clone()).await {
                say(log, &format!("package cache: apt's plan not stored: {why}"));
            }
        }
        Ok(parse_print_uris(&text))
    }

    /// Stores `text` at `path`, a `DIR/DIGEST` note of the cache, by
    /// rename of a complete file.
    async fn store_note(&self, path: PathBuf, text: String) -> Result<(), CacheError> {
        let stage = self.staging().await?;
        blocking(move || {
            std::fs::create_dir_all(path.parent().expect("DIR/DIGEST"))?;
            let staged = stage.path().join("note");
            std::fs::write(&staged, text)?;
            std::fs::rename(staged, path)
        })
        .await
        .map_err(|e| self.io_error(e))
    }

    fn plans(&self) -> PathBuf {
        self.dir.join("plans")
    }

    /// The digest `script` prints in the testbed, given `arg` as `$1`.
    async fn digest(
        &self,
        tb: &dyn Testbed,
        script: &str,
        arg: Option<&str>,
    ) -> Result<String, CacheError> {
        let mut argv = vec!["sh", "-c", script, "digest"];
        argv.extend(arg);
        let out = tb.exec(ExecRequest::new(argv).capture()).await?;
        let digest = out.stdout_text().trim().to_string();
        if !out.status.success() || digest.len() != 64 {
            return Err(CacheError::Command(out.stderr_last_line()));
        }
        Ok(digest)
    }

    /// The key of the layer the apt-get script `apt` leaves on a testbed
    /// whose backend's base is `base` ([`Testbed::layer_base`]): a SHA256
    /// of the base, the command and everything apt decides by. No dot in
    /// it, as [`kept`] wants.
    pub async fn layer_key(
        &self,
        tb: &dyn Testbed,
        base: &str,
        apt: &str,
    ) -> Result<String, CacheError> {
        use sha2::{Digest, Sha256};
        let inputs = self.digest(tb, &install_inputs_script(), Some(apt)).await?;
        let key = Sha256::digest(format!("{LAYER_FORMAT}\n{base}\n{inputs}\n"));
        Ok(format!("{}{key:x}", kept::LAYER_PREFIX))
    }

    /// apt's output when the layer `key` was kept, if stored.
    pub async fn layer_log(&self, key: &str) -> Option<Vec<u8>> {
        tokio::fs::read(self.install_logs().join(key)).await.ok()
    }

    /// Stores `said`, apt's output, with the layer `key`.
    pub async fn note_layer_log(&self, key: &str, said: Vec<u8>) -> Result<(), CacheError> {
        let text = String::from_utf8_lossy(&said).into_owned();
        self.store_note(self.install_logs().join(key), text).await
    }

    fn install_logs(&self) -> PathBuf {
        self.dir.join("install-logs")
    }

    /// The digest of what decides what an upgrade does in the testbed.
    pub async fn upgrade_inputs(&self, tb: &dyn Testbed) -> Result<String, CacheError> {
        self.digest(tb, &upgrade_inputs_script(), None).await
    }

    /// Whether an upgrade from these inputs changed nothing before.
    pub fn upgrade_changed_nothing(&self, inputs: &str) -> bool {
        self.upgrades().join(inputs).exists()
    }

    /// Records that an upgrade from these inputs changed nothing.
    pub async fn note_upgrade_changed_nothing(&self, inputs: &str) -> Result<(), CacheError> {
        self.store_note(self.upgrades().join(inputs), String::new())
            .await
    }

    fn upgrades(&self) -> PathBuf {
        self.dir.join("upgrades")
    }

    /// Copies the cached ones of `planned` down; returns the others.
    async fn seed(
        &self,
        tb: &dyn Testbed,
        planned: &[Download],
    ) -> Result<Vec<Download>, CacheError> {
        let stage = self.staging().await?;
        let linked = blocking({
            let (debs, stage, planned) = (self.debs(), stage.path().to_owned(), planned.to_vec());
            move || {
                planned
                    .into_iter()
                    .filter(|download| {
                        let cached = debs.join(format!("{}.deb", download.sha256));
                        std::fs::hard_link(cached, stage.join(&download.file)).is_ok()
                    })
                    .map(|download| download.file)
                    .collect::<Vec<_>>()
            }
        })
        .await;
        // A file whose content is not what its name says (a disk error, a
        // hand edit) is never handed to apt.
        let good = sha256_of(stage.path(), &linked).await?;
        let mut missing = Vec::new();
        for download in planned {
            if good.get(&download.file) != Some(&download.sha256) {
                let _ = tokio::fs::remove_file(stage.path().join(&download.file)).await;
                missing.push(download.clone());
            }
        }
        if missing.len() < planned.len() {
            tb.copy_down(stage.path(), ARCHIVES).await?;
        }
        Ok(missing)
    }

    /// Stores the packages of `downloads` that apt fetched into the
    /// testbed's archive, those whose content has the expected hash.
    pub async fn store_debs(&self, tb: &dyn Testbed, downloads: &[Download], log: &Tap) {
        if downloads.is_empty() {
            return;
        }
        match self.store(tb, downloads).await {
            Ok(0) => {}
            Ok(n) => say(log, &format!("package cache: stored {n} new packages")),
            Err(why) => say(log, &format!("package cache: not stored: {why}")),
        }
    }

    async fn store(&self, tb: &dyn Testbed, downloads: &[Download]) -> Result<usize, CacheError> {
        let gathered = "/var/cache/apt/dep8-gathered";
        let mut argv = vec!["sh", "-ec", GATHER, "gather", gathered];
        argv.extend(downloads.iter().map(|d| d.file.as_str()));
        let out = tb.exec(ExecRequest::new(argv).capture()).await?;
        if !out.status.success() {
            return Err(CacheError::Command(out.stderr_last_line()));
        }
        let stage = self.staging().await?;
        let copied = tb.copy_up(gathered, stage.path()).await;
        let removed = tb
            .exec(ExecRequest::new(["rm", "-rf", gathered]).capture())
            .await;
        copied?;
        removed?;
        let names: Vec<String> = downloads.iter().map(|d| d.file.clone()).collect();
        let hashes = sha256_of(stage.path(), &names).await?;
        let verified: Vec<Download> = downloads
            .iter()
            .filter(|d| hashes.get(&d.file) == Some(&d.sha256))
            .cloned()
            .collect();
        let (debs, staged) = (self.debs(), stage.path().to_owned());
        blocking(move || {
            std::fs::create_dir_all(&debs)?;
            for download in &verified {
                let target = debs.join(format!("{}.deb", download.sha256));
                std::fs::rename(staged.join(&download.file), target)?;
            }
            Ok(verified.len())
        })
        .await
        .map_err(|e| self.io_error(e))
    }

    /// The key of the testbed's current apt configuration.
    pub async fn lists_key(&self, tb: &dyn Testbed) -> Result<ListsKey, TestbedError> {
        let out = tb.exec(ExecRequest::shell(LISTS_KEY).capture()).await?;
        let text = out.stdout_text();
        let mut words = text.split_whitespace();
        match (words.next(), words.next()) {
            (_, Some("local")) => Ok(ListsKey::Local),
            (Some(key), Some("remote")) if key.len() == 64 => Ok(ListsKey::Cacheable(key.into())),
            _ => Err(TestbedError::Failure(format!(
                "reading the testbed's apt sources failed: {}",
                out.stderr_last_line()
            ))),
        }
    }

    /// Copies the lists cached under `key` into the testbed: as they are
    /// when younger than the maximum age, else as the base `apt-get update`
    /// refreshes (it then fetches only the indexes that changed).
    pub async fn restore_lists(
        &self,
        tb: &dyn Testbed,
        key: &str,
    ) -> Result<ListsReuse, CacheError> {
        let dir = self.lists(key);
        let _shared = match self.lock_lists(key, FlockArg::LockSharedNonblock).await {
            Ok(lock) => lock,
            Err(_) if !tokio::fs::try_exists(&dir).await.unwrap_or(false) => {
                return Ok(ListsReuse::Missing)
            }
            Err(e) => return Err(e),
        };
        let age = match tokio::fs::metadata(&dir).await.and_then(|m| m.modified()) {
            Ok(mtime) => SystemTime::now()
                .duration_since(mtime)
                .unwrap_or(Duration::ZERO),
            Err(_) => return Ok(ListsReuse::Missing),
        };
        let out = tb.exec(ExecRequest::shell(CLEAR_LISTS).capture()).await?;
        if !out.status.success() {
            return Err(CacheError::Command(out.stderr_last_line()));
        }
        tb.copy_down(&dir.join("lists"), LISTS).await?;
        let srcpkgcache = dir.join("srcpkgcache.bin");
        if tokio::fs::metadata(&srcpkgcache)
            .await
            .is_ok_and(|m| m.is_file())
        {
            tb.copy_down(&srcpkgcache, SRCPKGCACHE).await?;
        }
        Ok(if age > self.lists_max_age {
            ListsReuse::Stale(age)
        } else {
            ListsReuse::Reused(age)
        })
    }

    /// Stores the testbed's lists (just updated) under `key`, replacing
    /// what was there.
    pub async fn store_lists(&self, tb: &dyn Testbed, key: &str) -> Result<(), CacheError> {
        let stage = self.staging().await?;
        let entry = stage.path().join("entry");
        let lists = entry.join("lists");
        tb.copy_up(LISTS, &lists).await?;
        let _ = tokio::fs::remove_file(lists.join("lock")).await;
        let _ = tokio::fs::remove_dir_all(lists.join("partial")).await;
        // Not every apt configuration makes one, and apt removes it while
        // it rebuilds it. Copied only when there: a failed copy is fatal to
        // an autopkgtest virt server.
        let present = tb
            .exec(ExecRequest::new(["test", "-f", SRCPKGCACHE]))
            .await
            .is_ok_and(|out| out.status.success());
        if present {
            let _ = tb
                .copy_up(SRCPKGCACHE, &entry.join("srcpkgcache.bin"))
                .await;
        }
        let _exclusive = self
            .lock_lists(key, FlockArg::LockExclusiveNonblock)
            .await?;
        let dir = self.lists(key);
        // The replaced lists go with the staging dir, off the async threads.
        blocking(move || {
            if dir.exists() {
                std::fs::rename(&dir, stage.path().join("old"))?;
            }
            std::fs::rename(&entry, &dir)?;
            stage.close()
        })
        .await
        .map_err(|e| self.io_error(e))
    }

    /// Takes `key`'s lock (`how`: shared or exclusive, non-blocking),
    /// creating the lists dir. While another run holds it, it is tried
    /// again every [`LOCK_RETRY`] rather than waited for in `flock`: a
    /// thread blocked there cannot be cancelled, and would keep dep8 alive
    /// after Ctrl-C until the other run lets go.
    async fn lock_lists(
        &self,
        key: &str,
        how: FlockArg,
    ) -> Result<Flock<std::fs::File>, CacheError> {
        let path = self.dir.join("lists").join(format!("{key}.lock"));
        let io = |source: std::io::Error| CacheError::Io {
            path: path.clone(),
            source,
        };
        let mut file = blocking({
            let path = path.clone();
            move || {
                std::fs::create_dir_all(path.parent().expect("in lists/"))?;
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
            }
        })
        .await
        .map_err(io)?;
        loop {
            match Flock::lock(file, how) {
                Ok(lock) => return Ok(lock),
                Err((unlocked, Errno::EWOULDBLOCK)) => {
                    file = unlocked;
                    tokio::time::sleep(LOCK_RETRY).await;
                }
                Err((_, errno)) => return Err(io(errno.into())),
            }
        }
    }
}

/// The name prefix of the staging dirs under the cache's `tmp/`.
const STAGING: &str = "stage.";

/// A staging dir older than this belongs to a run that was killed: storing
/// packages or lists takes seconds.
const STALE_STAGING: Duration = Duration::from_secs(3600);

/// Removes the staging dirs under `tmp` older than [`STALE_STAGING`]
/// (their runs were killed before they could); errors are ignored, the
/// next run tries again.
fn remove_stale_staging(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_STAGING));
        if stale && entry.file_name().to_string_lossy().starts_with(STAGING) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Empties the cache dir `dir` (`dep8 cache clean`) but for the kept root
/// filesystems that testbeds use ([`kept::clean`]); says what it freed and
/// what it spared.
pub fn clean(dir: &Path) -> std::io::Result<kept::Cleaned> {
    let mut cleaned = kept::clean(dir)?;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cleaned),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name() == kept::SUBDIR {
            continue;
        }
        let path = entry.path();
        cleaned.freed += usage(&path);
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(cleaned)
}

/// The downloads in `apt-get --print-uris` output (`'URI' FILE SIZE
/// SHA256:HEX` lines); local files (`file:`, `copy:`) and other hashes are
/// left out, as there is nothing to cache.
pub fn parse_print_uris(output: &str) -> Vec<Download> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix('\'')?;
            let (uri, rest) = rest.split_once("' ")?;
            let mut words = rest.split_whitespace();
            let (file, _size, hash) = (words.next()?, words.next()?, words.next()?);
            let sha256 = hash.strip_prefix("SHA256:")?;
            let remote = uri.starts_with("http:") || uri.starts_with("https:");
            let plain = !file.contains('/') && file.ends_with(".deb");
            (remote && plain && sha256.len() == 64).then(|| Download {
                file: file.to_string(),
                sha256: sha256.to_ascii_lowercase(),
            })
        })
        .collect()
}

/// The SHA256 of each of the `files` in `dir` that exists, by name. The
/// `sha2` crate uses the CPU's SHA extensions where it has them: 0.08 s
/// for figlet's 67 build dependencies (58 MB) here, against 0.52 s with
/// coreutils' `sha256sum`.
async fn sha256_of(dir: &Path, files: &[String]) -> Result<BTreeMap<String, String>, CacheError> {
    use sha2::{Digest, Sha256};
    let (dir, files) = (dir.to_owned(), files.to_vec());
    blocking(move || {
        let mut sums = BTreeMap::new();
        for file in files {
            let path = dir.join(&file);
            let mut content = match std::fs::File::open(&path) {
                Ok(content) => content,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CacheError::Io { path, source }),
            };
            let mut hasher = Sha256::new();
            std::io::copy(&mut content, &mut hasher)
                .map_err(|source| CacheError::Io { path, source })?;
            sums.insert(file, format!("{:x}", hasher.finalize()));
        }
        Ok(sums)
    })
    .await
}

/// A line of dep8's own in the setup log, as the runner writes them.
pub fn say(log: &Tap, message: &str) {
    let line = crate::report::log_line(
        crate::events::Level::Info,
        message,
        std::time::SystemTime::now(),
    );
    log(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_downloads() {
        let hex = "a".repeat(64);
        let output = format!(
            "'http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb' hello_2.10-3_amd64.deb 53240 SHA256:{hex}\n\
             'https://x/pool/f/foo_1%3a2.0_all.deb' foo_1%3a2.0_all.deb 10 SHA256:{}\n\
             'file:/srv/repo/bar_1_all.deb' bar_1_all.deb 10 SHA256:{hex}\n\
             'http://x/baz_1_all.deb' baz_1_all.deb 10 MD5Sum:0123\n\
             Reading package lists...\n",
            "B".repeat(64)
        );
        assert_eq!(
            parse_print_uris(&output),
            [
                Download {
                    file: "hello_2.10-3_amd64.deb".into(),
                    sha256: hex.clone()
                },
                Download {
                    file: "foo_1%3a2.0_all.deb".into(),
                    sha256: "b".repeat(64)
                },
            ]
        );
    }

    /// Runs `scenario` on a thread of its own, and fails when it is not
    /// over within `limit` (where a blocked lock would leave it hanging).
    fn within(limit: Duration, scenario: impl FnOnce() + Send + 'static) {
        let (done, over) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            scenario();
            let _ = done.send(());
        });
        match over.recv_timeout(limit) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("still running after {limit:?}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the scenario failed"),
        }
    }

    /// A cache in a new temp dir, with the lists lock of `key` held as
    /// another dep8 would hold it (its own open file).
    fn cache_with_held_lock(key: &str) -> (tempfile::TempDir, AptCache, Flock<std::fs::File>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lists")).unwrap();
        let file = std::fs::File::create(dir.path().join(format!("lists/{key}.lock"))).unwrap();
        let held = Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap();
        let cache = AptCache::new(dir.path().to_owned(), AptCache::DEFAULT_LISTS_MAX_AGE);
        (dir, cache, held)
    }

    fn one_thread_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_held_lists_lock_does_not_stall_the_runtime() {
        within(Duration::from_secs(10), || {
            let (_dir, cache, held) = cache_with_held_lock("k");
            let runtime = one_thread_runtime();
            let waiting = runtime.spawn(async move {
                cache
                    .lock_lists("k", FlockArg::LockSharedNonblock)
                    .await
                    .is_ok()
            });
            // The runtime's one thread goes on with other work meanwhile.
            let ticks = runtime.block_on(async {
                let mut ticks = 0;
                while ticks < 5 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    ticks += 1;
                }
                ticks
            });
            assert_eq!(ticks, 5);
            assert!(!waiting.is_finished(), "locked while another held it");
            drop(held);
            let locked = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(2), waiting).await });
            assert!(matches!(locked, Ok(Ok(true))), "{locked:?}");
        });
    }

    #[test]
    fn a_lists_lock_wait_does_not_outlive_the_runtime() {
        within(Duration::from_secs(10), || {
            let (_dir, cache, _held) = cache_with_held_lock("k");
            let runtime = one_thread_runtime();
            let waiting = runtime.spawn(async move {
                let _ = cache.lock_lists("k", FlockArg::LockExclusiveNonblock).await;
            });
            runtime.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
            assert!(!waiting.is_finished());
            // As dep8 ends on Ctrl-C: the lock is still held, yet the
            // runtime goes without waiting for it.
            let started = std::time::Instant::now();
            drop(runtime);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
        });
    }

    #[test]
    fn a_killed_run_s_staging_dir_goes_when_the_next_run_stages() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        let (old, fresh) = (tmp.join("stage.old"), tmp.join("stage.fresh"));
        for stage in [&old, &fresh] {
            std::fs::create_dir_all(stage.join("debs")).unwrap();
        }
        let hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
        std::fs::File::open(&old)
            .unwrap()
            .set_modified(hours_ago)
            .unwrap();
        let cache = AptCache::new(dir.path().into(), Duration::from_secs(300));
        let stage = one_thread_runtime().block_on(cache.staging()).unwrap();
        assert!(!old.exists(), "the stale staging dir is left");
        assert!(fresh.exists(), "a running stage was removed");
        assert!(stage.path().starts_with(&tmp));
    }

    #[test]
    fn sha256_of_names_each_file_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("abc.deb"), "abc").unwrap();
        let files = ["abc.deb".to_string(), "missing.deb".to_string()];
        let sums = one_thread_runtime()
            .block_on(sha256_of(dir.path(), &files))
            .unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(
            sums,
            BTreeMap::from([("abc.deb".to_string(), abc.to_string())])
        );
    }

    #[test]
    fn clean_empties_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("debs")).unwrap();
        std::fs::write(dir.path().join("debs/x.deb"), "1234").unwrap();
        std::fs::write(dir.path().join("top"), "12").unwrap();
        assert_eq!(clean(dir.path()).unwrap().freed, 6);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(clean(&dir.path().join("none")).unwrap().freed, 0);
    }
}
