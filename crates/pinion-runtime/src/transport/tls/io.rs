//! [`TlsIo`]: a TLS connection driven by readiness, like the plain streams.
//!
//! The handshake is tokio-rustls's; after it the connection is taken apart
//! into its TCP socket and its rustls state, and the pipe reads and writes
//! through `&self` with non-blocking calls, as it does a plain socket
//! ([`StreamIo`](crate::stream::StreamIo)): the reader and the writer of a
//! pipe are two futures of one task, so the rustls state sits behind a
//! mutex that is only ever held for one non-blocking step (never across an
//! `await`, never contended).
//!
//! * Reading: plaintext rustls already holds is returned first; otherwise
//!   the TCP socket is read (`try_read`, which clears tokio's readiness on
//!   `EAGAIN`) and the records processed. rustls refuses a record over
//!   2^14 bytes plus expansion from its header, so a peer cannot make this
//!   end buffer more than one record.
//! * Writing: plaintext is accepted only when rustls's outgoing ciphertext
//!   has been handed to the kernel, so a peer that does not read holds at
//!   most one batch of ciphertext here; [`TlsIo::flush`] pushes the rest.
//! * Errors are typed: a TLS failure comes back as an `io::Error` of kind
//!   `InvalidData` carrying the [`PeerError`], which [`peer_error`]
//!   recovers.

use std::io::{self, IoSlice, Read as _, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::BytesMut;
use pinion_core::{PeerError, TlsFault};
use tokio::net::TcpStream;

/// A TLS connection after its handshake (see the module docs).
#[derive(Debug)]
pub struct TlsIo {
    tcp: TcpStream,
    conn: Mutex<State>,
    /// rustls holds plaintext not read yet (a read must not wait for the
    /// socket to become readable).
    buffered: AtomicBool,
}

#[derive(Debug)]
struct State {
    conn: rustls::Connection,
    /// Plaintext bytes rustls holds, as its last `process_new_packets`
    /// said, less what was read since.
    plain: usize,
    /// Ciphertext read from the socket that rustls could not take yet.
    pending: Vec<u8>,
}

/// Bytes of ciphertext read from the socket at once: about two full
/// records.
pub const READ_LEN: usize = 32 * 1024;

thread_local! {
    /// Each core's read buffer for TLS pipes (never held across an await).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_LEN]);
}

/// `io::Write` over a non-blocking TCP socket.
struct TcpWrite<'a>(&'a TcpStream);

impl Write for TcpWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An `io::Error` carrying a peer's TLS fault.
pub(crate) fn peer_io_error(pe: PeerError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, PeerFault(pe))
}

/// The [`PeerError`] an `io::Error` from this module (or from the
/// tokio-rustls handshake) carries, if any.
pub fn peer_error(e: &io::Error) -> Option<PeerError> {
    let inner = e.get_ref()?;
    if let Some(PeerFault(pe)) = inner.downcast_ref::<PeerFault>() {
        return Some(*pe);
    }
    inner
        .downcast_ref::<rustls::Error>()
        .map(|r| PeerError::Tls(fault(r)))
}

#[derive(Debug)]
struct PeerFault(PeerError);

impl std::fmt::Display for PeerFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for PeerFault {}

/// What a rustls error says about the peer.
pub fn fault(e: &rustls::Error) -> TlsFault {
    use rustls::{CertificateError as C, Error as E, InvalidMessage as M};
    match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => TlsFault::UnknownIssuer,
            C::Expired | C::ExpiredContext { .. } => TlsFault::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => TlsFault::NotYetValid,
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsFault::NameMismatch,
            C::Revoked => TlsFault::Revoked,
            _ => TlsFault::BadCertificate,
        },
        E::NoCertificatesPresented => TlsFault::NoClientCertificate,
        E::AlertReceived(a) => TlsFault::PeerAlert(u8::from(*a)),
        E::InvalidMessage(M::MessageTooLarge) => TlsFault::RecordOverflow,
        E::InvalidMessage(M::InvalidContentType | M::UnknownProtocolVersion) => TlsFault::NotTls,
        E::PeerIncompatible(_) => TlsFault::Incompatible,
        _ => TlsFault::Protocol,
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    peer_io_error(PeerError::Tls(fault(&e)))
}

