//! The conformance checks against every backend this machine can run, one
//! named test per check and backend (`unshare::exit_codes`), as OpenDAL
//! names its behaviour tests, so that a failure names both.
//!
//! Each backend's testbed is opened once, by the first of its checks that
//! runs, and closed after the last; its checks run in the suite's order
//! (reverting and rebooting last), while different backends go on side by
//! side. The libtest-mimic harness makes that possible: libtest's own has
//! no state shared between tests and no order among them.
//!
//! A backend whose tools are missing has its checks ignored, with the
//! reason on stderr (under CI, `DEP8_CI=1`, a missing tool fails instead);
//! one whose tools are present but broken fails loudly.

use dep8_conformance::{checks, run_check, Verdict};
use dep8_core::capability::Capability;
use dep8_core::testbed::{Backend, Testbed};
use dep8_tests::e2e::{dep8_bin, required_program};
use dep8_tests::required_resource;
use dep8_tests::sshd::{Login, LoopbackSshd};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// An open testbed, with what must outlive it (the sshd it logs in to).
struct Opened {
    testbed: Box<dyn Testbed>,
    _keep: Option<Box<dyn Any + Send>>,
}

/// What opening gives: the testbed, or `None` when this machine lacks what
/// the backend needs (the reason is on stderr).
type Opening = Pin<Box<dyn Future<Output = Result<Option<Opened>, String>> + Send>>;

/// A backend (with its arguments) that must pass the conformance checks.
struct Subject {
    /// The module its checks are named under.
    name: &'static str,
    open: fn() -> Opening,
}

fn opened(testbed: Box<dyn Testbed>) -> Result<Option<Opened>, String> {
    Ok(Some(Opened {
        testbed,
        _keep: None,
    }))
}

/// A backend's testbed across its checks.
enum Bed {
    NotYetOpened,
    Open(Opened),
    /// This machine lacks what the backend needs.
    Unavailable,
    /// Opening failed: every check of the backend fails with this.
    Broken(String),
    Closed,
}

/// One backend's shared state: its testbed, and whose turn it is among
/// its selected checks.
struct Lane {
    subject: Subject,
    bed: tokio::sync::Mutex<Bed>,
    /// The indices (into `checks()`) of the checks selected to run, in order.
    selected: OnceLock<Vec<usize>>,
    /// How many of the selected checks are done.
    done: Mutex<usize>,
    turn_changed: Condvar,
}

impl Lane {
    /// Blocks until every selected check before `check` is done.
    fn wait_for_turn(&self, check: usize) {
        let position = self.position(check);
        let mut done = self.done.lock().unwrap();
        while *done < position {
            done = self.turn_changed.wait(done).unwrap();
        }
    }

    fn position(&self, check: usize) -> usize {
        let selected = self.selected.get().expect("selection known before the run");
        selected.iter().position(|&c| c == check).unwrap_or(0)
    }

    fn is_last(&self, check: usize) -> bool {
        self.selected.get().and_then(|s| s.last()) == Some(&check)
    }
}

/// Passes the turn on when a check ends, even by a panic.
struct TurnDone<'a>(&'a Lane);

impl Drop for TurnDone<'_> {
    fn drop(&mut self) {
        let mut done = self.0.done.lock().unwrap_or_else(|e| e.into_inner());
        *done += 1;
        self.0.turn_changed.notify_all();
    }
}

/// The lanes whose testbed is the host itself, over a loopback sshd with a
/// faked `reboot`: they share the host's /run, where the reboot-prepare
/// mark (`/run/autopkgtest-reboot-prepare-mark`) is one file, so their
/// reboot checks take turns ([`HOST_RUN`]). Side by side (CI,
/// 2026-12-06), one lane found the mark still there after its reboot,
/// which the other lane's mark explains.
const ON_THE_HOSTS_RUN: [&str; 2] = ["ssh_reboot", "external_dep8_virt_server_ssh_reboot"];

