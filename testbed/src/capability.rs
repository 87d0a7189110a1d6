//! What a testbed can do: [`Capability`] flags plus the facts that go with them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

/// One thing a testbed can provide. `Display` gives autopkgtest's word where
/// it has one, so capabilities read the same in both tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Commands run as root (possibly namespaced root).
    RootOnTestbed,
    /// `revert` restores packages and the root filesystem.
    Revert,
    /// `revert` restores everything: all filesystems, processes, network.
    RevertFullSystem,
    /// Own container with an init system: services and ports are allowed.
    IsolationContainer,
    /// A whole (virtual) machine: kernel modules, hardware, reboot.
    IsolationMachine,
    /// The testbed can be rebooted in the middle of a test.
    Reboot,
    /// Tests may start VMs or containers inside the testbed.
    Nesting,
    /// A read-only pristine copy of the testbed's root is reachable inside it.
    #[serde(rename = "baseimage")]
    BaseImage,
    /// Synthesised by the runner from `--needs-internet`, never by a backend.
    #[serde(rename = "has_internet")]
    HasInternet,
}

impl Capability {
    /// Every capability, in a stable order (for docs and listings).
    pub const ALL: [Capability; 9] = [
        Capability::RootOnTestbed,
        Capability::Revert,
        Capability::RevertFullSystem,
        Capability::IsolationContainer,
        Capability::IsolationMachine,
        Capability::Reboot,
        Capability::Nesting,
        Capability::BaseImage,
        Capability::HasInternet,
    ];

    /// The word used on the command line, in protocol and in reports.
    pub fn word(self) -> &'static str {
        match self {
            Capability::RootOnTestbed => "root-on-testbed",
            Capability::Revert => "revert",
            Capability::RevertFullSystem => "revert-full-system",
            Capability::IsolationContainer => "isolation-container",
            Capability::IsolationMachine => "isolation-machine",
            Capability::Reboot => "reboot",
            Capability::Nesting => "nesting",
            Capability::BaseImage => "baseimage",
            Capability::HasInternet => "has_internet",
        }
    }

    /// Parses a capability word; `None` for words dep8 does not know.
    pub fn from_word(word: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.word() == word)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// How the pristine base image is presented inside the testbed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseImageKind {
    /// A read-only block device (qemu: `/dev/baseimage`).
    Block,
    /// A read-only directory holding the root filesystem (containers).
    Directory,
}

impl fmt::Display for BaseImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BaseImageKind::Block => "block",
            BaseImageKind::Directory => "directory",
        })
    }
}

/// Where the base image is inside the testbed; tests see it as
/// `DEP8_BASEIMAGE` and `DEP8_BASEIMAGE_KIND`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImage {
    pub path: String,
    pub kind: BaseImageKind,
}

/// Everything a testbed advertises once it is open.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub flags: BTreeSet<Capability>,
    /// Existing unprivileged accounts for tests without needs-root.
    pub suggested_normal_users: Vec<String>,
    pub baseimage: Option<BaseImage>,
    /// Host path of the testbed's scratch dir, when the host can see it.
    pub downtmp_host: Option<PathBuf>,
}

impl Capabilities {
    pub fn new(flags: impl IntoIterator<Item = Capability>) -> Self {
        Capabilities {
            flags: flags.into_iter().collect(),
            ..Default::default()
        }
    }

    pub fn has(&self, cap: Capability) -> bool {
        self.flags.contains(&cap)
    }

    pub fn insert(&mut self, cap: Capability) {
        self.flags.insert(cap);
    }

    /// Whether the host isolates the testbed (`isolation-container` or
    /// `isolation-machine`): as in autopkgtest 5.48, only then may its
    /// shared dirs be world-writable, since nothing untrusted runs there.
    pub fn isolates(&self) -> bool {
        self.has(Capability::IsolationContainer) || self.has(Capability::IsolationMachine)
    }

