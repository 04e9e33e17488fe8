//! A linearizability checker for one register (one key), shared by the
//! replication tests (histories under partitions) and the core tests
//! (histories across `kill -9`, included with `#[path]`: both are test
//! code, and a crate for one file would be heavier than the file).
//!
//! Wing-Gong search with memoisation: find an order of the operations that
//! respects real time (an operation that returned before another was
//! invoked comes first) in which every operation sees the state the ones
//! before it left. An operation whose outcome the client never learned
//! (`returned == UNKNOWN`: an error, a timeout, a crash) may be placed
//! anywhere after its invocation, or nowhere.
#![allow(dead_code)]

use std::collections::HashSet;

/// `Op::returned` of an operation whose outcome is unknown.
pub const UNKNOWN: u128 = u128::MAX;

/// Most operations one register's history may hold (the search keeps the
/// remaining ones in a `u64`).
pub const MAX_OPS: usize = 64;

/// What an operation did; values are unique per written value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Wrote the value.
    Write(u64),
    /// Read this (`None`: the key did not exist).
    Read(Option<u64>),
    /// Compare-and-set: if the register held `expected` (`None`: absent),
    /// it became `new`; `applied` says whether the client was told it did
    /// (ignored when the outcome is unknown: then it did whatever the state
    /// at its place in the order decides).
    CompareAndSet {
        /// The value it compared against.
        expected: Option<u64>,
        /// The value it wrote if equal.
        new: u64,
        /// The answer the client got.
        applied: bool,
    },
}

/// One recorded operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// What it did.
    pub action: Action,
    /// When the client invoked it (any monotonic clock, shared by all).
    pub invoked: u128,
    /// When the answer came; [`UNKNOWN`] if none did.
    pub returned: u128,
}

impl Op {
    /// A write.
    pub fn write(value: u64, invoked: u128, returned: u128) -> Op {
        Op {
            action: Action::Write(value),
            invoked,
            returned,
        }
    }

    /// A read.
    pub fn read(value: Option<u64>, invoked: u128, returned: u128) -> Op {
        Op {
            action: Action::Read(value),
            invoked,
            returned,
        }
    }

    /// The state after this operation from `state`, or `None` if it cannot
    /// have run there.
    fn step(&self, state: Option<u64>) -> Option<Option<u64>> {
        let known = self.returned != UNKNOWN;
        match self.action {
            Action::Write(value) => Some(Some(value)),
            Action::Read(seen) => (seen == state).then_some(state),
            Action::CompareAndSet {
                expected,
                new,
                applied,
            } => {
                let equal = state == expected;
                match (known, applied) {
                    (true, true) => equal.then_some(Some(new)),
                    (true, false) => (!equal).then_some(state),
                    (false, _) => Some(if equal { Some(new) } else { state }),
                }
            }
        }
    }
}

/// Whether the operations on one register (initially absent) are
/// linearizable.
pub fn linearizable(ops: &[Op]) -> bool {
    assert!(
        ops.len() <= MAX_OPS,
        "the search keeps remaining ops in a u64"
    );
    fn search(
        ops: &[Op],
        remaining: u64,
        state: Option<u64>,
        seen: &mut HashSet<(u64, Option<u64>)>,
    ) -> bool {
        // Done when only operations with unknown outcome are left (they
        // may never have happened).
        if (0..ops.len())
            .filter(|i| remaining & (1 << i) != 0)
            .all(|i| ops[i].returned == UNKNOWN)
        {
            return true;
        }
        if !seen.insert((remaining, state)) {
            return false;
        }
        // An op can go next only if no remaining op returned before it was
        // invoked.
        let first_return = (0..ops.len())
            .filter(|i| remaining & (1 << i) != 0)
            .map(|i| ops[i].returned)
            .min()
            .unwrap_or(UNKNOWN);
        for (i, op) in ops.iter().enumerate() {
            if remaining & (1 << i) == 0 || op.invoked > first_return {
                continue;
            }
            if let Some(next) = op.step(state) {
                if search(ops, remaining & !(1 << i), next, seen) {
                    return true;
                }
            }
        }
        false
    }
    let all = if ops.len() == MAX_OPS {
        u64::MAX
    } else {
        (1u64 << ops.len()) - 1
    };
    search(ops, all, None, &mut HashSet::new())
}

/// The checker itself, on textbook histories (run by each including test
/// binary through [`self_test`]).
pub fn self_test() {
    let w = Op::write;
    let r = Op::read;
    let cas = |expected, new, applied, a, b| Op {
        action: Action::CompareAndSet {
            expected,
            new,
            applied,
        },
        invoked: a,
        returned: b,
    };
    // Overlapping write and read: either value is fine.
    assert!(linearizable(&[w(1, 0, 10), r(Some(1), 5, 6)]));
    assert!(linearizable(&[w(1, 0, 10), r(None, 5, 6)]));
    // A read after a completed write must see it.
    assert!(!linearizable(&[w(1, 0, 10), r(None, 11, 12)]));
    // Stale read: 1 then 2 completed, a later read returns 1.
    assert!(!linearizable(&[w(1, 0, 1), w(2, 2, 3), r(Some(1), 4, 5)]));
    // A write with unknown outcome may have happened later, or never...
    assert!(linearizable(&[
        w(1, 0, UNKNOWN),
        r(None, 1, 2),
        r(Some(1), 3, 4)
    ]));
    // ...but once seen it cannot be taken back (a crash losing it).
    assert!(!linearizable(&[
        w(1, 0, UNKNOWN),
        r(Some(1), 1, 2),
        r(None, 3, 4)
    ]));
    // Compare-and-set: applied only on the expected value.
    assert!(linearizable(&[
        w(1, 0, 1),
        cas(Some(1), 2, true, 2, 3),
        r(Some(2), 4, 5)
    ]));
    assert!(!linearizable(&[w(1, 0, 1), cas(Some(3), 2, true, 2, 3)]));
    assert!(!linearizable(&[w(1, 0, 1), cas(Some(1), 2, false, 2, 3)]));
    assert!(linearizable(&[
        w(1, 0, 1),
        cas(Some(3), 2, false, 2, 3),
        r(Some(1), 4, 5)
    ]));
    // Two applied compare-and-sets from the same value: one must have lost.
    assert!(!linearizable(&[
        w(1, 0, 1),
        cas(Some(1), 2, true, 2, 5),
        cas(Some(1), 3, true, 2, 5),
    ]));
    // An unknown compare-and-set takes effect only from its expected value.
    assert!(linearizable(&[
        w(1, 0, 1),
        cas(Some(1), 2, true, 2, UNKNOWN),
        r(Some(2), 6, 7)
    ]));
    assert!(!linearizable(&[
        w(1, 0, 1),
        cas(Some(5), 2, true, 2, UNKNOWN),
        r(Some(2), 6, 7)
    ]));
}
