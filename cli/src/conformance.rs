//! `dep8 conformance -- BACKEND [ARGS...]`: the conformance suite on any
//! testbed, with a verdict per check. Exits 0 when none fails, 4 when one
//! does, 16 when the testbed breaks while opening or closing.

use crate::Registry;
use dep8_conformance::{format_verdicts, run_all, Verdict};
use dep8_core::report::EXIT_TESTBED_FAILURE;
use dep8_core::testbed::TestbedError;

/// The exit status when a check fails (autopkgtest's "a test failed").
const EXIT_CHECK_FAILED: i32 = 4;

#[derive(clap::Args)]
pub struct Args {
    /// The testbed: BACKEND [ARGS...] after `--`.
    #[arg(last = true, required = true, value_name = "BACKEND ARGS")]
    testbed: Vec<String>,
}

pub async fn run(args: Args, registry: &Registry) -> i32 {
    let (backend, backend_args) = match registry.resolve(&args.testbed) {
        Ok(found) => found,
        Err(e) => return super::cmd::failed(e),
    };
    let mut tb = match backend.open(&backend_args).await {
        Ok(tb) => tb,
        Err(TestbedError::Usage(msg)) => {
            return super::error(format!("{}: {msg}", args.testbed[0]))
        }
        Err(e) => {
            say!("dep8: {e}");
            return EXIT_TESTBED_FAILURE;
        }
    };
    let verdicts = run_all(tb.as_mut()).await;
    let closed = tb.close().await;
    let count = |f: fn(&Verdict) -> bool| verdicts.iter().filter(|(_, v)| f(v)).count();
    let failed = count(|v| matches!(v, Verdict::Fail(_)));
    super::emit(format!(
        "{}{} passed, {failed} failed, {} skipped\n",
        format_verdicts(&verdicts),
        count(|v| matches!(v, Verdict::Pass)),
        count(|v| matches!(v, Verdict::Skip(_)))
    ));
    if let Err(e) = closed {
        say!("dep8: closing the testbed: {e}");
        return EXIT_TESTBED_FAILURE;
    }
    if failed > 0 {
        EXIT_CHECK_FAILED
    } else {
        0
    }
}
