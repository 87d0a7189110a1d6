//! Rootfs tarballs for the container backends (unshare, schroot, lxc).
//!
//! One mmdebstrap run builds a Debian root filesystem ready for dep8 and
//! autopkgtest alike: `dpkg-dev` (autopkgtest needs it for unbuilt trees)
//! and a normal user [`NORMAL_USER`] (uid 1000) for tests without
//! needs-root.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The unprivileged account every dep8 image has.
pub const NORMAL_USER: &str = "dep8";

/// mmdebstrap's default archive, named in errors when no mirror is given.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// The mmdebstrap variants dep8 builds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Variant {
    /// Essential packages and apt.
    #[default]
    Minbase,
    /// Essential packages, apt, nothing else (mmdebstrap's `apt`).
    Apt,
}

impl Variant {
    fn word(self) -> &'static str {
        match self {
            Variant::Minbase => "minbase",
            Variant::Apt => "apt",
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct RootfsSpec {
    pub release: String,
    pub variant: Variant,
    /// The archive; mmdebstrap's default (deb.debian.org) when `None`.
    pub mirror: Option<String>,
    /// Extra packages on top of the variant and dpkg-dev.
    pub include: Vec<String>,
    /// The tarball to write; its extension picks the compression.
    pub output: PathBuf,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("mmdebstrap is not installed (apt-get install mmdebstrap)")]
    MissingTool,
    #[error("cannot reach the Debian archive at {mirror}: {detail}")]
    Unreachable { mirror: String, detail: String },
    #[error("mmdebstrap failed to build {release} from {mirror}: {detail}")]
    Failed {
        release: String,
        mirror: String,
        detail: String,
    },
    #[error("{0}")]
    Io(String),
}

impl RootfsSpec {
    fn mirror_name(&self) -> &str {
        self.mirror.as_deref().unwrap_or(DEFAULT_MIRROR)
    }

    /// mmdebstrap's arguments, writing to `target`.
    fn mmdebstrap_args(&self, target: &Path) -> Vec<String> {
        let mut include = vec!["dpkg-dev".to_string()];
        include.extend(self.include.iter().cloned());
        let mut args = vec![
            format!("--variant={}", self.variant.word()),
            format!("--include={}", include.join(",")),
            format!(
                "--customize-hook=chroot \"$1\" useradd --create-home --uid 1000 \
                 --user-group --shell /bin/bash {NORMAL_USER}"
            ),
            self.release.clone(),
            target.to_string_lossy().into_owned(),
        ];
        args.extend(self.mirror.clone());
        args
    }
}

/// Builds the tarball, calling `progress` with each line mmdebstrap prints.
/// The output appears only when the build succeeded (it is written under a
/// temporary name next to it first).
pub fn build(spec: &RootfsSpec, mut progress: impl FnMut(&str)) -> Result<(), BuildError> {
    let name = spec
        .output
        .file_name()
        .ok_or_else(|| BuildError::Io(format!("{}: not a file name", spec.output.display())))?;
    // Keep the extension last: mmdebstrap picks the format from it.
    let partial = spec
        .output
        .with_file_name(format!(".dep8-partial.{}", name.to_string_lossy()));
    let mut child = Command::new("mmdebstrap")
        .args(spec.mmdebstrap_args(&partial))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BuildError::MissingTool,
            _ => BuildError::Io(format!("cannot run mmdebstrap: {e}")),
        })?;
    // The last lines explain a failure.
    let mut tail: Vec<String> = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            progress(&line);
            tail.push(line);
            if tail.len() > 8 {
                tail.remove(0);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| BuildError::Io(format!("waiting for mmdebstrap: {e}")))?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        let detail = tail.join("\n");
        let unreachable = [
            "Failed to fetch",
            "Could not resolve",
            "Unable to connect",
            "Connection failed",
            "Temporary failure resolving",
            "apt-get update failed",
        ];
        let mirror = spec.mirror_name().to_string();
        return Err(if unreachable.iter().any(|p| detail.contains(p)) {
            BuildError::Unreachable { mirror, detail }
        } else {
            BuildError::Failed {
                release: spec.release.clone(),
                mirror,
                detail,
            }
        });
    }
    std::fs::rename(&partial, &spec.output).map_err(|e| {
        BuildError::Io(format!(
            "renaming {} to {}: {e}",
            partial.display(),
            spec.output.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let spec = RootfsSpec {
            release: "bookworm".into(),
            variant: Variant::Apt,
            mirror: Some("http://mirror.example/debian".into()),
            include: vec!["hello".into()],
            output: "/x/rootfs.tar".into(),
        };
        let args = spec.mmdebstrap_args(Path::new("/x/.p.tar"));
        assert_eq!(args[0], "--variant=apt");
        assert_eq!(args[1], "--include=dpkg-dev,hello");
        assert!(args[2].contains("useradd") && args[2].ends_with(" dep8"));
        assert_eq!(
            &args[3..],
            ["bookworm", "/x/.p.tar", "http://mirror.example/debian"]
        );
    }

    #[test]
    fn unreachable_mirror_is_named() {
        let dir = tempfile::tempdir().unwrap();
        if Command::new("mmdebstrap")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: mmdebstrap is not installed");
            return;
        }
        let spec = RootfsSpec {
            release: "bookworm".into(),
            variant: Variant::Minbase,
            // A reserved name that never resolves.
            mirror: Some("http://archive.invalid/debian".into()),
            include: vec![],
            output: dir.path().join("rootfs.tar"),
        };
        let err = build(&spec, |_| {}).unwrap_err();
        assert!(
            err.to_string().contains("http://archive.invalid/debian"),
            "{err}"
        );
        assert!(!spec.output.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
