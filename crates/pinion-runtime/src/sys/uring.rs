//! Batched non-blocking sends through io_uring: many sockets' `sendmsg`s
//! per `io_uring_enter`.
//!
//! A [`BatchSender`] owns one ring, meant to be used by one core's thread
//! (it is created with `IORING_SETUP_SINGLE_ISSUER |
//! IORING_SETUP_DEFER_TASKRUN` when the kernel allows, a plain ring
//! otherwise). [`BatchSender::send_batch`] queues one `IORING_OP_SENDMSG`
//! per item with `MSG_DONTWAIT | MSG_NOSIGNAL`, submits them (as few
//! `io_uring_enter` calls as the submission queue's size allows: one per
//! [`BatchSender::sq_entries`] items) and waits for **every** completion
//! before it returns, so the caller's buffers, borrowed for the call, are
//! never used by the kernel after it.
//!
//! What each item comes to is what a non-blocking `sendmsg(2)` would have
//! returned: the bytes taken (possibly fewer than offered), `WouldBlock`
//! (EAGAIN) when the socket's send buffer is full — the request fails at
//! once, it does not wait for the socket — or the socket's error (EPIPE,
//! ECONNRESET, …; no SIGPIPE is raised).
//!
//! # What it does not do
//!
//! It does not register for readiness: a caller that got `WouldBlock` has
//! to learn of writability some other way (the hub's fan-out does its next
//! write through tokio, whose own `WouldBlock` arms its epoll interest).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Submission queue entries of a ring made by [`BatchSender::new`] when
/// the caller has no preference.
pub const DEFAULT_ENTRIES: u32 = 1024;

/// io_uring cannot be used here: the caller should send another way.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// `io_uring_setup` failed even for a plain ring (no kernel support,
    /// `kernel.io_uring_disabled`, a seccomp filter, locked-memory limits,
    /// or not Linux).
    #[error("io_uring is unavailable: {0}")]
    Unavailable(#[source] io::Error),
    /// The ring stopped working (an `io_uring_enter` failure other than
    /// an interruption). The batch that met it was still completed: each
    /// item has its result (those never submitted: `WouldBlock`, nothing
    /// written). The sender refuses every later batch the same way.
    #[error("io_uring ring failed: {0}")]
    Broken(#[source] io::Error),
}

/// How the ring was set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKind {
    /// `SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1+): completions run only
    /// when this thread asks for them, no inter-processor interrupts.
    DeferTaskrun,
    /// A plain ring: the kernel refused the flags above.
    Plain,
}

/// One thread's batched sender. See the module docs.
pub struct BatchSender {
    ring: io_uring::IoUring,
    kind: RingKind,
    /// The ring failed: nothing is submitted any more (entries the kernel
    /// did not consume stay unread in the queue; the ring is never entered
    /// again).
    broken: Option<io::ErrorKind>,
}

impl std::fmt::Debug for BatchSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSender")
            .field("kind", &self.kind)
            .field("sq_entries", &self.sq_entries())
            .field("broken", &self.broken)
            .finish()
    }
}

/// The per-item result for an item the kernel never saw.
fn not_sent() -> io::Result<usize> {
    Err(io::Error::from(io::ErrorKind::WouldBlock))
}

impl BatchSender {
    /// A ring with `entries` submission queue entries (rounded up to a
    /// power of two by the kernel; the completion queue is twice that).
    /// Tries `SINGLE_ISSUER | DEFER_TASKRUN` first, then a plain ring.
    ///
    /// With `DEFER_TASKRUN` the ring may only be used from the thread
    /// that created it: create it on the thread (core) that will send.
    ///
    /// # Errors
    ///
    /// [`UringError::Unavailable`] when no ring can be set up.
    pub fn new(entries: u32) -> Result<Self, UringError> {
        Self::build(entries, true)
    }

    /// As [`BatchSender::new`], trying `SINGLE_ISSUER | DEFER_TASKRUN`
    /// only if `defer` (the tests build a plain ring this way).
    fn build(entries: u32, defer: bool) -> Result<Self, UringError> {
        let entries = entries.clamp(1, 32768);
        let first = if defer {
            io_uring::IoUring::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_submit_all()
                .setup_clamp()
                .build(entries)
        } else {
            Err(io::Error::from(io::ErrorKind::Unsupported))
        };
        let (ring, kind) = match first {
            Ok(r) => (r, RingKind::DeferTaskrun),
            Err(_) => {
                let plain = io_uring::IoUring::builder()
                    .setup_submit_all()
                    .setup_clamp()
                    .build(entries)
                    .or_else(|_| io_uring::IoUring::new(entries));
                match plain {
                    Ok(r) => (r, RingKind::Plain),
                    Err(e) => return Err(UringError::Unavailable(e)),
                }
            }
        };
        Ok(BatchSender {
            ring,
            kind,
            broken: None,
        })
    }

