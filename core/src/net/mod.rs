//! The network edge: listening sockets and the byte streams of accepted
//! connections, plain TCP or TLS ([`tls::ClientStream`]: the TLS layer
//! wraps the stream here, so no front end has to know).

pub mod listener;
pub mod stream;
pub mod tls;
