//! The bounds-checked reads every decoder of [`super`] goes through: a read past the end of the
//! message, a negative count or a string without its NUL is a [`DecodeError`], never a panic.

use bytes::Bytes;

use super::DecodeError;

/// A bounds-checked cursor over one message.
pub(super) struct Reader {
    pub(super) buf: Bytes,
    pub(super) pos: usize,
}

impl Reader {
    pub(super) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], DecodeError> {
        let start = self.pos;
        let have = self.remaining();
        let truncated = DecodeError::Truncated {
            what,
            offset: start,
            need: n,
            have,
        };
        if n > have {
            return Err(truncated);
        }
        // n <= len - start, so this neither overflows nor leaves the buffer.
        let end = start + n;
        self.pos = end;
        self.buf.get(start..end).ok_or(truncated)
    }

    pub(super) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let offset = self.pos;
        let have = self.remaining();
        let s = self.take(N, what)?;
        <[u8; N]>::try_from(s).map_err(|_| DecodeError::Truncated {
            what,
            offset,
            need: N,
            have,
        })
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>(what)?;
        Ok(b)
    }

    pub(super) fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    pub(super) fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(super) fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// An `Int16` count, which must not be negative.
    pub(super) fn count16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i16(what)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            what,
            value: value.into(),
            offset,
        })
    }

    /// An `Int32` count or length, which must not be negative.
    pub(super) fn count32(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i32(what)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            what,
            value: value.into(),
            offset,
        })
    }

    pub(super) fn marker(&mut self, expected: u8, what: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        let found = self.u8(what)?;
        if found == expected {
            Ok(())
        } else {
            Err(DecodeError::BadTupleMarker {
                expected: what,
                found,
                offset,
            })
        }
    }

    /// `n` bytes as a zero-copy slice of the message.
    pub(super) fn slice(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, what)?;
        Ok(self.buf.slice(start..self.pos))
    }

    /// A NUL-terminated UTF-8 string.
    pub(super) fn cstring(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = self.buf.get(offset..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::MissingNul { what, offset })?;
        let s = rest
            .get(..len)
            .and_then(|s| std::str::from_utf8(s).ok())
            .ok_or(DecodeError::InvalidUtf8 { what, offset })?
            .to_owned();
        self.pos = offset.saturating_add(len).saturating_add(1);
        Ok(s)
    }
}