    /// The mode of the testbed's scratch dir: world-writable (sticky) only
    /// where the testbed isolates and the host cannot see the dir (as
    /// autopkgtest 5.48's downtmp_mktemp insists), or with `--insecure`;
    /// else 0755, owned by the normal user, who must write there.
    pub fn scratch_mode(&self, insecure: bool) -> &'static str {
        if (self.isolates() && self.downtmp_host.is_none()) || insecure {
            "1777"
        } else {
            "755"
        }
    }

    /// The words autopkgtest's virt-server protocol uses for this set
    /// (`suggested-normal-user=NAME`, `downtmp-host=PATH` included), plus
    /// dep8's `baseimage=KIND:PATH`.
    pub fn protocol_words(&self) -> Vec<String> {
        let mut words: Vec<String> = self
            .flags
            .iter()
            .filter(|c| **c != Capability::HasInternet)
            .map(|c| c.word().to_string())
            .collect();
        words.extend(
            self.suggested_normal_users
                .iter()
                .map(|u| format!("suggested-normal-user={u}")),
        );
        if let Some(dir) = &self.downtmp_host {
            words.push(format!("downtmp-host={}", dir.display()));
        }
        // dep8's own fact word; autopkgtest ignores it as an unknown word.
        if let Some(base) = &self.baseimage {
            words.push(format!("baseimage={}:{}", base.kind, base.path));
        }
        words
    }

    /// Reads the capability words a virt server sent; unknown words are
    /// ignored, as the protocol requires.
    pub fn from_protocol_words<S: AsRef<str>>(words: &[S]) -> Self {
        let mut caps = Capabilities::default();
        for word in words {
            let word = word.as_ref();
            if let Some(user) = word.strip_prefix("suggested-normal-user=") {
                caps.suggested_normal_users.push(user.to_string());
            } else if let Some(dir) = word.strip_prefix("downtmp-host=") {
                caps.downtmp_host = Some(PathBuf::from(dir));
            } else if let Some(base) = word.strip_prefix("baseimage=") {
                let kind = match base.split_once(':') {
                    Some(("block", path)) => Some((BaseImageKind::Block, path)),
                    Some(("directory", path)) => Some((BaseImageKind::Directory, path)),
                    _ => None,
                };
                if let Some((kind, path)) = kind {
                    caps.baseimage = Some(BaseImage {
                        path: path.to_string(),
                        kind,
                    });
                }
            } else if let Some(cap) = Capability::from_word(word) {
                caps.insert(cap);
            }
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for cap in Capability::ALL {
            assert_eq!(Capability::from_word(cap.word()), Some(cap));
        }
        assert_eq!(Capability::from_word("frobnicate"), None);
    }

    #[test]
    fn world_writable_scratch_only_where_isolated_from_the_host() {
        let mut caps = Capabilities::new([Capability::RootOnTestbed]);
        assert_eq!(caps.scratch_mode(false), "755");
        assert_eq!(caps.scratch_mode(true), "1777", "--insecure");
        caps.insert(Capability::IsolationContainer);
        assert_eq!(caps.scratch_mode(false), "1777");
        caps.downtmp_host = Some("/tmp/x".into());
        assert_eq!(caps.scratch_mode(false), "755", "the host sees it");
    }

    #[test]
    fn protocol_words_round_trip() {
        let mut caps = Capabilities::new([Capability::Revert, Capability::RootOnTestbed]);
        caps.suggested_normal_users.push("tester".into());
        caps.downtmp_host = Some("/tmp/x".into());
        caps.insert(Capability::BaseImage);
        caps.baseimage = Some(BaseImage {
            path: "/dev/baseimage".into(),
            kind: BaseImageKind::Block,
        });
        let words = caps.protocol_words();
        assert!(words.contains(&"baseimage=block:/dev/baseimage".to_string()));
        assert!(words.contains(&"suggested-normal-user=tester".to_string()));
        let mut with_unknown = words.clone();
        with_unknown.push("something-new".into());
        assert_eq!(Capabilities::from_protocol_words(&with_unknown), caps);
    }
}
