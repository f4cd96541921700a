//! gRPC over unix sockets: binding a listener for a tonic server, and a tonic channel to a socket.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// Binds a unix socket at `path`, replacing a stale socket file left by an earlier run. Refuses to
/// replace anything that is not a socket.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    UnixListener::bind(path)
}

/// A channel to the gRPC server on the unix socket `path`. Connects now, so a missing or dead socket
/// is an error here.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    // The URI is required by the API and ignored: every connection goes to the socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// What identifies one incarnation of a socket file: a recreated socket (a restarted kubelet) differs
/// in inode or change time even when the file system reuses the inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketId {
    dev: u64,
    ino: u64,
    ctime_s: i64,
    ctime_ns: i64,
}

/// The identity of the socket at `path`, or `None` when there is no socket there.
pub fn socket_id(path: &Path) -> Option<SocketId> {
    let m = std::fs::symlink_metadata(path).ok()?;
    m.file_type().is_socket().then(|| SocketId {
        dev: m.dev(),
        ino: m.ino(),
        ctime_s: m.ctime(),
        ctime_ns: m.ctime_nsec(),
    })
}
