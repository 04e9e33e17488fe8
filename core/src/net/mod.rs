//! The network edge: listening sockets and the byte streams of accepted
//! connections. Plain TCP today; TLS (issue "Security and tracing") wraps
//! the stream here, so no front end has to know.

pub mod listener;
pub mod stream;
