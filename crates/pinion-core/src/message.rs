//! [`Message`]: an SP protocol header plus a body.
//!
//! On the wire the two are one length-prefixed payload; the pattern decides
//! where the header ends (a REQ/REP backtrace, a PAIR v1 hop count, nothing
//! for push/pull). Messages from a stream transport arrive with an empty
//! header and the whole payload in the body; the pattern moves header words
//! from the front of the body into the header. Messages over `inproc://`
//! keep the sender's split, so the parsing helpers treat `header ++ body` as
//! one byte string.

use bytes::{Buf, Bytes};
use std::fmt;

use crate::error::CallerError;

/// The largest protocol header a message can carry, in bytes: sixteen 32-bit
/// words, enough for a backtrace at the largest TTL pinion accepts (15) plus
/// the pipe id that a raw socket prepends.
pub const MAX_HEADER: usize = 64;

/// A protocol header, stored inline (no allocation).
///
/// Besides the header bytes it remembers which pipe a received message came
/// in on ([`Message::pipe`]); that tag is not part of the header's value
/// (equality compares the bytes only) and costs no space (it sits in what
/// would be padding).
#[derive(Clone, Copy)]
pub struct Header {
    len: u8,
    /// The pipe the message arrived on; 0 for none.
    pipe: u32,
    buf: [u8; MAX_HEADER],
}

impl PartialEq for Header {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Header {}

impl Default for Header {
    fn default() -> Self {
        Self::new()
    }
}

impl Header {
    /// An empty header.
    pub const fn new() -> Self {
        Header {
            len: 0,
            pipe: 0,
            buf: [0; MAX_HEADER],
        }
    }

    /// A header holding `bytes`, or `HeaderTooLong` past [`MAX_HEADER`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CallerError> {
        let mut h = Header::new();
        h.extend(bytes)?;
        Ok(h)
    }

    /// The header bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when the header holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops every byte.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends bytes at the end.
    pub fn extend(&mut self, bytes: &[u8]) -> Result<(), CallerError> {
        let at = self.len as usize;
        let end = at + bytes.len();
        if end > MAX_HEADER {
            return Err(CallerError::HeaderTooLong);
        }
        self.buf[at..end].copy_from_slice(bytes);
        self.len = end as u8;
        Ok(())
    }

    /// Appends one big-endian 32-bit word.
    pub fn push_word(&mut self, word: u32) -> Result<(), CallerError> {
        self.extend(&word.to_be_bytes())
    }

    /// Inserts one big-endian 32-bit word at the front.
    pub fn push_word_front(&mut self, word: u32) -> Result<(), CallerError> {
        let len = self.len as usize;
        if len + 4 > MAX_HEADER {
            return Err(CallerError::HeaderTooLong);
        }
        self.buf.copy_within(0..len, 4);
        self.buf[..4].copy_from_slice(&word.to_be_bytes());
        self.len += 4;
        Ok(())
    }

    /// Removes and returns the first big-endian 32-bit word.
    pub fn pop_word_front(&mut self) -> Option<u32> {
        let len = self.len as usize;
        if len < 4 {
            return None;
        }
        let w = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes"));
        self.buf.copy_within(4..len, 0);
        self.len -= 4;
        Some(w)
    }

