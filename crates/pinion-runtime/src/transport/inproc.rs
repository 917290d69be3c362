//! `inproc://`: pipes inside one process.
//!
//! No bytes are framed: messages move through a pair of bounded channels as
//! they are (header and body stay shared `Bytes`, nothing is copied). The
//! protocol ids are exchanged when the dialer connects, so the same checks as
//! on a stream apply. A registry maps names to listeners; it is locked only
//! to bind, unbind and connect, never per message.

use std::collections::HashMap;
use std::io;
use std::sync::{Mutex, OnceLock};

use pinion_core::Message;
use tokio::sync::mpsc;

use crate::error::Error;

/// One end of an in-process pipe.
#[derive(Debug)]
pub struct InprocEnd {
    /// Protocol id announced by the other end.
    pub peer_proto: u16,
    /// Messages to the other end.
    pub tx: async_channel::Sender<Message>,
    /// Messages from the other end.
    pub rx: async_channel::Receiver<Message>,
}

type Registry = Mutex<HashMap<String, (u16, mpsc::UnboundedSender<InprocEnd>)>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// A bound in-process name.
#[derive(Debug)]
pub struct InprocListener {
    name: String,
    incoming: mpsc::UnboundedReceiver<InprocEnd>,
}

impl InprocListener {
    /// Waits for the next dialer.
    pub async fn accept(&mut self) -> io::Result<InprocEnd> {
        self.incoming
            .recv()
            .await
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for InprocListener {
    fn drop(&mut self) {
        let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
        r.remove(&self.name);
    }
}

/// Registers `name`.
pub fn bind(name: &str, proto: u16) -> Result<InprocListener, Error> {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    if r.get(name).is_some_and(|(_, tx)| !tx.is_closed()) {
        return Err(Error::io(
            "bind",
            format!("inproc://{name}"),
            io::Error::from(io::ErrorKind::AddrInUse),
        ));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    r.insert(name.to_string(), (proto, tx));
    Ok(InprocListener {
        name: name.to_string(),
        incoming: rx,
    })
}

/// Connects to `name`; `depth` bounds each direction's queue.
pub fn connect(name: &str, proto: u16, depth: usize) -> Result<InprocEnd, Error> {
    let refused = || {
        Error::io(
            "connect",
            format!("inproc://{name}"),
            io::Error::from(io::ErrorKind::ConnectionRefused),
        )
    };
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    let (listener_proto, accept) = r.get(name).ok_or_else(refused)?;
    let (a_tx, a_rx) = async_channel::bounded(depth.max(1));
    let (b_tx, b_rx) = async_channel::bounded(depth.max(1));
    accept
        .send(InprocEnd {
            peer_proto: proto,
            tx: b_tx,
            rx: a_rx,
        })
        .map_err(|_| refused())?;
    Ok(InprocEnd {
        peer_proto: *listener_proto,
        tx: a_tx,
        rx: b_rx,
    })
}
