//! Loopback TCP ports for a helper that binds them itself (QEMU's
//! forwarded ssh port and sockets, a test's sshd).

use std::net::TcpListener;

/// `n` different TCP ports on 127.0.0.1 that were free a moment ago, chosen
/// at random below the kernel's range for the local ends of connections
/// (`ip_local_port_range`): between the choice and the helper's bind, no
/// ssh or apt connection can take one, as they could a port that `bind(0)`
/// gave. Another program choosing ports the same way still can, rarely: the
/// caller starts its helper again on others when its bind fails.
pub fn free_loopback_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let connections_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let lowest = 10_000.min(connections_from / 2);
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..1000 {
        if listeners.len() == n {
            break;
        }
        let mut random = [0u8; 2];
        getrandom::fill(&mut random).map_err(std::io::Error::other)?;
        let port = lowest + u16::from_ne_bytes(random) % (connections_from - lowest);
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(listener);
        }
    }
    if listeners.len() < n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("no {n} free ports on 127.0.0.1 between {lowest} and {connections_from}"),
        ));
    }
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_distinct_and_below_the_connections_range() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let connections_from: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
        let ports = super::free_loopback_ports(8).unwrap();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 8, "{ports:?}");
        assert!(ports.iter().all(|&p| p < connections_from), "{ports:?}");
    }
}
