//! Replacing a running pgtenant by a new process without dropping a client
//! (`pgtenant --takeover`).
//!
//! The running process listens on a Unix socket (`proxy.takeover_socket`, a
//! `SOCK_SEQPACKET` socket: one record per message, file descriptors passed with
//! `SCM_RIGHTS`). A new process started with `--takeover` connects and says hello; the old
//! one removes the socket's path and answers with its listening sockets (clients and
//! metrics), so no connection attempt is ever refused: both processes hold the same
//! listening socket, and the old one stops accepting. The new one binds the path for the
//! next takeover and starts serving. Then the old process sends its clients, one record
//! each (the socket and its session, see `session::handoff`): parked ones at once, idle ones
//! as soon as they notice, linked ones when their transaction ends. Clients that cannot
//! move (TLS, LISTEN, session objects, session mode, the console) stay until they leave or
//! `shutdown_timeout` passes. A last record says that no more clients come; the old
//! process exits.
//!
//! Server connections are not moved: the new process opens its own (a moved client's next
//! transaction gets its state re-applied, as after any checkout).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::session::handoff::{Moving, MAX_STATE};

/// The new process's first record.
const HELLO: &[u8] = b"pgtenant takeover 1";
/// The old process's listening sockets (their descriptors ride with the record).
const LISTENERS: u8 = b'L';
/// One client: its socket rides with the record, its session is the rest.
const CLIENT: u8 = b'C';
/// No more clients.
const END: u8 = b'E';

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: a new descriptor nothing else owns.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn address(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = OsStr::as_bytes(path.as_os_str());
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("takeover_socket {}: path too long", path.display()),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = socket()?;
    let (addr, len) = address(path)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    Ok(fd)
}

/// The old process's side: listens at `path` for a successor. A stale socket file (no
/// process behind it) is replaced; a live one is an error (another process answers there).
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    match connect(path) {
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "takeover_socket {}: another process listens there",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
    let fd = socket()?;
    let (addr, len) = address(path)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    // Only the owner (and root) may take this process over.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 4) })?;
    Ok(fd)
}

/// Waits (blocking: run it on a thread of its own) for a successor's hello on `listener`;
/// removes the socket's path once one has come. Hellos of another version are refused.
pub fn wait_for_successor(listener: &OwnedFd, path: &Path) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: accept4 on a listening socket; the new descriptor is ours.
        let fd = cvt(unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        })?;
        // SAFETY: as above.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut buf = [0u8; 64];
        match recv(&conn, &mut buf) {
            Ok((n, _)) if &buf[..n] == HELLO => {
                let _ = std::fs::remove_file(path);
                return Ok(conn);
            }
            _ => {
                tracing::warn!("takeover: a connection on the takeover socket said no valid hello")
            }
        }
    }
}

/// Where a running process waits for its successor: the socket, and a thread blocked in
/// [`wait_for_successor`] on it.
pub struct Point {
    listener: std::sync::Arc<OwnedFd>,
    path: PathBuf,
    successor: tokio::sync::oneshot::Receiver<OwnedFd>,
}

impl Point {
    /// Listens at `path` (see [`listen`]).
    pub fn open(path: &Path) -> io::Result<Point> {
        let listener = std::sync::Arc::new(listen(path)?);
        let (tx, successor) = tokio::sync::oneshot::channel();
        let (fd, at) = (listener.clone(), path.to_path_buf());
        std::thread::Builder::new()
            .name("pgtenant-takeover".into())
            .spawn(move || {
                if let Ok(conn) = wait_for_successor(&fd, &at) {
                    let _ = tx.send(conn);
                }
            })?;
        Ok(Point {
            listener,
            path: path.to_path_buf(),
            successor,
        })
    }

    /// Resolves when a successor has said hello (never, if the socket fails).
    pub async fn successor(&mut self) -> OwnedFd {
        match (&mut self.successor).await {
            Ok(conn) => conn,
            Err(_) => std::future::pending().await,
        }
    }
}

/// No successor any more (also when the point is dropped with its runtime, as in-process
/// tests do): the thread ends and the path is removed (unless a successor came: then the
/// path is the successor's).
impl Drop for Point {
    fn drop(&mut self) {
        // SAFETY: shutting down a socket we own; the blocked accept returns an error.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if self.successor.try_recv().is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Sends the listening sockets to the successor.
pub fn give_listeners(conn: &OwnedFd, listeners: &[RawFd]) -> io::Result<()> {
    send(conn, &[LISTENERS, listeners.len() as u8], listeners)
}

/// A thread that sends every client it is given to the successor; when every sender is
/// dropped it says so and ends. A client that cannot be sent is closed (the successor is
/// gone): it is logged.
pub fn client_sender(
    conn: OwnedFd,
) -> (std::sync::mpsc::Sender<Moving>, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel::<Moving>();
    let thread = std::thread::spawn(move || {
        let mut sent = 0usize;
        let mut lost = 0usize;
        let mut record = Vec::with_capacity(4096);
        for moving in rx {
            record.clear();
            record.push(CLIENT);
            record.extend_from_slice(&moving.state);
            match send(&conn, &record, &[moving.socket.as_raw_fd()]) {
                Ok(()) => sent += 1,
                Err(e) => {
                    lost += 1;
                    tracing::error!(error = %e, "takeover: could not send a client to the new process; it is closed");
                }
            }
        }
        let _ = send(&conn, &[END], &[]);
        tracing::info!(sent, lost, "takeover: clients handed over");
    });
    (tx, thread)
}

/// What the new process gets from the old one.
pub struct TakenOver {
    pub listener: std::net::TcpListener,
    pub metrics: Option<std::net::TcpListener>,
    /// The clients, as they come.
    pub clients: tokio::sync::mpsc::UnboundedReceiver<Moving>,
}

/// The new process's side: asks the process listening at `path` for its listening sockets
/// and then its clients (a thread receives them).
pub fn take_over(path: &Path) -> io::Result<TakenOver> {
    let conn = connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("no pgtenant to take over at {}: {e}", path.display()),
        )
    })?;
    send(&conn, HELLO, &[])?;
    let mut buf = [0u8; 16];
    let (n, mut fds) = recv(&conn, &mut buf)?;
    if n != 2 || buf[0] != LISTENERS || fds.len() != usize::from(buf[1]) || fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "takeover: the running process did not send its listening sockets",
        ));
    }
    let listener = std::net::TcpListener::from(fds.remove(0));
    let metrics = fds.pop().map(std::net::TcpListener::from);
    let (tx, clients) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || receive_clients(conn, tx));
    Ok(TakenOver {
        listener,
        metrics,
        clients,
    })
}

