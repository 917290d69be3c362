//! [`StreamIo`]: the byte stream of a TCP, IPC or TLS pipe, usable through
//! `&self`.
//!
//! The pipe task reads and writes it; the socket driver may also write to it
//! directly ("write-through") when the pipe's write queue is empty, which
//! saves waking the pipe's writer task for every message. Both go through
//! readiness (`readable`/`writable`) and non-blocking `try_*` calls, which
//! tokio allows on a shared reference, so no lock is needed: the driver only
//! writes while the writer task has nothing queued, so their writes never
//! interleave.

use std::io::{self, IoSlice};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// A connected TCP or UNIX stream, or a TLS connection over TCP.
#[derive(Debug)]
pub enum StreamIo {
    /// TCP.
    Tcp(TcpStream),
    /// IPC.
    Ipc(UnixStream),
    /// TLS over TCP, after its handshake. The socket driver never writes
    /// to it directly (its pipes offer no write-through).
    Tls(Box<crate::transport::tls::io::TlsIo>),
}

impl StreamIo {
    /// Waits until the stream may be readable.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            StreamIo::Tcp(s) => s.readable().await,
            StreamIo::Ipc(s) => s.readable().await,
            StreamIo::Tls(s) => s.readable().await,
        }
    }

    /// Reads what is there into `buf`: `Ok(0)` at the end of the stream,
    /// `WouldBlock` when there is nothing.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            StreamIo::Tcp(s) => s.try_read(buf),
            StreamIo::Ipc(s) => s.try_read(buf),
            StreamIo::Tls(s) => s.try_read(buf),
        }
    }

    /// Reads what is there into `buf`'s spare capacity (which must not be
    /// empty).
    ///
    /// A read that does not fill the space offered means the kernel had no
    /// more: the stream's readiness is then cleared at once, so the next
    /// call waits for new data instead of costing a `recv` that would only
    /// say `EAGAIN`. (Readiness that arrives in between is not lost: tokio
    /// only clears the readiness it observed before the read.)
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let room = buf.capacity() - buf.len();
        let mut got = 0;
        let mut read = |sock: socket2::SockRef<'_>| {
            let n = crate::sys::recv_into_spare(&sock, buf)?;
            got = n;
            if n > 0 && n < room {
                // Short read: report "would block" to clear readiness.
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
            Ok(n)
        };
        let r = match self {
            StreamIo::Tcp(s) => s.try_io(Interest::READABLE, || read(socket2::SockRef::from(s))),
            StreamIo::Ipc(s) => s.try_io(Interest::READABLE, || read(socket2::SockRef::from(s))),
            StreamIo::Tls(s) => return s.try_read_buf(buf),
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
            r => r,
        }
    }

    /// Waits until the stream may be writable.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            StreamIo::Tcp(s) => s.writable().await,
            StreamIo::Ipc(s) => s.writable().await,
            StreamIo::Tls(s) => s.writable().await,
        }
    }

    /// Writes as much of `b` as the kernel takes now.
    pub fn try_write(&self, b: &[u8]) -> io::Result<usize> {
        match self {
            StreamIo::Tcp(s) => s.try_write(b),
            StreamIo::Ipc(s) => s.try_write(b),
            StreamIo::Tls(s) => s.try_write(b),
        }
    }

    /// Vectored [`StreamIo::try_write`].
    pub fn try_write_vectored(&self, b: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            StreamIo::Tcp(s) => s.try_write_vectored(b),
            StreamIo::Ipc(s) => s.try_write_vectored(b),
            StreamIo::Tls(s) => s.try_write_vectored(b),
        }
    }

    /// Reads until `buf` is full.
    pub async fn read_exact(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut at = 0;
        while at < buf.len() {
            self.readable().await?;
            match self.try_read(&mut buf[at..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes all of `b`.
    pub async fn write_all(&self, mut b: &[u8]) -> io::Result<()> {
        while !b.is_empty() {
            match self.try_write(b) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => b = &b[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) => return Err(e),
            }
        }
        self.flush().await
    }

    /// A TLS connection holds ciphertext the kernel did not take yet.
    pub fn holds_unsent(&self) -> bool {
        match self {
            StreamIo::Tls(s) => s.holds_unsent(),
            _ => false,
        }
    }

    /// Writes out what a TLS connection still holds encrypted (nothing to
    /// do for the others).
    pub async fn flush(&self) -> io::Result<()> {
        match self {
            StreamIo::Tls(s) => s.flush().await,
            _ => Ok(()),
        }
    }

    /// Writes every chunk, in order, with vectored writes; empties `chunks`.
    pub async fn write_chunks(&self, chunks: &mut Vec<Bytes>) -> io::Result<()> {
        write_chunks(self, chunks).await
    }

    /// Shuts the write side down (FIN after what is queued in the kernel).
    pub fn shutdown_write(&self) {
        let r = match self {
            StreamIo::Tcp(s) => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write),
            StreamIo::Ipc(s) => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write),
            StreamIo::Tls(s) => {
                s.shutdown_write();
                Ok(())
            }
        };
        let _ = r;
    }
}

/// A non-blocking byte sink with readiness: a [`StreamIo`] or a tokio
/// `TcpStream` (the WebSocket pipe's).
pub trait VectoredSink {
    /// Writes what the kernel takes now.
    fn try_write_vectored(&self, b: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Waits until writing may succeed.
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>>;
    /// Writes out what the sink still holds after the writes it accepted
    /// (a TLS connection's ciphertext); nothing for a plain socket.
    fn flush(&self) -> impl std::future::Future<Output = io::Result<()>> {
        std::future::ready(Ok(()))
    }
}

impl VectoredSink for StreamIo {
    fn try_write_vectored(&self, b: &[IoSlice<'_>]) -> io::Result<usize> {
        StreamIo::try_write_vectored(self, b)
    }
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> {
        StreamIo::writable(self)
    }
    fn flush(&self) -> impl std::future::Future<Output = io::Result<()>> {
        StreamIo::flush(self)
    }
}

impl VectoredSink for crate::transport::tls::io::TlsIo {
    fn try_write_vectored(&self, b: &[IoSlice<'_>]) -> io::Result<usize> {
        crate::transport::tls::io::TlsIo::try_write_vectored(self, b)
    }
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> {
        crate::transport::tls::io::TlsIo::writable(self)
    }
    fn flush(&self) -> impl std::future::Future<Output = io::Result<()>> {
        crate::transport::tls::io::TlsIo::flush(self)
    }
}

impl VectoredSink for TcpStream {
    fn try_write_vectored(&self, b: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, b)
    }
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> {
        TcpStream::writable(self)
    }
}

/// Writes every chunk, in order, with vectored writes (64 chunks per call
/// at most), waiting for writability when the kernel takes nothing;
/// empties `chunks`.
pub async fn write_chunks(out: &impl VectoredSink, chunks: &mut Vec<Bytes>) -> io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let r = {
            let slices: Vec<IoSlice<'_>> = chunks[first..]
                .iter()
                .take(64)
                .map(|c| IoSlice::new(c))
                .collect();
            out.try_write_vectored(&slices)
        };
        let mut n = match r {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                out.writable().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        while n > 0 && first < chunks.len() {
            let c = &mut chunks[first];
            if n >= c.len() {
                n -= c.len();
                first += 1;
            } else {
                c.advance(n);
                n = 0;
            }
        }
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    chunks.clear();
    out.flush().await
}
