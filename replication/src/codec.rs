//! Little-endian byte helpers for the explicit encodings of this crate
//! (commands, log entries, the WAL metadata record).
//!
//! Decoding never trusts its input: every read is bounds-checked and a
//! short or malformed buffer is a [`DecodeError`], never a panic (the bytes
//! come from disk or from a peer).

/// Bytes that do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {what}: {reason}")]
pub struct DecodeError {
    /// What was being decoded (a record, a command).
    pub what: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// A cursor over bytes being decoded.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { bytes, at: 0, what }
    }

    pub(crate) fn error(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            what: self.what,
            reason: format!("{} at byte {}", reason.into(), self.at),
        }
    }

    pub(crate) fn take(&mut self, count: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() - self.at < count {
            return Err(self.error(format!(
                "{count} bytes wanted, {} left",
                self.bytes.len() - self.at
            )));
        }
        let taken = &self.bytes[self.at..self.at + count];
        self.at += count;
        Ok(taken)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    /// A u32 length then that many bytes.
    pub(crate) fn bytes_u32(&mut self) -> Result<&'a [u8], DecodeError> {
        let length = self.u32()? as usize;
        self.take(length)
    }

    /// A count read from the input, checked against what is left (each item
    /// takes at least `min_item_bytes`), so a damaged count cannot make us
    /// allocate gigabytes.
    pub(crate) fn count(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        if count.saturating_mul(min_item_bytes.max(1)) > self.bytes.len() - self.at {
            return Err(self.error(format!("count {count} exceeds the bytes left")));
        }
        Ok(count)
    }

    pub(crate) fn utf8(&mut self, bytes: &[u8]) -> Result<String, DecodeError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| self.error("invalid UTF-8"))
    }

    /// Decoding must consume everything: trailing bytes mean a format mismatch.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.at != self.bytes.len() {
            return Err(self.error(format!("{} trailing bytes", self.bytes.len() - self.at)));
        }
        Ok(())
    }
}

pub(crate) fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// A u32 length then the bytes. Callers bound lengths first.
pub(crate) fn put_bytes_u32(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).expect("length bounded by the caller");
    put_u32(out, length);
    out.extend_from_slice(bytes);
}