fn receive_clients(conn: OwnedFd, tx: tokio::sync::mpsc::UnboundedSender<Moving>) {
    let mut buf = vec![0u8; MAX_STATE + 1];
    let mut received = 0usize;
    loop {
        let (n, mut fds) = match recv(&conn, &mut buf) {
            Ok(got) => got,
            Err(e) => {
                tracing::error!(error = %e, "takeover: the old process's socket failed");
                return;
            }
        };
        match (n, buf.first()) {
            (0, _) | (1, Some(&END)) => break,
            (_, Some(&CLIENT)) if fds.len() == 1 => {
                let moving = Moving {
                    state: buf[1..n].to_vec(),
                    socket: fds.remove(0),
                };
                received += 1;
                if tx.send(moving).is_err() {
                    return;
                }
            }
            _ => tracing::error!("takeover: an unreadable record from the old process"),
        }
    }
    tracing::info!(
        received,
        "takeover: the old process has handed over every client it could"
    );
}

/// Up to 4 descriptors per record.
const MAX_FDS: usize = 4;

fn cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE is a pure computation.
    unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) as usize }
}

fn send(conn: &OwnedFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = vec![0u8; cmsg_space()];
    // SAFETY: all-zero is a valid msghdr; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = std::mem::size_of_val(fds);
        // SAFETY: `control` has room for a header and MAX_FDS descriptors.
        unsafe {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(bytes as u32) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        }
    }
    loop {
        // SAFETY: `msg` describes valid buffers.
        let r = unsafe { libc::sendmsg(conn.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One record into `buf`, with the descriptors that came with it.
fn recv(conn: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = vec![0u8; cmsg_space()];
    // SAFETY: all-zero is a valid msghdr; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    let n = loop {
        // SAFETY: `msg` describes valid buffers.
        let r = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "takeover: a record too long",
        ));
    }
    Ok((n, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_point_lets_go_of_its_path() {
        let path = std::env::temp_dir().join(format!("pgtenant-drop-{}", std::process::id()));
        let point = Point::open(&path).unwrap();
        assert!(listen(&path).is_err(), "taken while the point lives");
        drop(point);
        assert!(!path.exists());
        let again = listen(&path).expect("free once the point is dropped");
        drop(again);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_bad_hello_is_ignored() {
        let path = std::env::temp_dir().join(format!("pgtenant-hello-{}", std::process::id()));
        let listener = listen(&path).unwrap();
        let stranger = connect(&path).unwrap();
        send(&stranger, b"GET / HTTP/1.1", &[]).unwrap();
        let successor = connect(&path).unwrap();
        send(&successor, HELLO, &[]).unwrap();
        let conn = wait_for_successor(&listener, &path).unwrap();
        give_listeners(&conn, &[listener.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 8];
        let (n, fds) = recv(&successor, &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&[LISTENERS, 1][..], 1));
        assert!(!path.exists());
    }

    #[test]
    fn records_carry_descriptors() {
        let dir = std::env::temp_dir().join(format!("pgtenant-takeover-{}", std::process::id()));
        let listener = listen(&dir).unwrap();
        assert!(listen(&dir).is_err(), "a live socket is not replaced");
        let path = dir.clone();
        let old = std::thread::spawn(move || {
            let conn = wait_for_successor(&listener, &path).unwrap();
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            give_listeners(&conn, &[tcp.as_raw_fd()]).unwrap();
            let (tx, _) = client_sender(conn);
            let client = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
            tx.send(Moving {
                state: b"state".to_vec(),
                socket: client.into(),
            })
            .unwrap();
            tcp.local_addr().unwrap()
        });
        let mut taken = take_over(&dir).unwrap();
        let addr = old.join().unwrap();
        assert_eq!(taken.listener.local_addr().unwrap(), addr);
        assert!(taken.metrics.is_none());
        assert!(!dir.exists(), "the old process removed its path");
        let moving = taken.clients.blocking_recv().unwrap();
        assert_eq!(moving.state, b"state");
        let socket = std::net::TcpStream::from(moving.socket);
        assert_eq!(socket.peer_addr().unwrap(), addr);
        assert!(
            taken.clients.blocking_recv().is_none(),
            "END closes the channel"
        );
    }
}
