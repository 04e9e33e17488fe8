//! Graceful shutdown: the signals that stop a node in two phases.
//!
//! On SIGTERM or SIGINT (the binary turns them into `node::NodeStopper::stop`)
//! the node's main thread trips two signals in turn, each seen by every
//! core:
//! 1. **drain** ([`StopSignal`] `drain`): accept loops stop; each connection
//!    answers every request it has read, and goes on reading for
//!    [`DRAIN_READ_GRACE`] (requests already on their way, sent before the
//!    client could know), then closes (the flatbuffers protocol first sends
//!    one `ShuttingDown` error with request id 0, so a client knows why and
//!    retries elsewhere what got no answer); a cluster core hands its group's
//!    leadership to another voter. Cores still serve each other's messages
//!    meanwhile, so an answer that needs another core still comes. A core
//!    reports drained once its connections are gone and its WAL is synced.
//! 2. **exit** (`exit`), once every core is drained (or the shutdown time
//!    is up): a cluster core shuts its Raft group down, and every core's
//!    executor ends. The process exits 0.
//!
//! Both signals are closed `async_channel`s: closing wakes every waiter on
//! every core at once, and a signal once tripped stays tripped.

/// Trips a [`StopSignal`] (held by the main thread).
#[derive(Debug)]
pub struct StopTrigger {
    sender: async_channel::Sender<()>,
}

/// Waits for its [`StopTrigger`] (held, cloned, by every core and
/// connection).
#[derive(Debug, Clone)]
pub struct StopSignal {
    receiver: async_channel::Receiver<()>,
}

/// A new pair of trigger and signal.
pub fn stop_signal() -> (StopTrigger, StopSignal) {
    // Nothing is ever sent: closing the channel is the signal.
    let (sender, receiver) = async_channel::bounded(1);
    (StopTrigger { sender }, StopSignal { receiver })
}

impl StopTrigger {
    /// Trips the signal (again: no effect).
    pub fn trip(&self) {
        self.sender.close();
    }
}

impl StopSignal {
    /// Has it been tripped?
    pub fn is_tripped(&self) -> bool {
        self.receiver.is_closed()
    }

    /// Waits until it is tripped.
    pub async fn tripped(&self) {
        let received = self.receiver.recv().await;
        assert!(received.is_err(), "nothing is ever sent on a stop signal");
    }
}

/// How long a connection keeps reading requests once it has noticed the
/// drain: what the client sent before it could know arrives and is
/// answered; a client that keeps sending is cut off after it.
pub const DRAIN_READ_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// One connection's view of the drain signal.
#[derive(Debug)]
pub struct ConnectionDrain {
    signal: StopSignal,
    /// Set when the connection first noticed the drain: it reads until then.
    reading_until: Option<std::time::Instant>,
}

impl ConnectionDrain {
    /// Watches `signal` for one connection.
    pub fn new(signal: StopSignal) -> ConnectionDrain {
        ConnectionDrain {
            signal,
            reading_until: None,
        }
    }

    /// Resolves when the connection must stop reading: [`DRAIN_READ_GRACE`]
    /// after it first notices the drain (at once on later calls past it).
    pub async fn must_stop_reading(&mut self) {
        let until = match self.reading_until {
            Some(until) => until,
            None => {
                self.signal.tripped().await;
                *self
                    .reading_until
                    .insert(std::time::Instant::now() + DRAIN_READ_GRACE)
            }
        };
        glommio::timer::sleep(until.saturating_duration_since(std::time::Instant::now())).await;
    }
}

/// What a core watches: the two phases of a shutdown.
#[derive(Debug, Clone)]
pub struct CoreStopSignals {
    /// Phase 1: stop accepting, answer what is in flight, close.
    pub drain: StopSignal,
    /// Phase 2: every core has drained; end the executor.
    pub exit: StopSignal,
}
