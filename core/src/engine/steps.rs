//! The orchestrator's steps on the testbed besides the tests: the scratch
//! dir, the setup options, the source (acquired, built, copied in),
//! reverts, and the files that describe the testbed and the package.

use super::{host_temp_dir, probe, timed, Run};
use crate::acquire::{self, Fetch};
use crate::build;
use crate::capability::{Capabilities, Capability};
use crate::error::Error;
use crate::events::{Event, Wait};
use crate::install::DependencyPolicy;
use crate::reboot;
use crate::setup::{Setup, SetupPart};
use crate::source;
use crate::testbed::{ExecRequest, Testbed};
use shell_words::quote;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

impl Run<'_> {
    /// Gives the scratch dir autopkgtest 5.48's mode
    /// ([`Capabilities::scratch_mode`]); where it is not world-writable, the
    /// normal user owns it. After opening and after every revert.
    pub(super) async fn secure_scratch(&self, tb: &dyn Testbed) -> Result<(), Error> {
        let caps = tb.capabilities();
        let mode = caps.scratch_mode(self.opts.insecure);
        let script = format!("chmod {mode} -- \"$1\"; [ -z \"$2\" ] || chown -- \"$2\" \"$1\"");
        let owner = match self.normal_user(caps) {
            Some(user) if mode != "1777" && caps.has(Capability::RootOnTestbed) => user,
            _ => String::new(),
        };
        let req = ExecRequest::new(["sh", "-ec", &script, "sh", tb.scratch(), &owner]).capture();
        let out = timed(
            self.opts.timeouts.short,
            "securing the scratch dir",
            tb.exec(req),
        )
        .await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Testbed(format!(
                "setting the mode of {}: {}",
                tb.scratch(),
                out.stderr_text().trim()
            )))
        }
    }

    /// Applies the setup options; after opening and after every revert.
    /// The base part is kept by testbeds that can (then not repeated).
    pub(super) async fn setup_testbed(&mut self, tb: &mut dyn Testbed) -> Result<(), Error> {
        let mut setup = std::borrow::Cow::Borrowed(&self.opts.setup);
        if !self.built_debs.0.is_empty() {
            setup
                .to_mut()
                .binaries
                .extend(self.built_debs.0.iter().cloned());
        }
        if !self.base_kept {
            self.apply(tb, &setup, SetupPart::Base).await?;
            if setup.keeps_a_base() {
                let limit = self.opts.timeouts.reboot;
                self.base_kept = timed(limit, "keeping the setup", tb.commit_base()).await?;
                if self.base_kept {
                    self.events
                        .info("the testbed keeps this setup: reverts return to it");
                    self.secure_scratch(tb).await?;
                }
            }
        }
        self.apply(tb, &setup, SetupPart::EveryBoot).await
    }

    /// Takes the published binaries (given or built) out of the apt
    /// sources of a testbed that cannot revert, as autopkgtest does.
    pub(super) async fn unpublish(&self, tb: &dyn Testbed) -> Result<(), Error> {
        let published = !self.opts.setup.binaries.is_empty() || !self.built_debs.0.is_empty();
        if !published || tb.capabilities().has(Capability::Revert) {
            return Ok(());
        }
        self.events
            .info("removing the binaries from the testbed's apt sources");
        crate::setup::unpublish_binaries(tb, self.opts.timeouts.install, &self.events.output_tap())
            .await
    }

    /// Applies `part` of `setup`, with what it says in the log.
    pub(super) async fn apply(
        &self,
        tb: &dyn Testbed,
        setup: &Setup,
        part: SetupPart,
    ) -> Result<(), Error> {
        if !setup.is_empty_part(part) {
            self.events.info("setting up the testbed");
            self.events.emit(Event::Waiting(Wait::Setup));
            let user = self.normal_user(tb.capabilities());
            setup
                .apply(
                    tb,
                    part,
                    user.as_deref(),
                    self.opts.timeouts.install,
                    self.events.output_tap(),
                )
                .await?;
        }
        Ok(())
    }

    /// Copies the source tree in and installs the in-testbed helpers; after
    /// setting up the testbed.
    pub(super) async fn copy_tree(&self, tb: &dyn Testbed, tree: &str) -> Result<(), Error> {
        let source = self.tests_tree();
        self.events
            .info(format!("copying {} to the testbed", source.display()));
        self.events.emit(Event::Waiting(Wait::Copy));
        timed(
            self.opts.timeouts.copy,
            "copying the source tree",
            tb.copy_down(source, tree),
        )
        .await?;
        // As autopkgtest: the tree belongs to the normal user, so tests
        // without needs-root may write into it (world-writable where chown
        // fails only with --insecure, as in autopkgtest 5.48).
        if let Some(user) = self.normal_user(tb.capabilities()) {
            let (user, tree) = (quote(&user), quote(tree));
            let fallback = if self.opts.insecure {
                format!(" 2>/dev/null || chmod -R go+rwX -- {tree}")
            } else {
                String::new()
            };
            let own = format!("chown -R {user} -- {tree}{fallback}");
            self.shell_step(tb, &own, &format!("handing {tree} to {user}"))
                .await?;
        }
        if reboot::available(tb.capabilities()) {
            timed(
                self.opts.timeouts.short,
                "preparing the testbed",
                reboot::install(tb),
            )
            .await?;
        }
        Ok(())
    }

    /// Builds the source in `SCRATCH/build` ([`build::Build`]) and keeps
    /// the built tree on the host for the tests; with `binaries`, also the
    /// `.deb`s it made, published in the testbed like given ones (now
    /// where the testbed cannot revert; otherwise after the revert that
    /// drops the build dependencies).
    pub(super) async fn build(&mut self, tb: &dyn Testbed, binaries: bool) -> Result<(), Error> {
        self.events.emit(Event::Waiting(Wait::Build));
        let caps = tb.capabilities().clone();
        let root = caps.has(Capability::RootOnTestbed);
        let user = self.normal_user(&caps).filter(|_| root);
        let dir = format!("{}/build", tb.scratch());
        let tree = format!("{dir}/src");
        self.shell_step(
            tb,
            &format!("rm -rf '{dir}'; mkdir -p '{dir}'"),
            "making the build dir",
        )
        .await?;
        timed(
            self.opts.timeouts.copy,
            "copying the source tree",
            tb.copy_down(self.source(), &tree),
        )
        .await?;
        if let Some(user) = &user {
            self.shell_step(
                tb,
                &format!("chown -R '{user}' -- '{dir}'"),
                "handing the build dir over",
            )
            .await?;
        }
        let build = build::Build {
            tree: &tree,
            user: user.as_deref(),
            root,
            may_install: self.opts.dependencies == DependencyPolicy::Install,
            parallel: self.parallel(),
            gain_root: self.opts.build.gain_root.as_deref(),
            env: &self.opts.env,
            install_timeout: self.opts.timeouts.install,
            build_timeout: self.within_global(self.opts.timeouts.build),
            log: self.events.output_tap(),
        };
        // The build dependencies stay: start the tests afresh.
        self.dirty = true;
        self.packages.changed();
        self.packages.touched();
        build.run(tb).await?;
        let built = host_temp_dir("dep8-built-tree.")?;
        timed(
            self.opts.timeouts.copy,
            "copying the built tree",
            tb.copy_up(&tree, built.path()),
        )
        .await?;
        self.built_tree = Some(Arc::new(built));
        if binaries {
            let host = host_temp_dir("dep8-built-debs.")?;
            let debs = timed(
                self.opts.timeouts.copy,
                "copying the built binaries",
                async { Ok(build::collect_debs(tb, &dir, host.path()).await) },
            )
            .await??;
            let names: Vec<String> = debs
                .iter()
                .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            self.events
                .info(format!("built binaries: {}", names.join(" ")));
            self.built_debs = (debs, Some(Arc::new(host)));
            if !caps.has(Capability::Revert) && !self.built_debs.0.is_empty() {
                let publish = Setup {
                    binaries: self.built_debs.0.clone(),
                    ..Setup::default()
                };
                self.apply(tb, &publish, SetupPart::EveryBoot).await?;
            }
        }
        self.shell_step(tb, &format!("rm -rf '{dir}'"), "removing the build dir")
            .await
    }

    /// The tree the tests run from: the built one, or the source.
    pub(super) fn tests_tree(&self) -> &Path {
        self.built_tree.as_ref().map_or(self.source(), |t| t.path())
    }

    /// autodep8's control file for `tree`, where autopkgtest would ask for
    /// one (no `--no-auto-control` or `--override-control`, and no
    /// debian/tests/control or a `Testsuite: autopkgtest-pkg-*`).
    pub(super) async fn autodep8(&self, tree: &Path) -> Option<tempfile::NamedTempFile> {
        let wanted = crate::blocking({
            let (opts, tree) = (self.opts.clone(), tree.to_path_buf());
            move || opts.asks_autodep8(&tree)
        });
        if !wanted.await {
            return None;
        }
        match source::autodep8(tree).await {
            Ok(Some(control)) => {
                self.events.info("tests generated by autodep8");
                Some(control)
            }
            Ok(None) => None,
            Err(e) => {
                self.events
                    .info(format!("autodep8 generated no tests: {e}"));
                None
            }
        }
    }

    /// The source tree on the host: the one given, or the one acquired.
    pub(super) fn source(&self) -> &Path {
        self.acquired
            .as_ref()
            .map_or(self.opts.source.as_path(), |t| t.path())
    }

    pub(super) async fn acquire(&mut self, tb: &dyn Testbed, fetch: &Fetch) -> Result<(), Error> {
        self.events.info(format!("getting the source: {fetch}"));
        self.events.emit(Event::Waiting(Wait::Source));
        let dir = host_temp_dir("dep8-source.")?;
        let limit = self.opts.timeouts.install;
        let may_install = self
            .packages
            .may_install(tb.capabilities().has(Capability::RootOnTestbed));
        let get = acquire::acquire(
            tb,
            fetch,
            dir.path(),
            limit,
            self.events.output_tap(),
            may_install,
        );
        timed(
            limit + Duration::from_secs(5),
            "getting the source",
            async { Ok(get.await) },
        )
        .await??;
        self.acquired = Some(Arc::new(dir));
        Ok(())
    }

    /// Reverting may restart a whole machine: it gets the reboot time limit.
    pub(super) async fn revert(&mut self, tb: &mut dyn Testbed) -> Result<(), Error> {
        self.events.info("reverting the testbed");
        self.events.emit(Event::Waiting(Wait::Revert));
        timed(self.opts.timeouts.reboot, "reverting", tb.revert()).await?;
        self.secure_scratch(tb).await?;
        self.packages.reverted();
        self.dirty = false;
        self.events.emit(Event::Reverted);
        Ok(())
    }

    pub(super) async fn write_testinfo(&self, tb: &dyn Testbed) {
        let info = probe::TestInfo {
            probe: &self.probe,
            testbed_argv: &self.opts.testbed_argv,
            test_kernels: &self.test_kernels,
            env: &self.opts.env,
            described: tb.describe(),
        };
        let _ = tokio::fs::write(self.opts.output_dir.join("testinfo.json"), info.json()).await;
    }

    /// `testbed-packages`: the testbed's packages as the setup left them
    /// (pins, `--apt-upgrade`, setup commands), as autopkgtest 5.49 lists
    /// them after its setup; none where the testbed has no dpkg.
    pub(super) async fn write_testbed_packages(&mut self, tb: &dyn Testbed) -> Result<(), Error> {
        self.packages.changed();
        if let Some(installed) = self.packages.installed(tb).await? {
            let _ = tokio::fs::write(
                self.opts.output_dir.join("testbed-packages"),
                super::packages::package_lines(installed.iter()),
            )
            .await;
        }
        Ok(())
    }

    /// parallel=N for DEB_BUILD_OPTIONS: `--build-parallel`, or nproc.
    pub(super) fn parallel(&self) -> String {
        self.opts
            .build
            .parallel
            .map_or_else(|| self.probe.nproc.clone(), |n| n.to_string())
    }

    /// `testpkg-version`: "SOURCE VERSION" from the tree's changelog, as
    /// autopkgtest writes it for debci.
    pub(super) async fn write_testpkg_version(&self) {
        let changelog = self.source().join("debian/changelog");
        let Ok(text) = tokio::fs::read_to_string(&changelog).await else {
            return;
        };
        let first = text.lines().next().unwrap_or_default();
        let mut words = first.splitn(3, ' ');
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            return;
        };
        let version = version.trim_start_matches('(').trim_end_matches(')');
        self.events
            .info(format!("testing package {name} version {version}"));
        let path = self.opts.output_dir.join("testpkg-version");
        if let Err(e) = tokio::fs::write(&path, format!("{name} {version}\n")).await {
            self.events
                .warning(format!("cannot write {}: {e}", path.display()));
        }
    }

    /// The normal user for tests without needs-root, if any.
    pub(super) fn normal_user(&self, caps: &Capabilities) -> Option<String> {
        self.opts
            .user
            .clone()
            .or_else(|| caps.suggested_normal_users.first().cloned())
    }
}
