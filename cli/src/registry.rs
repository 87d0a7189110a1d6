//! The backends a `dep8` binary knows. A custom binary can add its own:
//!
//! ```no_run
//! let mut registry = dep8_cli::Registry::builtin();
//! // registry.register(Box::new(my_backend::MyBackend));
//! std::process::exit(dep8_cli::main_with(registry));
//! ```

use dep8_core::testbed::Backend;

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
        r.register(Box::new(dep8_backend_unshare::UnshareBackend));
        r.register(Box::new(dep8_backend_ssh::SshBackend));
        r.register(Box::new(dep8_backend_qemu::QemuBackend));
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

    pub fn all(&self) -> impl Iterator<Item = &dyn Backend> {
        self.backends.iter().map(|b| b.as_ref())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.backends.iter().map(|b| b.name()).collect()
    }
}