    /// The first big-endian 32-bit word, if there is one.
    pub fn first_word(&self) -> Option<u32> {
        (self.len >= 4).then(|| u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")))
    }

    /// The last big-endian 32-bit word, if there is one.
    pub fn last_word(&self) -> Option<u32> {
        let len = self.len as usize;
        (len >= 4).then(|| u32::from_be_bytes(self.buf[len - 4..len].try_into().expect("4 bytes")))
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Header(")?;
        for b in self.as_slice() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// One SP message: protocol header and body.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Protocol header (backtrace, hop count, ...). Empty for cooked messages
    /// handed to the application.
    pub header: Header,
    /// Application payload.
    pub body: Bytes,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("header", &self.header)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Message {
    /// A message with an empty header.
    pub fn from_body(body: impl Into<Bytes>) -> Self {
        Message {
            header: Header::new(),
            body: body.into(),
        }
    }

    /// A received message: `body`, tagged with the pipe it came in on.
    pub fn received(body: impl Into<Bytes>, pipe: crate::protocol::PipeId) -> Self {
        let mut m = Message::from_body(body);
        m.header.pipe = pipe.0;
        m
    }

    /// The pipe (connection) this message was received on, when it was
    /// received (`None` for a message the application made). With it the
    /// application can ask the socket about that connection, such as the
    /// peer's verified TLS identity. The tag survives the pattern's header
    /// handling; it is never sent.
    pub fn pipe(&self) -> Option<crate::protocol::PipeId> {
        (self.header.pipe != 0).then_some(crate::protocol::PipeId(self.header.pipe))
    }

    /// Tags the message with the pipe it came in on.
    pub fn set_pipe(&mut self, pipe: crate::protocol::PipeId) {
        self.header.pipe = pipe.0;
    }

    /// Bytes this message occupies on the wire (header plus body).
    pub fn wire_len(&self) -> usize {
        self.header.len() + self.body.len()
    }

    /// Moves one 32-bit word from the front of the body to the end of the
    /// header and returns it. `None` if the body holds fewer than 4 bytes.
    pub fn shift_word_to_header(&mut self) -> Option<u32> {
        if self.body.len() < 4 {
            return None;
        }
        let w = u32::from_be_bytes(self.body[..4].try_into().expect("4 bytes"));
        self.header.push_word(w).ok()?;
        self.body.advance(4);
        Some(w)
    }

    /// Reads the next 32-bit word of `header ++ body` at byte offset `at`.
    pub fn word_at(&self, at: usize) -> Option<u32> {
        let h = self.header.as_slice();
        let mut w = [0u8; 4];
        for (i, slot) in w.iter_mut().enumerate() {
            let pos = at + i;
            *slot = if pos < h.len() {
                h[pos]
            } else {
                *self.body.get(pos - h.len())?
            };
        }
        Some(u32::from_be_bytes(w))
    }

    /// Normalises the split so that the header holds exactly the first
    /// `header_len` bytes of `header ++ body`. Returns `false` (and leaves the
    /// message unchanged) when there are not that many bytes or the header
    /// would be longer than [`MAX_HEADER`].
    pub fn split_header_at(&mut self, header_len: usize) -> bool {
        let total = self.wire_len();
        if header_len > total || header_len > MAX_HEADER {
            return false;
        }
        let hl = self.header.len();
        if header_len >= hl {
            let take = header_len - hl;
            let (ok, rest) = {
                let moved = &self.body[..take];
                (self.header.extend(moved).is_ok(), take)
            };
            if !ok {
                return false;
            }
            self.body.advance(rest);
        } else {
            // Move the header's tail back in front of the body.
            let tail = &self.header.as_slice()[header_len..];
            let mut b = Vec::with_capacity(tail.len() + self.body.len());
            b.extend_from_slice(tail);
            b.extend_from_slice(&self.body);
            self.body = Bytes::from(b);
            self.header.len = header_len as u8;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipe_tag_costs_no_space_and_is_not_part_of_the_header() {
        // 1 length byte + 3 padding + 4 pipe + 64 bytes: the tag sits where
        // the message's padding before `body` was.
        assert_eq!(std::mem::size_of::<Header>(), 72);
        assert!(std::mem::size_of::<Message>() <= 104);
        let mut a = Message::received(Bytes::from_static(b"x"), crate::protocol::PipeId(7));
        assert_eq!(a.pipe(), Some(crate::protocol::PipeId(7)));
        a.header.push_word(1).unwrap();
        a.header.pop_word_front();
        a.header.clear();
        assert_eq!(a.pipe(), Some(crate::protocol::PipeId(7)));
        assert_eq!(a.header, Header::new());
        assert_eq!(Message::from_body("y").pipe(), None);
    }

    #[test]
    fn header_words() {
        let mut h = Header::new();
        h.push_word(1).unwrap();
        h.push_word_front(0x8000_0002).unwrap();
        assert_eq!(h.first_word(), Some(0x8000_0002));
        assert_eq!(h.last_word(), Some(1));
        assert_eq!(h.pop_word_front(), Some(0x8000_0002));
        assert_eq!(h.as_slice(), &[0, 0, 0, 1]);
        for _ in 0..15 {
            h.push_word(7).unwrap();
        }
        assert_eq!(h.push_word(7), Err(CallerError::HeaderTooLong));
    }

    #[test]
    fn split_header_both_ways() {
        let mut m = Message::from_body(&b"\x80\0\0\x05hello"[..]);
        assert!(m.split_header_at(4));
        assert_eq!(m.header.as_slice(), b"\x80\0\0\x05");
        assert_eq!(&m.body[..], b"hello");
        assert_eq!(m.word_at(0), Some(0x8000_0005));
        assert_eq!(m.word_at(4), Some(u32::from_be_bytes(*b"hell")));
        assert!(m.split_header_at(2));
        assert_eq!(m.header.as_slice(), b"\x80\0");
        assert_eq!(&m.body[..], b"\0\x05hello");
        assert!(!m.split_header_at(100));
    }
}