/// Hands rustls's outgoing ciphertext to the kernel: `WouldBlock` when the
/// kernel takes no more and some is left.
fn push(tcp: &TcpStream, c: &mut rustls::Connection) -> io::Result<()> {
    while c.wants_write() {
        if c.write_tls(&mut TcpWrite(tcp))? == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

impl TlsIo {
    /// Wraps a connection whose handshake is done.
    pub fn new(tcp: TcpStream, mut conn: rustls::Connection) -> TlsIo {
        // Records that came with the handshake's last flight may hold
        // plaintext already.
        let plain = conn
            .process_new_packets()
            .map(|s| s.plaintext_bytes_to_read())
            .unwrap_or(1);
        TlsIo {
            tcp,
            conn: Mutex::new(State {
                conn,
                plain,
                pending: Vec::new(),
            }),
            buffered: AtomicBool::new(plain > 0),
        }
    }

    /// The TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Never held across an await or a panic point that leaves the
        // state half-changed: a poisoned lock still holds a usable state.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a read may make progress.
    pub async fn readable(&self) -> io::Result<()> {
        if self.buffered.load(Ordering::Acquire) {
            return Ok(());
        }
        self.tcp.readable().await
    }

    /// Reads plaintext into `out`, as much as is there (up to `out`'s
    /// length): `Ok(0)` is the end of the stream (the peer's close_notify,
    /// or the TCP stream's end right after a record), `WouldBlock` means
    /// nothing is there yet.
    ///
    /// Ciphertext is read from the socket [`READ_LEN`] bytes at a time into
    /// a per-thread buffer (rustls's own `read_tls` reads 4 KiB per call,
    /// four system calls per full record); what rustls cannot take yet (a
    /// record and a half at most) waits in the connection's `pending`,
    /// which holds nothing otherwise.
    pub fn try_read(&self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut st = self.lock();
        let st = &mut *st;
        let mut got = 0;
        let mut eof = false;
        loop {
            match st.conn.reader().read(&mut out[got..]) {
                // The peer's close_notify (after what came before it).
                Ok(0) => {
                    self.buffered.store(false, Ordering::Release);
                    return Ok(got);
                }
                Ok(n) => {
                    got += n;
                    st.plain = st.plain.saturating_sub(n);
                    if got == out.len() {
                        let more = st.plain > 0 || !st.pending.is_empty();
                        self.buffered.store(more, Ordering::Release);
                        return Ok(got);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.buffered.store(false, Ordering::Release);
                    return if got > 0 { Ok(got) } else { Err(e) };
                }
            }
            st.plain = 0;
            self.buffered
                .store(!st.pending.is_empty(), Ordering::Release);
            if eof {
                // The TCP stream ended without a close_notify. SP ends a
                // connection by closing it (NNG sends no close_notify
                // either), so this is an ordinary end of stream.
                return Ok(got);
            }
            match self.feed(st) {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) if got > 0 && e.kind() == io::ErrorKind::WouldBlock => return Ok(got),
                Err(e) => return if got > 0 { Ok(got) } else { Err(e) },
            }
            match st.conn.process_new_packets() {
                Ok(s) => st.plain = s.plaintext_bytes_to_read(),
                Err(e) => {
                    // rustls queued an alert for the peer: best effort.
                    let _ = st.conn.write_tls(&mut TcpWrite(&self.tcp));
                    return Err(tls_error(e));
                }
            }
            // Key updates and the like are answered at once (what the
            // kernel does not take now goes with the next write).
            let _ = push(&self.tcp, &mut st.conn);
        }
    }

    /// Gives rustls more ciphertext: what is pending, else a read of the
    /// socket. `Ok(0)`: the socket's end of stream.
    fn feed(&self, st: &mut State) -> io::Result<usize> {
        if !st.pending.is_empty() {
            let mut rest = &st.pending[..];
            let n = st.conn.read_tls(&mut rest)?;
            st.pending.drain(..n);
            if st.pending.is_empty() {
                st.pending = Vec::new(); // hold nothing while idle
            }
            return Ok(n.max(1));
        }
        SCRATCH.with_borrow_mut(|buf| {
            let n = self.tcp.try_read(&mut buf[..])?;
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                // rustls takes up to a record and a bit before its
                // records are processed ("message buffer full").
                match st.conn.read_tls(&mut rest) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            st.pending.extend_from_slice(rest);
            Ok(n)
        })
    }

    /// Reads what is there into `buf`'s spare capacity (which must not be
    /// empty), as [`StreamIo::try_read_buf`](crate::stream::StreamIo::try_read_buf).
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let at = buf.len();
        let room = buf.capacity() - at;
        buf.resize(at + room, 0);
        let r = self.try_read(&mut buf[at..]);
        buf.truncate(at + *r.as_ref().unwrap_or(&0));
        r
    }

    /// Encrypts as much of `b` as may be written now: `WouldBlock` while
    /// earlier ciphertext is still waiting for the kernel.
    pub fn try_write_vectored(&self, b: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut st = self.lock();
        let c = &mut st.conn;
        push(&self.tcp, c)?;
        let n = c.writer().write_vectored(b)?;
        match push(&self.tcp, c) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if n == 0 && b.iter().any(|s| !s.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// [`TlsIo::try_write_vectored`] of one buffer.
    pub fn try_write(&self, b: &[u8]) -> io::Result<usize> {
        self.try_write_vectored(&[IoSlice::new(b)])
    }

    /// rustls holds ciphertext the kernel did not take yet.
    pub fn holds_unsent(&self) -> bool {
        self.lock().conn.wants_write()
    }

    /// Waits until the socket may take more.
    pub async fn writable(&self) -> io::Result<()> {
        self.tcp.writable().await
    }

    /// Writes out every byte of ciphertext rustls holds.
    pub async fn flush(&self) -> io::Result<()> {
        loop {
            let r = push(&self.tcp, &mut self.lock().conn);
            match r {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.writable().await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends close_notify (if the kernel takes it now) and shuts the TCP
    /// write side down.
    pub fn shutdown_write(&self) {
        {
            let c = &mut self.lock().conn;
            c.send_close_notify();
            let _ = push(&self.tcp, c);
        }
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
    }
}
