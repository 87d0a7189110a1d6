//! Connects with the ssh transport and times N runs of `true`; used by
//! scripts/bench-ssh. Usage: exec-latency HOST PORT KEY KNOWN_HOSTS [N]

use dep8_backend_ssh::{SshConnection, SshTarget};
use dep8_testbed::ExecRequest;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host, port, key, known_hosts, rest @ ..] = &args[..] else {
        eprintln!("usage: exec-latency HOST PORT KEY KNOWN_HOSTS [N]");
        std::process::exit(2);
    };
    let n: u32 = rest.first().map_or(20, |n| n.parse().expect("N"));
    let mut target = SshTarget::new(host);
    target.port = Some(port.parse().expect("PORT"));
    target.login = Some("root".into());
    target.identity = Some(key.into());
    target.known_hosts = Some(known_hosts.into());
    let started = Instant::now();
    let mut conn = SshConnection::connect(target).await.expect("connect");
    println!(
        "connect: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let started = Instant::now();
    for _ in 0..n {
        let out = conn.exec(ExecRequest::new(["true"])).await.expect("exec");
        assert!(out.status.success());
    }
    let per = started.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
    println!("exec true: {per:.1} ms per command ({n} runs)");
    conn.close().await.expect("close");
}
