//! Devices: forwarders between raw sockets.
//!
//! A device joins two raw sockets of complementary protocols (REP↔REQ,
//! RESPONDENT↔SURVEYOR, SUB↔PUB, PULL↔PUSH, PAIR↔PAIR, BUS↔BUS) and moves
//! every message from one to the other with its header, in both directions,
//! so a request crosses a proxy and its reply finds the way back. With one
//! socket (PAIR or BUS) it is a *reflector*: what arrives is sent back out
//! (raw BUS skips the pipe a message came from).
//!
//! Max TTL is enforced where NNG enforces it, by the receiving sockets: a raw
//! REP or RESPONDENT drops requests whose backtrace is longer than
//! [`Options::max_ttl`](crate::Options::max_ttl) (1..=15), and PAIR v1 drops
//! messages whose hop count is over it. NNG's documentation says 255, its
//! code accepts at most 15; pinion follows the code, so a pinion device
//! never forwards what an NNG device would refuse.
//!
//! ```
//! # fn main() -> Result<(), pinion::Error> {
//! use pinion::{blocking::Socket, Options, Protocol};
//! let raw = Options { raw: true, ..Options::default() };
//! let front = pinion::Socket::with_options(Protocol::Rep0, raw.clone())?;   // clients dial this
//! let back = pinion::Socket::with_options(Protocol::Req0, raw)?;            // servers dial this
//! let f = futures_executor::block_on(front.listen("inproc://doc-dev-front"))?;
//! let b = futures_executor::block_on(back.listen("inproc://doc-dev-back"))?;
//! std::thread::spawn(move || futures_executor::block_on(pinion::device(&front, Some(&back))));
//!
//! let server = Socket::new(Protocol::Rep0)?;
//! server.dial(&b.url().to_string())?;
//! let client = Socket::new(Protocol::Req0)?;
//! client.dial(&f.url().to_string())?;
//! client.send("ping")?;
//! assert_eq!(&server.recv()?[..], b"ping");
//! server.send("pong")?;
//! assert_eq!(&client.recv()?[..], b"pong");
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use pinion_core::CallerError;

use crate::{Error, Protocol, Socket};

/// Forwards between `a` and `b` (or reflects on `a` when `b` is `None`)
/// until one of them is closed or fails; returns that error
/// ([`Error::Closed`] when a socket was closed). Both sockets must be raw and
/// complementary, else [`CallerError::BadDevice`].
pub async fn device(a: &Socket, b: Option<&Socket>) -> Error {
    if let Err(e) = check(a, b) {
        return e;
    }
    let b = b.unwrap_or(a);
    let ab = pump(a, b);
    let ba = pump(b, a);
    if std::ptr::eq(a, b) {
        return ab.await;
    }
    let mut ab = pin!(ab);
    let mut ba = pin!(ba);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(e) = ab.as_mut().poll(cx) {
            return Poll::Ready(e);
        }
        ba.as_mut().poll(cx)
    })
    .await
}

fn check(a: &Socket, b: Option<&Socket>) -> crate::Result<()> {
    let bad = || Err(Error::Caller(CallerError::BadDevice));
    if !a.is_raw() || b.is_some_and(|b| !b.is_raw()) {
        return bad();
    }
    match b {
        None => match a.protocol() {
            Protocol::Pair0 | Protocol::Pair1 | Protocol::Bus0 => Ok(()),
            _ => bad(),
        },
        Some(b) if a.protocol().peer_id() == b.protocol().id() => Ok(()),
        Some(_) => bad(),
    }
}

async fn pump(from: &Socket, to: &Socket) -> Error {
    if !from.protocol().can_recv() || !to.protocol().can_send() {
        // One-way pairs (PULL→PUSH, SUB→PUB): this direction has nothing to
        // carry; wait until the other direction ends.
        return std::future::pending().await;
    }
    loop {
        let m = match from.recv_msg().await {
            Ok(m) => m,
            Err(e) => return e,
        };
        if let Err(e) = to.send_msg(m).await {
            return e;
        }
    }
}
