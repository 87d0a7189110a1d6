//! `dep8 virt-server BACKEND [ARGS...]`: a dep8 backend behind autopkgtest's
//! virt-server protocol, and its auxverb, the hidden `dep8 virt-exec`.

use crate::Registry;
use dep8_backend_external::{exec_channel, server};
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ServerArgs {
    /// The backend and its arguments, as after `dep8 run SRC --`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "BACKEND ARGS"
    )]
    testbed: Vec<String>,
}

#[derive(clap::Args)]
pub struct ExecArgs {
    /// The server's exec socket.
    socket: PathBuf,
    /// The command to run in the testbed.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_parser = clap::value_parser!(OsString)
    )]
    argv: Vec<OsString>,
}

pub async fn serve(args: ServerArgs, registry: &Registry) -> i32 {
    let (backend, backend_args) = match registry.resolve(&args.testbed) {
        Ok(found) => found,
        Err(e) => return super::cmd::failed(e),
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe.to_string_lossy().into_owned(),
        Err(e) => return super::error(format!("cannot find the dep8 executable: {e}")),
    };
    let auxverb = [exe, "virt-exec".to_string()];
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let code = server::serve(backend, &backend_args, &auxverb, stdin, tokio::io::stdout()).await;
    // Exit now: the runtime would wait for the blocking stdin read.
    std::process::exit(code)
}

pub async fn exec(args: ExecArgs) -> i32 {
    exec_channel::client(&args.socket, &args.argv).await
}
