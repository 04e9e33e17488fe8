//! An accepted connection's byte stream: the read buffer every front end
//! fills, and the lingering close that lets a client read its last answers.

use futures_lite::AsyncReadExt;

use crate::net::tls::ClientStream;

use crate::shutdown::ConnectionDrain;

/// How long a connection closed by a shutdown keeps reading (and dropping)
/// what the client still sends, after its last answer went out.
pub const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// Closes a connection the node ends while the client may still be
/// sending: half-closes it (the client reads every answer, then end of
/// stream), then reads and drops what arrives until the client closes too
/// or [`CLOSE_LINGER`] passes. Closing at once would make the kernel answer
/// the client's unread bytes with a reset, which can destroy answers the
/// client has not read yet.
pub(crate) async fn close_lingering(stream: &mut ClientStream) -> std::io::Result<()> {
    stream.shutdown_write().await?;
    let discard = async {
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
    };
    futures_lite::future::or(discard, glommio::timer::sleep(CLOSE_LINGER)).await;
    Ok(())
}

/// What [`ReadBuffer::fill_within`] turned up.
pub(crate) enum Filled {
    /// Bytes read (0: end of stream).
    Bytes(usize),
    /// The node is shutting down: stop reading.
    Draining,
    /// Nothing arrived within the idle limit the caller gave.
    Idle,
}

/// Bytes a connection's read buffer starts with (it grows for large frames
/// and shrinks back once they are consumed).
pub const READ_BUFFER_INITIAL_BYTES: usize = 8 << 10;

/// A read buffer that never zero-fills on the hot path: one allocation,
/// reused, compacted when the unread bytes reach its end.
pub(crate) struct ReadBuffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuffer {
    pub(crate) fn new() -> ReadBuffer {
        ReadBuffer {
            data: vec![0; READ_BUFFER_INITIAL_BYTES],
            start: 0,
            end: 0,
        }
    }

    pub(crate) fn unread(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub(crate) fn consume(&mut self, bytes: usize) {
        assert!(self.start + bytes <= self.end);
        self.start += bytes;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.data.len() > 4 * READ_BUFFER_INITIAL_BYTES {
                // A large frame has gone: give its memory back.
                self.data = vec![0; READ_BUFFER_INITIAL_BYTES];
            }
        }
    }

    /// Reads once from `stream`. `bytes_wanted` is how many unread bytes the
    /// caller needs in all (the frame being assembled); the buffer grows
    /// towards it only by doubling as bytes arrive, so a hostile length
    /// prefix costs nothing until its bytes are actually sent. A full buffer
    /// also doubles (a RESP command's size is not announced up front).
    /// Returns bytes read (0: end of stream).
    ///
    /// With an `idle_limit` (an unauthenticated connection's), gives up
    /// with [`Filled::Idle`] when nothing arrives within it.
    pub(crate) async fn fill_within(
        &mut self,
        stream: &mut ClientStream,
        bytes_wanted: usize,
        drain: &mut ConnectionDrain,
        idle_limit: Option<std::time::Duration>,
    ) -> std::io::Result<Filled> {
        // The drain first: a connection with bytes still arriving must not
        // keep a shutdown waiting past its grace.
        let draining = async {
            drain.must_stop_reading().await;
            Ok(Filled::Draining)
        };
        let read = async { self.fill(stream, bytes_wanted).await.map(Filled::Bytes) };
        match idle_limit {
            // Every read of an authenticated connection: no timer.
            None => futures_lite::future::or(draining, read).await,
            Some(limit) => {
                let idle = async {
                    glommio::timer::sleep(limit).await;
                    Ok(Filled::Idle)
                };
                futures_lite::future::or(draining, futures_lite::future::or(idle, read)).await
            }
        }
    }

    /// [`ReadBuffer::fill_within`] without a drain signal or idle limit.
    async fn fill(
        &mut self,
        stream: &mut ClientStream,
        bytes_wanted: usize,
    ) -> std::io::Result<usize> {
        if self.start > 0
            && (self.end == self.data.len() || self.data.len() - self.start < bytes_wanted)
        {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() {
            let grown = (self.data.len() * 2).max(READ_BUFFER_INITIAL_BYTES);
            self.data.resize(grown, 0);
        }
        let read = stream.read(&mut self.data[self.end..]).await?;
        self.end += read;
        Ok(read)
    }
}
