//! Times an unshare testbed's open, one command, revert and close; used by
//! scripts/bench-unshare (a benchmark, not a test).
//! Usage: unshare-timing TARBALL [REVERTS]

use dep8_backend_unshare::{Options, Rootfs, UnshareTestbed};
use dep8_testbed::{ExecRequest, Testbed};
use std::time::{Duration, Instant};

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let tarball = args
        .next()
        .expect("usage: unshare-timing TARBALL [REVERTS]");
    let reverts: usize = args.next().map_or(10, |n| n.parse().expect("REVERTS"));
    let options = Options::new(Rootfs::Tarball(tarball.into()));
    let t = Instant::now();
    let mut tb = UnshareTestbed::open(options).await.expect("open");
    println!("open:   {}", ms(t.elapsed()));
    let t = Instant::now();
    tb.exec(ExecRequest::new(["true"])).await.expect("exec");
    println!("exec:   {}", ms(t.elapsed()));
    let mut times = Vec::new();
    for _ in 0..reverts {
        tb.exec(ExecRequest::shell("echo dirty > /etc/dirty"))
            .await
            .expect("exec");
        let t = Instant::now();
        tb.revert().await.expect("revert");
        times.push(t.elapsed());
    }
    times.sort();
    if !times.is_empty() {
        println!(
            "revert: {} median, {} min, {} max of {reverts}",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1])
        );
    }
    let t = Instant::now();
    tb.close().await.expect("close");
    println!("close:  {}", ms(t.elapsed()));
}
