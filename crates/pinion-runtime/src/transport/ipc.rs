//! `ipc://`: UNIX-domain stream sockets.
//!
//! Binding follows the IPC mapping RFC: if the path exists, pinion tries to
//! connect to it; a refused connection means the file is stale (its process is
//! gone), so it is removed and the bind proceeds. A live listener there makes
//! the bind fail with `AddrInUse`. A path that exists but is not a socket is
//! never removed.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use crate::error::Error;

/// Connects to a socket file.
pub async fn connect(path: &Path) -> Result<UnixStream, Error> {
    UnixStream::connect(path)
        .await
        .map_err(|e| Error::io("connect", format!("ipc://{}", path.display()), e))
}

/// A listening UNIX socket that removes its file when dropped.
#[derive(Debug)]
pub struct IpcListener {
    listener: UnixListener,
    path: PathBuf,
}

impl IpcListener {
    /// Waits for the next connection.
    pub async fn accept(&mut self) -> io::Result<std::os::unix::net::UnixStream> {
        let (s, _) = self.listener.accept().await?;
        s.into_std()
    }
}

impl Drop for IpcListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a socket file, clearing a stale one.
pub async fn bind(path: &Path) -> Result<IpcListener, Error> {
    let url = || format!("ipc://{}", path.display());
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::io(
                "bind",
                url(),
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(Error::io(
                    "bind",
                    url(),
                    io::Error::from(io::ErrorKind::AddrInUse),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing stale IPC socket file");
                std::fs::remove_file(path).map_err(|e| Error::io("bind", url(), e))?;
            }
            Err(e) => return Err(Error::io("bind", url(), e)),
        }
    }
    let listener = UnixListener::bind(path).map_err(|e| Error::io("bind", url(), e))?;
    Ok(IpcListener {
        listener,
        path: path.to_path_buf(),
    })
}