/// Held by a reboot check of a lane in [`ON_THE_HOSTS_RUN`].
static HOST_RUN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Permits for the checks that run at once (`--test-threads`).
static RUNNING: OnceLock<tokio::sync::Semaphore> = OnceLock::new();

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Runs check number `index` on the lane's testbed, opening it first if
/// this is the lane's first check, closing it after if it is the last.
fn run_on(lane: &Lane, index: usize) -> Result<Completion, Failed> {
    lane.wait_for_turn(index);
    let _turn = TurnDone(lane);
    let check = &checks()[index];
    runtime().block_on(async {
        let _running = RUNNING.get().expect("set in main").acquire().await;
        let mut bed = lane.bed.lock().await;
        if matches!(*bed, Bed::NotYetOpened) {
            // A panic (a missing tool under CI) is this check's failure
            // and every later one's.
            *bed = match tokio::spawn((lane.subject.open)()).await {
                Ok(Ok(Some(opened))) => Bed::Open(opened),
                Ok(Ok(None)) => Bed::Unavailable,
                Ok(Err(e)) => Bed::Broken(e),
                Err(panicked) => Bed::Broken(format!("opening panicked: {panicked}")),
            };
        }
        let _host_run = if ON_THE_HOSTS_RUN.contains(&lane.subject.name)
            && check.needs.contains(&Capability::Reboot)
        {
            Some(HOST_RUN.lock().await)
        } else {
            None
        };
        let verdict = match &mut *bed {
            Bed::Open(opened) => run_check(check, opened.testbed.as_mut()).await,
            Bed::Unavailable => return Ok(Completion::ignored_with("not on this machine")),
            Bed::Broken(e) => return Err(format!("the testbed did not open: {e}").into()),
            Bed::NotYetOpened | Bed::Closed => unreachable!("checks run while the testbed is open"),
        };
        let closed = if lane.is_last(index) {
            close(&mut bed).await
        } else {
            Ok(())
        };
        match verdict {
            Verdict::Pass => closed.map(|()| Completion::Completed),
            Verdict::Skip(why) => closed.map(|()| Completion::ignored_with(why)),
            Verdict::Fail(why) => Err(why),
        }
        .map_err(Failed::from)
    })
}

/// Closes the testbed if it is open.
async fn close(bed: &mut Bed) -> Result<(), String> {
    match std::mem::replace(bed, Bed::Closed) {
        Bed::Open(mut opened) => {
            // The sshd (`_keep`) goes after the testbed that used it.
            let result = opened.testbed.close().await;
            drop(opened);
            result.map_err(|e| format!("closing the testbed: {e}"))
        }
        other => {
            *bed = other;
            Ok(())
        }
    }
}

fn main() {
    let mut args = Arguments::from_args();
    let checks = checks();
    let lanes: Vec<Arc<Lane>> = subjects()
        .into_iter()
        .map(|subject| {
            Arc::new(Lane {
                subject,
                bed: tokio::sync::Mutex::new(Bed::NotYetOpened),
                selected: OnceLock::new(),
                done: Mutex::new(0),
                turn_changed: Condvar::new(),
            })
        })
        .collect();
    for name in ON_THE_HOSTS_RUN {
        assert!(
            lanes.iter().any(|lane| lane.subject.name == name),
            "ON_THE_HOSTS_RUN names no lane {name}"
        );
    }
    // Check by check, each across every backend, each backend's in order.
    // `--test-threads` (default: one per core) checks run at once; the
    // workers are many more, as most of them wait for their backend's
    // previous check: a slow backend (qemu) holds up none of the others.
    let at_once = args
        .test_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    RUNNING.get_or_init(|| tokio::sync::Semaphore::new(at_once));
    if at_once > 1 {
        args.test_threads = Some(checks.len() + lanes.len());
    }
    let mut trials = Vec::new();
    for (index, check) in checks.iter().enumerate() {
        for lane in &lanes {
            let name = format!("{}::{}", lane.subject.name, check.name);
            let lane_for_trial = Arc::clone(lane);
            trials.push((
                Arc::clone(lane),
                index,
                Trial::ignorable_test(name, move || run_on(&lane_for_trial, index)),
            ));
        }
    }
    for lane in &lanes {
        let selected: Vec<usize> = trials
            .iter()
            .filter(|(l, _, trial)| {
                Arc::ptr_eq(l, lane) && !args.is_filtered_out(trial) && !args.is_ignored(trial)
            })
            .map(|(_, index, _)| *index)
            .collect();
        lane.selected.set(selected).ok();
    }
    let conclusion = libtest_mimic::run(
        &args,
        trials.into_iter().map(|(_, _, trial)| trial).collect(),
    );
    // A lane whose last check panicked still has its testbed open.
    for lane in &lanes {
        let mut bed = runtime().block_on(lane.bed.lock());
        if let Err(e) = runtime().block_on(close(&mut bed)) {
            eprintln!("{}: {e}", lane.subject.name);
        }
    }
    conclusion.exit();
}

