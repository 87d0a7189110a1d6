//! Per-command latency of a testbed as dep8's runner sees it (a benchmark,
//! not a test; `scripts/bench-protocol` runs it):
//!
//! `latency N null` or `latency N external PROGRAM [ARGS...]`
//!
//! Prints the median and mean of N runs of each operation, in milliseconds.

use dep8_backend_external::ExternalBackend;
use dep8_backend_null::NullTestbed;
use dep8_core::testbed::{Backend, ExecRequest, Output, Testbed};
use std::time::{Duration, Instant};

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = times.iter().map(|d| ms(*d)).sum::<f64>() / times.len() as f64;
    println!(
        "{what:<28} median {:>8.2} ms   mean {mean:>8.2} ms",
        ms(times[times.len() / 2])
    );
}

/// Times `n` runs of an async operation on the testbed.
macro_rules! time_n {
    ($n:expr, $what:expr, $op:expr) => {{
        let mut times = Vec::with_capacity($n);
        for _ in 0..$n {
            let started = Instant::now();
            $op.await.unwrap_or_else(|e| panic!("{}: {e}", $what));
            times.push(started.elapsed());
        }
        report($what, times);
    }};
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: latency N null | latency N external PROGRAM [ARGS...]";
    let n: usize = args.first().and_then(|n| n.parse().ok()).expect(usage);
    let started = Instant::now();
    let mut tb: Box<dyn Testbed> = match args.get(1).map(String::as_str) {
        Some("null") => Box::new(NullTestbed::open().expect("open null")),
        Some("external") => ExternalBackend.open(&args[2..]).await.expect("open"),
        _ => panic!("{usage}"),
    };
    report("open", vec![started.elapsed()]);

    time_n!(n, "exec true", tb.exec(ExecRequest::new(["true"])));
    time_n!(
        n,
        "exec, 1 MB of stdout",
        tb.exec(ExecRequest::shell("head -c 1000000 /dev/zero").stdout(Output::capture()))
    );
    let host = tempfile::tempdir().expect("tempdir");
    let small = host.path().join("small");
    std::fs::write(&small, vec![b'x'; 4096]).expect("write");
    let target = format!("{}/small", tb.scratch());
    time_n!(n, "copy_down 4 KB file", tb.copy_down(&small, &target));
    let back = host.path().join("back");
    time_n!(n, "copy_up 4 KB file", tb.copy_up(&target, &back));

    let started = Instant::now();
    tb.close().await.expect("close");
    report("close", vec![started.elapsed()]);
}
