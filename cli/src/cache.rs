//! `dep8 cache ...` and the run options of dep8's package cache
//! ([`dep8_core::cache`]).

use dep8_core::cache::{self, AptCache};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Print the cache dir and the space it takes.
    Info,
    /// Empty the cache (runs using it at the same time lose only time; the
    /// unpacked root filesystems their testbeds use are kept).
    Clean,
}

/// Runs `dep8 cache ...`; returns the exit status.
pub fn main(command: CacheCommand) -> i32 {
    let Some(dir) = AptCache::default_dir() else {
        return super::error("no cache dir: set DEP8_CACHE_DIR, XDG_CACHE_HOME or HOME");
    };
    match command {
        CacheCommand::Info => {
            super::emit(format!("{}\n{} bytes\n", dir.display(), cache::usage(&dir)))
        }
        CacheCommand::Clean => match cache::clean(&dir) {
            Ok(cleaned) => {
                let mut said = format!("{}: freed {} bytes\n", dir.display(), cleaned.freed);
                for tree in cleaned.in_use {
                    said += &format!("{}: kept, a testbed uses it\n", tree.display());
                }
                super::emit(said)
            }
            Err(e) => super::error(format!("cleaning {}: {e}", dir.display())),
        },
    }
}

/// The cache a run uses: none with `--no-cache` (or where there is no
/// cache dir), else the default dir, reusing apt lists up to `max_age`
/// seconds old (0: never).
pub fn for_run(no_cache: bool, max_age: Option<u64>) -> Option<AptCache> {
    let dir: PathBuf = AptCache::default_dir().filter(|_| !no_cache)?;
    let max_age = max_age.map_or(AptCache::DEFAULT_LISTS_MAX_AGE, Duration::from_secs);
    Some(AptCache::new(dir, max_age))
}
