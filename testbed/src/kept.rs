//! Root filesystems a backend keeps between runs under dep8's cache dir: a
//! rootfs tarball unpacked once, then used read-only (as an overlay's lower
//! layer) by every testbed opened from it, instead of being unpacked again
//! for each. The testbeds share its pages in the host's page cache, where
//! an unpack each would take RAM the size of the rootfs. The qemu backend
//! keeps a disk layer over an image the same way (keyed by the image), and
//! unshare keeps layers of installed test dependencies over such a tree
//! ([`acquire_keyed`], keyed by what decided the install).
//!
//! Layout under `CACHE/rootfs/` (mode 0700: a rootfs has setuid programs):
//! `KEY/` is the tree, `KEY.lock` names its tarball. A testbed holds a
//! shared `flock` on `KEY.lock` while it uses the tree; unpacking and
//! removing take an exclusive one. A tree appears by `rename` of a
//! complete unpack (`KEY.partial-*` until then). KEY is the tarball's
//! device, inode, size and times: a rebuilt or replaced tarball gets a new
//! key. The tree of a tarball's earlier version is removed by the next
//! open of the tarball, and a tree no run has used for [`UNUSED`] by the
//! next open of any, each once no testbed uses it (and by `dep8 cache
//! clean`, which likewise spares trees in use).

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The subdir of dep8's cache dir that holds kept trees.
pub const SUBDIR: &str = "rootfs";

/// What the keys of layers kept over a tree start with (see
/// [`acquire_keyed`]), so that they can be trimmed apart from the trees.
pub const LAYER_PREFIX: &str = "layer-";

/// A tree unused for this long is removed.
pub const UNUSED: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often a lock held by another run is tried again.
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// A kept tree, in use until dropped (the shared lock on it is held).
pub struct KeptTree {
    path: PathBuf,
    _in_use: Flock<File>,
}

impl KeptTree {
    /// The unpacked tree: to be used read-only.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key it is kept under: it names this tree's content.
    pub fn key(&self) -> String {
        self.path
            .file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
    }
}

/// The tree for `tarball` under `cache_dir`, made first by `unpack(DIR)`
/// (which unpacks the tarball into the empty DIR) when no run has kept one.
/// Blocks while another run unpacks the same tarball.
pub fn acquire(
    cache_dir: &Path,
    tarball: &Path,
    unpack: impl Fn(&Path) -> io::Result<()>,
) -> io::Result<KeptTree> {
    // What the lock file says: the tarball, wherever it was named from.
    let names = format!("{}\n", std::fs::canonicalize(tarball)?.display());
    acquire_keyed(cache_dir, &key(tarball)?, &names, unpack)
}

/// The tree kept under `key` (no dot in it), made first by `make(DIR)`
/// into an empty DIR when no run has kept one. `names` says what the tree
/// is: a tree whose lock file says the same under another key is an
/// earlier version of it, removed once unused (after this one is made).
/// Blocks while another run makes the same tree.
pub fn acquire_keyed(
    cache_dir: &Path,
    key: &str,
    names: &str,
    make: impl Fn(&Path) -> io::Result<()>,
) -> io::Result<KeptTree> {
    let dir = cache_dir.join(SUBDIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let tree = dir.join(key);
    let lock_path = dir.join(format!("{key}.lock"));
    loop {
        if let Some(kept) = in_use(&tree, &lock_path)? {
            // Only now: a tree that could not be made replaces nothing.
            remove_unused(&dir, key, names);
            return Ok(kept);
        }
        let exclusive = lock(&lock_path, FlockArg::LockExclusiveNonblock)?;
        if !tree.is_dir() {
            remove_partials(&dir, key);
            std::fs::write(&lock_path, names)?;
            let partial = tempfile::Builder::new()
                .prefix(&format!("{key}.partial-"))
                .tempdir_in(&dir)?;
            make(partial.path())?;
            std::fs::write(
                dir.join(format!("{key}.size")),
                usage(partial.path()).to_string(),
            )?;
            std::fs::rename(partial.keep(), &tree)?;
        }
        drop(exclusive);
    }
}

/// The tree for `tarball` under `cache_dir` if a run has kept one; `None`
/// otherwise (nothing is made).
pub fn find(cache_dir: &Path, tarball: &Path) -> io::Result<Option<KeptTree>> {
    find_keyed(cache_dir, &key(tarball)?)
}

/// The tree kept under `key` if a run has kept one; `None` otherwise.
pub fn find_keyed(cache_dir: &Path, key: &str) -> io::Result<Option<KeptTree>> {
    let dir = cache_dir.join(SUBDIR);
    if !dir.join(key).is_dir() {
        return Ok(None);
    }
    in_use(&dir.join(key), &dir.join(format!("{key}.lock")))
}

/// `tree`, now in use (its lock file `lock_path` locked shared), if it is
/// there.
fn in_use(tree: &Path, lock_path: &Path) -> io::Result<Option<KeptTree>> {
    let shared = lock(lock_path, FlockArg::LockSharedNonblock)?;
    if !tree.is_dir() {
        return Ok(None);
    }
    // The lock file's time says when the tree was last used.
    shared.set_modified(SystemTime::now())?;
    Ok(Some(KeptTree {
        path: tree.to_path_buf(),
        _in_use: shared,
    }))
}

/// What [`clean`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Cleaned {
    /// The bytes the removed trees took.
    pub freed: u64,
    /// The trees left because a testbed uses them.
    pub in_use: Vec<PathBuf>,
}