    /// How the ring was set up.
    pub fn kind(&self) -> RingKind {
        self.kind
    }

    /// Items submitted per `io_uring_enter` at most.
    pub fn sq_entries(&self) -> usize {
        self.ring.params().sq_entries() as usize
    }

    /// Sends each item's buffers (`sendmsg` with `MSG_DONTWAIT |
    /// MSG_NOSIGNAL`) to its socket, and puts each item's result in
    /// `results` (cleared first), in the items' order: `Ok(n)` bytes
    /// taken, `Err(WouldBlock)` when the socket could take nothing now, or
    /// the socket's error. Returns once the kernel is done with every
    /// buffer. Never waits for a socket: a full one fails with
    /// `WouldBlock` at once.
    ///
    /// An item with more than `IOV_MAX` (1,024) buffers fails with
    /// `EMSGSIZE`, as `sendmsg` would.
    ///
    /// # Errors
    ///
    /// [`UringError::Broken`] when the ring failed during this batch or an
    /// earlier one. `results` is complete all the same: items the kernel
    /// never received are `WouldBlock` (nothing written), so a caller that
    /// treats them as a full socket loses nothing. Send the next batches
    /// another way.
    pub fn send_batch(
        &mut self,
        items: &[(BorrowedFd<'_>, &[IoSlice<'_>])],
        results: &mut Vec<io::Result<usize>>,
    ) -> Result<(), UringError> {
        results.clear();
        results.extend(items.iter().map(|_| not_sent()));
        if let Some(kind) = self.broken {
            return Err(UringError::Broken(io::Error::from(kind)));
        }
        let cap = self.sq_entries().max(1);
        for (chunk_no, chunk) in items.chunks(cap).enumerate() {
            let base = chunk_no * cap;
            if let Err(e) = self.send_chunk(chunk, &mut results[base..base + chunk.len()]) {
                self.broken = Some(e.kind());
                return Err(UringError::Broken(e));
            }
        }
        Ok(())
    }

    /// One submission's worth (at most `sq_entries` items).
    fn send_chunk(
        &mut self,
        chunk: &[(BorrowedFd<'_>, &[IoSlice<'_>])],
        results: &mut [io::Result<usize>],
    ) -> io::Result<()> {
        const FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        // The message headers the SQEs point at. They live (and do not
        // move: the vector is never grown after the pointers are taken)
        // until this function returns, which is after every completion.
        let mut hdrs: Vec<libc::msghdr> = chunk
            .iter()
            .map(|(_, bufs)| {
                // SAFETY: `msghdr` is plain data; all-zero is a valid
                // empty header (no name, no control data, no flags).
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                // `IoSlice` is ABI-compatible with `iovec` on Unix (std
                // guarantees it). The kernel only reads through it.
                h.msg_iov = bufs.as_ptr() as *mut libc::iovec;
                h.msg_iovlen = bufs.len() as _;
                h
            })
            .collect();
        let mut queued = 0;
        {
            let mut sq = self.ring.submission();
            for (i, ((fd, _), hdr)) in chunk.iter().zip(hdrs.iter_mut()).enumerate() {
                let sqe = io_uring::opcode::SendMsg::new(
                    io_uring::types::Fd(fd.as_raw_fd()),
                    hdr as *const libc::msghdr,
                )
                .flags(FLAGS as u32)
                .build()
                .user_data(i as u64);
                // SAFETY: the entry points at `hdrs[i]`, which points at
                // the caller's `IoSlice`s, which point at the caller's
                // buffers: all borrowed for at least this call, and this
                // function does not return before the kernel has posted
                // the entry's completion (below), or has proven unable to
                // ever read it (the ring is then never entered again).
                if unsafe { sq.push(&sqe) }.is_err() {
                    break; // full: cannot happen, the chunk fits the queue
                }
                queued += 1;
            }
            sq.sync();
        }
        let mut done = 0;
        while done < queued {
            let submit = self.ring.submit_and_wait(queued - done);
            for cqe in self.ring.completion() {
                let i = cqe.user_data() as usize;
                if let Some(r) = results.get_mut(i) {
                    let res = cqe.result();
                    *r = if res >= 0 {
                        Ok(res as usize)
                    } else {
                        Err(io::Error::from_raw_os_error(-res))
                    };
                    done += 1;
                }
            }
            match submit {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    // Entries the kernel consumed but has not completed
                    // would still read the caller's buffers: returning
                    // would let it read freed memory. With MSG_DONTWAIT a
                    // send completes during the submitting call, so this
                    // is not expected to happen; if it does, stopping is
                    // the only sound way out.
                    let unconsumed = self.ring.submission().len();
                    let consumed = queued - unconsumed;
                    if consumed > done {
                        // No unwinding from here (`eprintln!` could panic).
                        use std::io::Write as _;
                        let _ = writeln!(
                            io::stderr(),
                            "pinion: io_uring_enter failed ({e}) with {} sends in flight; aborting",
                            consumed - done
                        );
                        std::process::abort();
                    }
                    return Err(e);
                }
            }
        }
        drop(hdrs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn sender() -> BatchSender {
        BatchSender::new(DEFAULT_ENTRIES).expect("io_uring on the test machine")
    }

    /// The fallback ring behaves the same: full, short, would-block,
    /// closed, more items than its queue.
    #[test]
    fn a_plain_ring_sends_the_same() {
        let mut s = BatchSender::build(4, false).unwrap();
        assert_eq!(s.kind(), RingKind::Plain);
        let (full, _keep) = UnixStream::pair().unwrap();
        full.set_nonblocking(true).unwrap();
        fill(&full);
        let (closed, gone) = UnixStream::pair().unwrap();
        drop(gone);
        let pairs: Vec<(UnixStream, UnixStream)> =
            (0..6).map(|_| UnixStream::pair().unwrap()).collect();
        let bufs = [IoSlice::new(b"ab"), IoSlice::new(b"cd")];
        let mut items: Vec<(BorrowedFd<'_>, &[IoSlice<'_>])> =
            vec![(full.as_fd(), &bufs), (closed.as_fd(), &bufs)];
        items.extend(pairs.iter().map(|(a, _)| (a.as_fd(), &bufs[..])));
        let mut results = Vec::new();
        s.send_batch(&items, &mut results).unwrap();
        assert_eq!(
            results[0].as_ref().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(
            results[1].as_ref().unwrap_err().raw_os_error(),
            Some(libc::EPIPE)
        );
        for ((_, mut b), r) in pairs.into_iter().zip(&results[2..]) {
            assert_eq!(*r.as_ref().unwrap(), 4);
            let mut got = [0u8; 4];
            b.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"abcd");
        }
    }

    fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn sets_up_single_issuer_defer_taskrun() {
        let s = sender();
        // Linux 6.1+ (the machine this is tested on runs 6.18).
        assert_eq!(s.kind(), RingKind::DeferTaskrun);
        assert!(s.sq_entries() >= DEFAULT_ENTRIES as usize);
    }

    #[test]
    fn full_writes_gather_every_buffer() {
        let mut s = sender();
        let (a, mut b) = tcp_pair();
        let (c, mut d) = UnixStream::pair().unwrap();
        c.set_nonblocking(true).unwrap();
        let one = [IoSlice::new(b"hello "), IoSlice::new(b"world")];
        let two = [IoSlice::new(b"x"), IoSlice::new(b""), IoSlice::new(b"yz")];
        let mut results = Vec::new();
        s.send_batch(&[(a.as_fd(), &one), (c.as_fd(), &two)], &mut results)
            .unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(*results[0].as_ref().unwrap(), 11);
        assert_eq!(*results[1].as_ref().unwrap(), 3);
        let mut got = [0u8; 11];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello world");
        let mut got = [0u8; 3];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"xyz");
    }

    /// Fills a non-blocking socket's send buffer (and the peer's receive
    /// buffer) until `write` says WouldBlock.
    fn fill(mut w: &UnixStream) -> usize {
        let chunk = vec![7u8; 64 << 10];
        let mut total = 0;
        loop {
            match w.write(&chunk) {
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_full_socket_fails_at_once_with_would_block() {
        let mut s = sender();
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        fill(&a);
        let (c, mut d) = tcp_pair();
        let bufs = [IoSlice::new(b"0123456789")];
        let mut results = Vec::new();
        let t = std::time::Instant::now();
        s.send_batch(&[(a.as_fd(), &bufs), (c.as_fd(), &bufs)], &mut results)
            .unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(
            results[0].as_ref().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(*results[1].as_ref().unwrap(), 10);
        let mut got = [0u8; 10];
        d.read_exact(&mut got).unwrap();
        // The same holds on a blocking socket: MSG_DONTWAIT, not the
        // file's flags, keeps the request from waiting.
        let (e, _f) = UnixStream::pair().unwrap();
        e.set_nonblocking(true).unwrap();
        fill(&e);
        e.set_nonblocking(false).unwrap();
        s.send_batch(&[(e.as_fd(), &bufs)], &mut results).unwrap();
        assert_eq!(
            results[0].as_ref().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn a_nearly_full_socket_takes_part() {
        let mut s = sender();
        let (a, mut b) = tcp_pair();
        socket2::SockRef::from(&a)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&b)
            .set_recv_buffer_size(4096)
            .unwrap();
        let big = vec![1u8; 4 << 20];
        let bufs = [IoSlice::new(&big)];
        let mut results = Vec::new();
        s.send_batch(&[(a.as_fd(), &bufs)], &mut results).unwrap();
        let n = *results[0].as_ref().unwrap();
        assert!(n > 0 && n < big.len(), "took {n} of {}", big.len());
        // What it took arrives, intact.
        let mut got = vec![0u8; n];
        b.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&x| x == 1));
    }

    #[test]
    fn a_closed_peer_is_an_error_not_a_signal() {
        let mut s = sender();
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let (c, d) = tcp_pair();
        // A reset: the peer closes with unread data, so its kernel answers
        // RST; then our sends fail with ECONNRESET or EPIPE.
        d.set_nonblocking(true).unwrap();
        (&c).write_all(b"unread").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(d);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let bufs = [IoSlice::new(b"after the end")];
        let mut results = Vec::new();
        s.send_batch(&[(a.as_fd(), &bufs), (c.as_fd(), &bufs)], &mut results)
            .unwrap();
        assert_eq!(
            results[0].as_ref().unwrap_err().raw_os_error(),
            Some(libc::EPIPE)
        );
        // The first send after a RST may be taken (the RST not yet seen)
        // on some kernels: send until it fails.
        let mut err = None;
        for _ in 0..10 {
            s.send_batch(&[(c.as_fd(), &bufs)], &mut results).unwrap();
            if let Err(e) = &results[0] {
                err = e.raw_os_error();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            matches!(err, Some(libc::EPIPE | libc::ECONNRESET)),
            "{err:?}"
        );
    }

    #[test]
    fn more_items_than_the_queue_holds() {
        let mut s = BatchSender::new(8).unwrap();
        assert_eq!(s.sq_entries(), 8);
        let pairs: Vec<(UnixStream, UnixStream)> = (0..37)
            .map(|_| {
                let (a, b) = UnixStream::pair().unwrap();
                a.set_nonblocking(true).unwrap();
                (a, b)
            })
            .collect();
        let bodies: Vec<Vec<u8>> = (0..37).map(|i| format!("item {i}").into_bytes()).collect();
        let iovs: Vec<[IoSlice<'_>; 1]> = bodies.iter().map(|b| [IoSlice::new(b)]).collect();
        let items: Vec<(BorrowedFd<'_>, &[IoSlice<'_>])> = pairs
            .iter()
            .zip(&iovs)
            .map(|((a, _), iov)| (a.as_fd(), &iov[..]))
            .collect();
        let mut results = Vec::new();
        s.send_batch(&items, &mut results).unwrap();
        assert_eq!(results.len(), 37);
        for (i, ((_, b), r)) in pairs.iter().zip(&results).enumerate() {
            assert_eq!(*r.as_ref().unwrap(), bodies[i].len());
            let mut got = vec![0u8; bodies[i].len()];
            (&*b).read_exact(&mut got).unwrap();
            assert_eq!(got, bodies[i]);
        }
        // The ring is reusable, and an empty batch is nothing.
        s.send_batch(&[], &mut results).unwrap();
        assert!(results.is_empty());
        s.send_batch(&items[..3], &mut results).unwrap();
        assert!(results.iter().all(|r| r.is_ok()));
    }

    #[test]
    fn a_bad_descriptor_fails_only_its_item() {
        let mut s = sender();
        let (a, mut b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let bufs = [IoSlice::new(b"ok")];
        let mut results = Vec::new();
        s.send_batch(&[(file.as_fd(), &bufs), (a.as_fd(), &bufs)], &mut results)
            .unwrap();
        assert_eq!(
            results[0].as_ref().unwrap_err().raw_os_error(),
            Some(libc::ENOTSOCK)
        );
        assert_eq!(*results[1].as_ref().unwrap(), 2);
        let mut got = [0u8; 2];
        b.read_exact(&mut got).unwrap();
    }

    #[test]
    fn the_ring_refuses_another_thread_without_harm() {
        let mut s = sender();
        if s.kind() != RingKind::DeferTaskrun {
            return;
        }
        let (a, mut b) = UnixStream::pair().unwrap();
        let bufs = [IoSlice::new(b"elsewhere")];
        let mut results = Vec::new();
        let r = std::thread::scope(|sc| {
            sc.spawn(|| s.send_batch(&[(a.as_fd(), &bufs)], &mut results))
                .join()
                .unwrap()
        });
        // SINGLE_ISSUER: the kernel refuses a submission from another
        // thread (EEXIST) before reading any entry; the item reports
        // WouldBlock (nothing written) and the sender is done.
        assert!(matches!(r, Err(UringError::Broken(_))), "{r:?}");
        assert_eq!(
            results[0].as_ref().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(matches!(
            s.send_batch(&[(a.as_fd(), &bufs)], &mut results),
            Err(UringError::Broken(_))
        ));
        b.set_nonblocking(true).unwrap();
        let mut got = [0u8; 16];
        assert_eq!(
            b.read(&mut got).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
