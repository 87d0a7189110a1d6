//! Benchmark (not a test): how long the qemu backend takes to open a
//! testbed, run a command, revert (by snapshot, then by a fresh boot, in
//! the same run so that the ratio is fair), reboot and revert once more.
//! `cargo run --release -p dep8-backend-qemu --example qemu-timings -- IMAGE [QEMU OPTIONS...]`
//! (`RUST_LOG=debug` shows where the time goes.)

use dep8_testbed::{Backend, ExecRequest, Testbed};
use std::time::{Duration, Instant};

async fn open(args: &[String]) -> Box<dyn Testbed> {
    let t = Instant::now();
    let tb = dep8_backend_qemu::QemuBackend
        .open(args)
        .await
        .expect("open");
    println!("open {args:?}: {:.1?}", t.elapsed());
    tb
}

/// Reverts `n` times, each followed by one command (which runs in a
/// guest whose translated code `loadvm` threw away); returns the median
/// revert.
async fn reverts(tb: &mut dyn Testbed, n: usize, what: &str) -> Duration {
    let mut times = Vec::new();
    for i in 1..=n {
        let t = Instant::now();
        tb.revert().await.expect("revert");
        times.push(t.elapsed());
        let first = Instant::now();
        let out = tb.exec(ExecRequest::new(["true"])).await.expect("exec");
        assert!(out.status.success());
        println!(
            "revert by {what} {i}: {:.2?}, then the first command {:.2?}",
            times[i - 1],
            first.elapsed()
        );
    }
    times.sort();
    times[n / 2]
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: qemu-timings IMAGE [QEMU OPTIONS...]");
        std::process::exit(2);
    }
    let mut tb = open(&args).await;
    for (k, v) in tb.describe() {
        println!("  {k} = {v}");
    }
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        let out = tb.exec(ExecRequest::new(["true"])).await.expect("exec");
        assert!(out.status.success());
    }
    println!("exec `true`: {:.0?} per command", t.elapsed() / n);
    let snapshot = reverts(tb.as_mut(), 5, "snapshot").await;
    let t = Instant::now();
    tb.reboot().await.expect("reboot");
    println!("reboot: {:.1?}", t.elapsed());
    reverts(tb.as_mut(), 1, "snapshot after the reboot").await;
    tb.close().await.expect("close");

    let mut by_boot = args.clone();
    by_boot.extend(["--revert".into(), "boot".into()]);
    let mut tb = open(&by_boot).await;
    let boot = reverts(tb.as_mut(), 3, "boot").await;
    tb.close().await.expect("close");
    println!(
        "median revert: snapshot {snapshot:.2?}, boot {boot:.1?}: {:.1}x",
        boot.as_secs_f64() / snapshot.as_secs_f64()
    );
}