/// Removes every kept tree under `cache_dir` that no testbed uses.
pub fn clean(cache_dir: &Path) -> io::Result<Cleaned> {
    let dir = cache_dir.join(SUBDIR);
    let mut cleaned = Cleaned::default();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(cleaned),
        Err(e) => return Err(e),
    };
    let keys: Vec<String> = entries
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.split_once('.')
                .map_or(name.clone(), |(key, _)| key.to_string())
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for key in keys {
        match lock_unused(&dir, &key)? {
            Some(exclusive) => {
                cleaned.freed += size_of(&dir, &key);
                remove(&dir, &key, exclusive)?;
            }
            None => cleaned.in_use.push(dir.join(&key)),
        }
    }
    Ok(cleaned)
}

/// Removes the least recently used trees whose key starts with `prefix`,
/// but those in use, until the others take at most `max` bytes; returns
/// the bytes freed.
pub fn trim(cache_dir: &Path, prefix: &str, max: u64) -> io::Result<u64> {
    let dir = cache_dir.join(SUBDIR);
    let mut trees = Vec::new();
    for entry in std::fs::read_dir(&dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_suffix(".lock") else {
            continue;
        };
        if key.starts_with(prefix) && dir.join(key).is_dir() {
            // The lock file's time says when the tree was last used.
            let used = entry.metadata().and_then(|m| m.modified());
            let used = used.unwrap_or(SystemTime::UNIX_EPOCH);
            trees.push((used, size_of(&dir, key), key.to_string()));
        }
    }
    trees.sort();
    let mut total: u64 = trees.iter().map(|(_, size, _)| size).sum();
    let mut freed = 0;
    for (_, size, key) in trees {
        if total <= max {
            break;
        }
        if let Some(exclusive) = lock_unused(&dir, &key)? {
            remove(&dir, &key, exclusive)?;
            total -= size;
            freed += size;
        }
    }
    Ok(freed)
}

/// The bytes `key`'s tree takes: as noted when it was made (`KEY.size`),
/// else counted.
fn size_of(dir: &Path, key: &str) -> u64 {
    std::fs::read_to_string(dir.join(format!("{key}.size")))
        .ok()
        .and_then(|noted| noted.trim().parse().ok())
        .unwrap_or_else(|| usage(&dir.join(key)))
}

