//! Raft replication for TinkerDB (in progress; see issue 4).
