//! The network edge: listening sockets and the byte streams of accepted
//! connections, plain TCP or TLS ([`tls::ClientStream`]: the TLS layer
//! wraps the stream here, so no front end has to know).

pub mod listener;
pub mod stream;
pub mod tls;

/// `host:port`, with an IPv6 host in brackets (`[::1]:7370`).
pub fn host_port(host: &str, port: u16) -> String {
    match host.contains(':') && !host.starts_with('[') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_port_brackets_ipv6_hosts_only() {
        assert_eq!(super::host_port("node1", 7370), "node1:7370");
        assert_eq!(super::host_port("10.0.0.2", 7370), "10.0.0.2:7370");
        assert_eq!(super::host_port("::1", 7370), "[::1]:7370");
        assert_eq!(super::host_port("[::1]", 7370), "[::1]:7370");
    }
}