fn subjects() -> Vec<Subject> {
    vec![
        Subject {
            name: "null",
            open: || {
                Box::pin(async {
                    let tb = dep8_backend_null::NullTestbed::open().map_err(|e| e.to_string())?;
                    opened(Box::new(tb))
                })
            },
        },
        Subject {
            name: "ssh",
            open: || Box::pin(ssh(Login::Root, &[])),
        },
        // Logged in as an unprivileged user, root through `sudo -n`.
        Subject {
            name: "ssh_sudo",
            open: || Box::pin(ssh(Login::User { sudo: true }, &[])),
        },
        // `--reboot` on a machine whose reboot is simulated (see `Login`).
        Subject {
            name: "ssh_reboot",
            open: || Box::pin(ssh(Login::RootFakeReboot, &["--reboot"])),
        },
        Subject {
            name: "unshare",
            open: || Box::pin(unshare(&[])),
        },
        Subject {
            name: "unshare_userns",
            open: || Box::pin(unshare(&["--userns"])),
        },
        Subject {
            name: "unshare_private_network",
            open: || Box::pin(unshare(&["--private-network"])),
        },
        Subject {
            name: "schroot",
            open: || Box::pin(schroot()),
        },
        Subject {
            name: "external_autopkgtest_virt_null",
            open: || {
                Box::pin(async {
                    if required_program("autopkgtest-virt-null", "autopkgtest").is_none() {
                        return Ok(None);
                    }
                    external(&["autopkgtest-virt-null".into()]).await
                })
            },
        },
        // dep8 driving itself: the client over `dep8 virt-server null`.
        Subject {
            name: "external_dep8_virt_server_null",
            open: || {
                Box::pin(async {
                    let dep8 = dep8_bin().display().to_string();
                    external(&[dep8, "virt-server".into(), "null".into()]).await
                })
            },
        },
        // Reboots both ways through the protocol (`reboot`, `reboot
        // prepare-only`): the client over `dep8 virt-server ssh --reboot`
        // on a machine whose reboot is simulated.
        Subject {
            name: "external_dep8_virt_server_ssh_reboot",
            open: || Box::pin(external_dep8_virt_server_ssh_reboot()),
        },
        Subject {
            name: "external_autopkgtest_virt_unshare",
            open: || {
                Box::pin(async {
                    let Some(tarball) = required_resource("DEP8_TEST_ROOTFS", "a rootfs tarball")
                    else {
                        return Ok(None);
                    };
                    if required_program("autopkgtest-virt-unshare", "autopkgtest").is_none() {
                        return Ok(None);
                    }
                    external(&["autopkgtest-virt-unshare".into(), "-t".into(), tarball]).await
                })
            },
        },
        Subject {
            name: "external_autopkgtest_virt_schroot",
            open: || {
                Box::pin(async {
                    let Some(chroot) = required_resource("DEP8_TEST_SCHROOT", "a schroot chroot")
                    else {
                        return Ok(None);
                    };
                    if required_program("autopkgtest-virt-schroot", "autopkgtest").is_none() {
                        return Ok(None);
                    }
                    external(&["autopkgtest-virt-schroot".into(), chroot]).await
                })
            },
        },
        Subject {
            name: "qemu",
            open: || {
                Box::pin(async {
                    let Some(image) = required_resource("DEP8_TEST_QEMU_IMAGE", "a qemu image")
                    else {
                        return Ok(None);
                    };
                    let tb = dep8_backend_qemu::QemuBackend
                        .open(&[image, "--baseimage".into()])
                        .await
                        .map_err(|e| e.to_string())?;
                    opened(tb)
                })
            },
        },
        Subject {
            name: "lxc",
            open: || Box::pin(lxc()),
        },
    ]
}