/// The key of `tarball`: its device, inode, size, modification and change
/// times (no dot in it: the names beside the tree add one).
fn key(tarball: &Path) -> io::Result<String> {
    let m = std::fs::metadata(tarball)?;
    Ok(format!(
        "{:x}-{:x}-{:x}-{:x}-{:x}-{:x}-{:x}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// Opens (creating) the lock file and locks it `how` (a non-blocking
/// shared or exclusive lock), waiting while another run holds it.
fn lock(path: &Path, how: FlockArg) -> io::Result<Flock<File>> {
    loop {
        match try_lock(path, how)? {
            Some(locked) => return Ok(locked),
            None => std::thread::sleep(LOCK_RETRY),
        }
    }
}

/// Opens (creating) the lock file and locks it `how` (non-blocking);
/// `None` while another run holds it. A lock file removed and made anew
/// meanwhile (by [`remove`]) is opened and locked again: a lock on the
/// removed one would guard nothing.
fn try_lock(path: &Path, how: FlockArg) -> io::Result<Option<Flock<File>>> {
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let locked = match Flock::lock(file, how) {
            Ok(locked) => locked,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, errno)) => return Err(errno.into()),
        };
        let still_there = std::fs::metadata(path).is_ok_and(|m| {
            locked
                .metadata()
                .is_ok_and(|l| (l.dev(), l.ino()) == (m.dev(), m.ino()))
        });
        if still_there {
            return Ok(Some(locked));
        }
    }
}

/// Removes, unless in use, the trees of earlier versions of the tarball
/// (other keys whose lock file `names` it, as [`acquire`] writes) and the
/// trees of other tarballs unused for [`UNUSED`].
fn remove_unused(dir: &Path, keep: &str, names: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_suffix(".lock") else {
            continue;
        };
        let unused = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > UNUSED));
        let replaced = || std::fs::read_to_string(entry.path()).is_ok_and(|said| said == names);
        if key != keep && (unused || replaced()) {
            let removed = lock_unused(dir, key)
                .and_then(|lock| lock.map_or(Ok(()), |exclusive| remove(dir, key, exclusive)));
            if let Err(e) = removed {
                tracing::warn!("removing the unused tree {}: {e}", dir.join(key).display());
            }
        }
    }
}

/// The exclusive lock on `key`'s tree, for removing it; `None` while a
/// testbed uses the tree.
fn lock_unused(dir: &Path, key: &str) -> io::Result<Option<Flock<File>>> {
    try_lock(
        &dir.join(format!("{key}.lock")),
        FlockArg::LockExclusiveNonblock,
    )
}

/// Removes `key`'s tree, partial unpacks and lock file, holding
/// `exclusive` ([`lock_unused`]) until the lock file is gone.
fn remove(dir: &Path, key: &str, exclusive: Flock<File>) -> io::Result<()> {
    remove_partials(dir, key);
    let tree = dir.join(key);
    if tree.is_dir() {
        // Out of sight first: a run finds either the whole tree or none.
        let gone = tempfile::Builder::new()
            .prefix(&format!("{key}.partial-"))
            .tempdir_in(dir)?;
        std::fs::rename(&tree, gone.path().join("tree"))?;
        gone.close()?;
    }
    match std::fs::remove_file(dir.join(format!("{key}.size"))) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // Still locked: a run that opened the old file sees it gone and retries.
    std::fs::remove_file(dir.join(format!("{key}.lock")))?;
    drop(exclusive);
    Ok(())
}

