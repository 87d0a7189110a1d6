//! Benchmark (not a test): how long the qemu backend takes to open a
//! testbed, run a command, revert and reboot.
//! `cargo run --release -p dep8-backend-qemu --example qemu-timings -- IMAGE [QEMU OPTIONS...]`

use dep8_core::testbed::{Backend, ExecRequest};
use std::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: qemu-timings IMAGE [QEMU OPTIONS...]");
        std::process::exit(2);
    }
    let t = Instant::now();
    let mut tb = dep8_backend_qemu::QemuBackend
        .open(&args)
        .await
        .expect("open");
    println!("open (boot until ssh answers, setup): {:.1?}", t.elapsed());
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
    for i in 1..=2 {
        let t = Instant::now();
        tb.revert().await.expect("revert");
        println!("revert {i}: {:.1?}", t.elapsed());
    }
    let t = Instant::now();
    tb.reboot().await.expect("reboot");
    println!("reboot: {:.1?}", t.elapsed());
    tb.close().await.expect("close");
}
