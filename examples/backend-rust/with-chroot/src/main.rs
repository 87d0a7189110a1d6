//! `dep8-with-chroot`: dep8 with one more backend. Everything else (run,
//! check, explain, compare, conformance, virt-server) works unchanged:
//! `dep8-with-chroot run SRC -- chroot DIR`.

fn main() {
    let mut registry = dep8_cli::Registry::builtin();
    registry.register(Box::new(dep8_example_backend::ChrootBackend));
    std::process::exit(dep8_cli::main_with(registry));
}
