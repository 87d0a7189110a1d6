//! The backends a `dep8` binary knows. A custom binary can add its own:
//!
//! ```no_run
//! let mut registry = dep8_cli::Registry::builtin();
//! // registry.register(Box::new(my_backend::MyBackend));
//! std::process::exit(dep8_cli::main_with(registry));
//! ```

use dep8_core::error::Error;
use dep8_core::testbed::Backend;

/// The virt servers Debian's autopkgtest 5.49 ships that dep8 has no
/// native backend for, and the Debian package each needs beside it.
const AUTOPKGTEST_VIRT: [(&str, &str); 5] = [
    ("chroot", "a chroot of your own"),
    ("docker", "docker.io"),
    ("incus", "incus"),
    ("lxd", "lxd"),
    ("podman", "podman"),
];

pub struct Registry {
    backends: Vec<Box<dyn Backend>>,
}

impl Registry {
    /// An empty registry.
    pub fn empty() -> Self {
        Registry {
            backends: Vec::new(),
        }
    }

    /// Every backend that ships with dep8.
    pub fn builtin() -> Self {
        let mut r = Registry::empty();
        r.register(Box::new(dep8_backend_null::NullBackend));
        #[cfg(feature = "unshare")]
        r.register(Box::new(dep8_backend_unshare::UnshareBackend));
        #[cfg(feature = "ssh")]
        r.register(Box::new(dep8_backend_ssh::SshBackend));
        #[cfg(feature = "schroot")]
        r.register(Box::new(dep8_backend_schroot::SchrootBackend));
        r.register(Box::new(dep8_backend_external::ExternalBackend));
        #[cfg(feature = "qemu")]
        r.register(Box::new(dep8_backend_qemu::QemuBackend));
        #[cfg(feature = "lxc")]
        r.register(Box::new(dep8_backend_lxc::LxcBackend));
        r
    }

    /// Adds a backend; a later one with the same name replaces the earlier.
    pub fn register(&mut self, backend: Box<dyn Backend>) {
        self.backends.retain(|b| b.name() != backend.name());
        self.backends.push(backend);
    }

    pub fn get(&self, name: &str) -> Option<&dyn Backend> {
        self.backends
            .iter()
            .find(|b| b.name() == name)
            .map(|b| b.as_ref())
    }

    /// The backend for a testbed argv (`[NAME, ARGS...]`, default null) and
    /// the arguments to open it with. Like autopkgtest, a NAME dep8 does not
    /// know is also looked up as `autopkgtest-virt-NAME` in PATH (or taken
    /// as a program path when it has a `/`), run through `external`. An
    /// unknown backend is the user's word: a usage error.
    pub fn resolve(&self, argv: &[String]) -> Result<(&dyn Backend, Vec<String>), Error> {
        let (name, args) = match argv.split_first() {
            Some((name, args)) => (name.as_str(), args),
            None => ("null", &[][..]),
        };
        if let Some(backend) = self.get(name) {
            return Ok((backend, args.to_vec()));
        }
        let external = self.get("external");
        match (external, dep8_backend_external::find_virt_server(name)) {
            (Some(external), Some(program)) => {
                let mut args_with_program = vec![program.to_string_lossy().into_owned()];
                args_with_program.extend_from_slice(args);
                Ok((external, args_with_program))
            }
            _ => Err(Error::Usage(format!(
                "unknown backend {name:?}; known backends: {}; {}",
                self.names().join(", "),
                if name.contains('/') {
                    format!("{name} is not an executable virt server program")
                } else {
                    match AUTOPKGTEST_VIRT.iter().find(|(n, _)| *n == name) {
                        Some((_, needs)) => format!(
                            "autopkgtest-virt-{name} is not installed: it comes with Debian's \
                             autopkgtest package (apt-get install autopkgtest; it needs {needs})"
                        ),
                        None => format!(
                            "no autopkgtest virt server autopkgtest-virt-{name} in PATH \
                             (Debian's autopkgtest package has {})",
                            AUTOPKGTEST_VIRT.map(|(n, _)| n).join(", ")
                        ),
                    }
                }
            ))),
        }
    }

    /// How many testbeds `backend` may have open at once with `args`
    /// ([`Backend::max_testbeds`]); for `external dep8 virt-server TESTBED...`,
    /// as many as the backend it serves may.
    pub fn max_testbeds(&self, backend: &dyn Backend, args: &[String]) -> usize {
        if let ("external", [program, verb, served @ ..]) = (backend.name(), args) {
            let is_dep8 = program.rsplit('/').next() == Some("dep8");
            if is_dep8 && verb == "virt-server" {
                return match self.resolve(served) {
                    Ok((backend, args)) => self.max_testbeds(backend, &args),
                    Err(_) => 1,
                };
            }
        }
        backend.max_testbeds(args)
    }

    pub fn all(&self) -> impl Iterator<Item = &dyn Backend> {
        self.backends.iter().map(|b| b.as_ref())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.backends.iter().map(|b| b.name()).collect()
    }
}