/// Removes `key`'s partial unpacks (of runs that were killed, or a removed
/// tree); the caller holds the exclusive lock.
fn remove_partials(dir: &Path, key: &str) {
    let prefix = format!("{key}.partial-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The bytes the files under `path` take.
pub fn usage(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| usage(&e.path())).sum())
            .unwrap_or(0),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Makes the tree whose lock file is `lock` look last used at `when`.
    fn set_last_used(lock: &Path, when: SystemTime) {
        let file = File::options().write(true).open(lock).unwrap();
        file.set_modified(when).unwrap();
    }

    fn unpack_marker(count: &AtomicUsize) -> impl Fn(&Path) -> io::Result<()> + '_ {
        move |dir| {
            count.fetch_add(1, Ordering::SeqCst);
            std::fs::write(dir.join("marker"), "unpacked")
        }
    }

    #[test]
    fn a_tarball_is_unpacked_once_and_a_new_one_gets_its_own_tree() {
        let cache = tempfile::tempdir().unwrap();
        let tarball = cache.path().join("root.tar");
        std::fs::write(&tarball, "v1").unwrap();
        let unpacks = AtomicUsize::new(0);
        let first = acquire(cache.path(), &tarball, unpack_marker(&unpacks)).unwrap();
        let second = acquire(cache.path(), &tarball, unpack_marker(&unpacks)).unwrap();
        assert_eq!(first.path(), second.path());
        assert!(first.path().join("marker").is_file());
        assert_eq!(unpacks.load(Ordering::SeqCst), 1);
        // Rewritten: another key, another unpack; the old tree stays
        // while in use, and goes with the next open once unused.
        std::fs::write(&tarball, "version 2").unwrap();
        let third = acquire(cache.path(), &tarball, unpack_marker(&unpacks)).unwrap();
        assert_ne!(third.path(), first.path());
        assert_eq!(unpacks.load(Ordering::SeqCst), 2);
        assert!(first.path().is_dir());
        let old = first.path().to_path_buf();
        drop((first, second));
        let _fourth = acquire(cache.path(), &tarball, unpack_marker(&unpacks)).unwrap();
        assert!(!old.exists());
        assert_eq!(unpacks.load(Ordering::SeqCst), 2);
        let mode = std::fs::metadata(cache.path().join(SUBDIR)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn find_gives_a_kept_tree_and_makes_none() {
        let cache = tempfile::tempdir().unwrap();
        let image = cache.path().join("disk.qcow2");
        std::fs::write(&image, "v1").unwrap();
        assert!(find(cache.path(), &image).unwrap().is_none());
        assert!(!cache.path().join(SUBDIR).exists());
        let unpacks = AtomicUsize::new(0);
        let made = acquire(cache.path(), &image, unpack_marker(&unpacks)).unwrap();
        let found = find(cache.path(), &image).unwrap().expect("the kept tree");
        assert_eq!(found.path(), made.path());
        // In use while found: clean spares it.
        drop(made);
        assert_eq!(
            clean(cache.path()).unwrap().in_use,
            vec![found.path().to_path_buf()]
        );
        drop(found);
        clean(cache.path()).unwrap();
        assert!(find(cache.path(), &image).unwrap().is_none());
    }

    #[test]
    fn trees_kept_by_key_stay_beside_each_other() {
        let cache = tempfile::tempdir().unwrap();
        let makes = AtomicUsize::new(0);
        let a = acquire_keyed(cache.path(), "layer-a", "layer a\n", unpack_marker(&makes)).unwrap();
        drop(a);
        let b = acquire_keyed(cache.path(), "layer-b", "layer b\n", unpack_marker(&makes)).unwrap();
        assert_eq!(b.key(), "layer-b");
        let found = find_keyed(cache.path(), "layer-a")
            .unwrap()
            .expect("layer a");
        assert_eq!(found.key(), "layer-a");
        assert!(found.path().join("marker").is_file());
        assert!(find_keyed(cache.path(), "layer-c").unwrap().is_none());
        let again = acquire_keyed(cache.path(), "layer-a", "layer a\n", unpack_marker(&makes));
        assert_eq!(again.unwrap().path(), found.path());
        assert_eq!(makes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn trim_removes_the_least_recently_used_trees_but_those_in_use() {
        let cache = tempfile::tempdir().unwrap();
        let ten_bytes = |dir: &Path| std::fs::write(dir.join("data"), "0123456789");
        let keys = ["layer-old", "layer-mid", "layer-new", "layer-used"];
        let mut in_use = None;
        for (age, key) in keys.iter().enumerate() {
            let tree = acquire_keyed(cache.path(), key, key, ten_bytes).unwrap();
            let lock = cache.path().join(SUBDIR).join(format!("{key}.lock"));
            let used = SystemTime::now() - Duration::from_secs(3600 * (10 - age as u64));
            set_last_used(&lock, used);
            if *key == "layer-used" {
                in_use = Some(tree);
            }
        }
        // The oldest is in use too: spared, the next oldest go instead.
        let oldest = find_keyed(cache.path(), "layer-old").unwrap().unwrap();
        let lock = cache.path().join(SUBDIR).join("layer-old.lock");
        let long_ago = SystemTime::now() - Duration::from_secs(3600 * 20);
        set_last_used(&lock, long_ago);
        assert_eq!(trim(cache.path(), "layer-", 20).unwrap(), 20);
        let left: Vec<bool> = keys
            .iter()
            .map(|key| cache.path().join(SUBDIR).join(key).is_dir())
            .collect();
        assert_eq!(left, [true, false, false, true]);
        assert!(!cache.path().join(SUBDIR).join("layer-mid.size").exists());
        drop((oldest, in_use));
        assert_eq!(trim(cache.path(), "layer-", 10).unwrap(), 10);
        assert!(!cache.path().join(SUBDIR).join("layer-old").exists());
        assert_eq!(trim(cache.path(), "other-", 0).unwrap(), 0);
    }

    #[test]
    fn clean_spares_the_trees_in_use() {
        let cache = tempfile::tempdir().unwrap();
        let (a, b) = (cache.path().join("a.tar"), cache.path().join("b.tar"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        let unpacks = AtomicUsize::new(0);
        let in_use = acquire(cache.path(), &a, unpack_marker(&unpacks)).unwrap();
        let unused = acquire(cache.path(), &b, unpack_marker(&unpacks)).unwrap();
        let unused_path = unused.path().to_path_buf();
        drop(unused);
        let cleaned = clean(cache.path()).unwrap();
        assert_eq!(cleaned.in_use, vec![in_use.path().to_path_buf()]);
        assert_eq!(cleaned.freed, "unpacked".len() as u64);
        assert!(in_use.path().join("marker").is_file());
        assert!(!unused_path.exists());
        let left: Vec<_> = std::fs::read_dir(cache.path().join(SUBDIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            left.len(),
            3,
            "the tree in use, its lock and size: {left:?}"
        );
    }

    #[test]
    fn a_failed_unpack_leaves_no_tree_and_the_next_run_unpacks_again() {
        let cache = tempfile::tempdir().unwrap();
        let tarball = cache.path().join("root.tar");
        std::fs::write(&tarball, "v1").unwrap();
        let failed = acquire(cache.path(), &tarball, |dir| {
            std::fs::write(dir.join("half"), "")?;
            Err(io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        let unpacks = AtomicUsize::new(0);
        let kept = acquire(cache.path(), &tarball, unpack_marker(&unpacks)).unwrap();
        assert!(!kept.path().join("half").exists());
        assert_eq!(unpacks.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_killed_unpack_is_removed_by_the_next() {
        let cache = tempfile::tempdir().unwrap();
        let tarball = cache.path().join("root.tar");
        std::fs::write(&tarball, "v1").unwrap();
        let dir = cache.path().join(SUBDIR);
        let partial = dir.join(format!("{}.partial-killed", key(&tarball).unwrap()));
        std::fs::create_dir_all(partial.join("usr")).unwrap();
        let unpacks = AtomicUsize::new(0);
        let kept = acquire(cache.path(), &tarball, unpack_marker(&unpacks)).unwrap();
        assert!(!partial.exists());
        assert!(kept.path().join("marker").is_file());
    }

    #[test]
    fn trees_unused_for_a_week_are_removed_by_the_next_open() {
        let cache = tempfile::tempdir().unwrap();
        let (old, new) = (cache.path().join("old.tar"), cache.path().join("new.tar"));
        std::fs::write(&old, "old").unwrap();
        std::fs::write(&new, "new").unwrap();
        let unpacks = AtomicUsize::new(0);
        let old_path = acquire(cache.path(), &old, unpack_marker(&unpacks))
            .unwrap()
            .path()
            .to_path_buf();
        let lock = PathBuf::from(format!("{}.lock", old_path.display()));
        let long_ago = SystemTime::now() - UNUSED - Duration::from_secs(60);
        set_last_used(&lock, long_ago);
        let _new = acquire(cache.path(), &new, unpack_marker(&unpacks)).unwrap();
        assert!(!old_path.exists());
        assert!(!lock.exists());
    }
}