/// The lxc backend on the test template, with its pristine rootfs as the
/// base image (a privileged container: root only).
async fn lxc() -> Result<Option<Opened>, String> {
    let Some(template) = required_resource("DEP8_TEST_LXC", "an lxc container") else {
        return Ok(None);
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("lxc: skipped, the template is a privileged container (run as root)");
        return Ok(None);
    }
    let tb = dep8_backend_lxc::LxcBackend
        .open(&["--baseimage".into(), template])
        .await
        .map_err(|e| e.to_string())?;
    opened(tb)
}

/// The ssh backend on a loopback sshd that `login` logs in to.
async fn ssh(login: Login, extra: &[&str]) -> Result<Option<Opened>, String> {
    let Some(sshd) = LoopbackSshd::start_with(login) else {
        return Ok(None);
    };
    let mut args = sshd.backend_args();
    args.extend(extra.iter().map(|a| a.to_string()));
    let testbed = dep8_backend_ssh::SshBackend
        .open(&args)
        .await
        .map_err(|e| e.to_string())?;
    if !testbed.capabilities().has(Capability::RootOnTestbed) {
        return Err("the ssh testbed offers no root".into());
    }
    Ok(Some(Opened {
        testbed,
        _keep: Some(Box::new(sshd)),
    }))
}

/// The unshare backend on the test rootfs, with `extra` arguments.
async fn unshare(extra: &[&str]) -> Result<Option<Opened>, String> {
    let Some(tarball) = required_resource("DEP8_TEST_ROOTFS", "a rootfs tarball") else {
        return Ok(None);
    };
    let mut args = vec!["--tarball".to_string(), tarball, "--baseimage".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let tb = dep8_backend_unshare::UnshareBackend
        .open(&args)
        .await
        .map_err(|e| e.to_string())?;
    opened(tb)
}

async fn schroot() -> Result<Option<Opened>, String> {
    use dep8_backend_schroot::{Options, SchrootTestbed};
    let Some(chroot) = required_resource("DEP8_TEST_SCHROOT", "a schroot chroot with a union-type")
    else {
        return Ok(None);
    };
    let tb = SchrootTestbed::open(Options {
        chroot,
        baseimage: true,
        session_id: None,
        debug: false,
    })
    .await
    .map_err(|e| e.to_string())?;
    opened(Box::new(tb))
}

/// `external PROGRAM ARGS...`, as `dep8 run SRC -- external ...` opens it.
async fn external(argv: &[String]) -> Result<Option<Opened>, String> {
    let tb = dep8_backend_external::ExternalBackend
        .open(argv)
        .await
        .map_err(|e| format!("external {}: {e}", argv.join(" ")))?;
    opened(tb)
}

async fn external_dep8_virt_server_ssh_reboot() -> Result<Option<Opened>, String> {
    let Some(sshd) = LoopbackSshd::start_with(Login::RootFakeReboot) else {
        return Ok(None);
    };
    let mut argv = vec![
        dep8_bin().display().to_string(),
        "virt-server".into(),
        "ssh".into(),
    ];
    argv.extend(sshd.backend_args());
    argv.push("--reboot".into());
    let Some(opened) = external(&argv).await? else {
        return Ok(None);
    };
    Ok(Some(Opened {
        testbed: opened.testbed,
        _keep: Some(Box::new(sshd)),
    }))
}
