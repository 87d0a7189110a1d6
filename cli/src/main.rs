//! The `dep8` binary: the built-in backends, nothing else.

fn main() {
    std::process::exit(dep8_cli::main_with(dep8_cli::Registry::builtin()));
}
