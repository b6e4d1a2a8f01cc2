//! `wss://` and HTTPS on the listener itself (PRODUCT.md 14). rustls terminates TLS, and the
//! connection's plaintext goes on through a socket pair, so everything after it (the request,
//! sessions, the hand-off to the document's shard, the write-through sends) is the plain path,
//! unchanged; the kernel's TLS offload would make the pair unnecessary, but it is not in every
//! kernel (not in this project's machines', so it is not used).
//!
//! Per connection: the handshake runs on the admission queue within the request deadline
//! (`http.request_timeout_ms`: a client that stops halfway is dropped then), its cryptography
//! on the shard's blocking thread at the lowest priority (`offload`); then a bridge of
//! two tasks on the sessions' queue moves bytes, client → decrypt → pair and pair → encrypt →
//! client, through the shard's scratch buffer (an idle connection holds no buffer; the
//! certificate is `server::certificate`'s). Backpressure is the sockets': a client
//! that does not read stops the encrypting task, whose pair fills, so the session's outbox
//! grows and cuts it off as it would any slow client.

use super::respond::within;
use super::shard::{spawn_detached, Shard, SCRATCH_BYTES};
use super::socket::{self, Stream};
use super::stats;
use crate::refusal::Refusal;
use glommio::net::TcpStream;
use rustls::ServerConnection;
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Bytes a handshake reads at once.
const HANDSHAKE_READ_BYTES: usize = 4096;

/// Serves one accepted TLS connection: its handshake, then its plaintext to the router as if
/// it had come in plain (with the client's address, which the pair does not carry).
pub async fn serve(shard: Rc<Shard>, tcp: TcpStream, peer: IpAddr) {
    let Some(tls) = shard.shared.tls.as_ref() else {
        unreachable!("TLS connections are accepted only with [tls]");
    };
    // A socket in its handshake counts like one in admission: past the descriptors' share
    // it is dropped at once (nothing can be answered before the handshake).
    let counted = super::router::InAdmission::new(shard.my_stats());
    if shard.out_of_sockets() {
        return;
    }
    let conn = match ServerConnection::new(tls.current()) {
        Ok(conn) => conn,
        Err(e) => {
            crate::log::warn("tls_failed", &[("error", &e)]);
            return;
        }
    };
    let tcp = Rc::new(RefCell::new(tcp));
    let deadline = Instant::now() + Duration::from_millis(shard.config().http.request_timeout_ms);
    // `within`, not glommio's `timeout`: an `async fn`, it would hold the handshake (a read
    // buffer of `HANDSHAKE_READ_BYTES` among its state) twice in every admission's task.
    let shaken = within(
        deadline,
        super::contain::future(
            shard.my_stats(),
            "tls_handshake",
            handshake(&shard, &tcp, Box::new(conn)),
        ),
    )
    .await;
    drop(counted);
    let stats = shard.my_stats();
    // Failed, panicked (counted already) or too late: the same to the client.
    let Some(Some(Ok((conn, plain)))) = shaken else {
        stats::add(&stats.tls_handshakes_failed_total, 1);
        socket::shutdown(&tcp);
        return;
    };
    let conn = Rc::new(RefCell::new(*conn));
    stats::add(&stats.tls_handshakes_total, 1);
    // A TLS connection takes two more descriptors: past the node's share, it is told so
    // over TLS (there is no pair to pass the answer through), as a plain one would be.
    let paired = if shard.out_of_sockets() {
        Err("the node's share of descriptors is taken".to_owned())
    } else {
        pair().map_err(|e| e.to_string())
    };
    let (ours, theirs) = match paired {
        Ok(pair) => pair,
        Err(why) => {
            crate::log::warn("tls_refused", &[("error", &why)]);
            refuse(&shard, &tcp, &conn, &Refusal::OutOfSockets).await;
            return;
        }
    };
    // What the session sends is bounded by what the bridge reads at once (it flushes each).
    conn.borrow_mut().set_buffer_limit(None);
    let ours = Rc::new(RefCell::new(ours));
    let queue = shard.session_queue;
    let decrypting = decrypt(
        shard.clone(),
        tcp.clone(),
        ours.clone(),
        conn.clone(),
        plain,
    );
    let encrypting = encrypt(shard.clone(), tcp.clone(), ours.clone(), conn);
    let halves = [
        (
            "tls_decrypt",
            Box::pin(decrypting) as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
        ),
        ("tls_encrypt", Box::pin(encrypting)),
    ];
    for (what, half) in halves {
        let (shard, tcp, ours) = (shard.clone(), tcp.clone(), ours.clone());
        let contained = async move {
            // A panic in one half ends the connection, not the shard.
            if super::contain::future(shard.my_stats(), what, half)
                .await
                .is_none()
            {
                socket::shutdown(&tcp);
                socket::shutdown(&ours);
            }
        };
        spawn_detached(queue, contained);
    }
    super::router::serve(shard, theirs, peer).await;
}

/// Answers `refusal` over TLS and closes the connection.
async fn refuse(shard: &Shard, tcp: &Stream, conn: &RefCell<ServerConnection>, refusal: &Refusal) {
    let answer = refusal.http_response();
    super::respond::count_reply(shard, &answer);
    {
        let mut conn = conn.borrow_mut();
        let _ = conn.writer().write_all(&answer);
        conn.send_close_notify();
    }
    let _ = flush(tcp, conn).await;
    socket::shutdown(tcp);
}

/// Both ends of a socket pair, as the streams the plain path takes.
fn pair() -> io::Result<(TcpStream, TcpStream)> {
    let mut fds = [0; 2];
    let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    if unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    Ok(unsafe {
        (
            TcpStream::from_raw_fd(fds[0]),
            TcpStream::from_raw_fd(fds[1]),
        )
    })
}

/// Writes what rustls has to send.
async fn flush(tcp: &Stream, conn: &RefCell<ServerConnection>) -> io::Result<()> {
    let out = to_send(&mut conn.borrow_mut())?;
    socket::write_all(tcp, &out).await
}

/// [`flush`] for a connection the caller holds alone (during its handshake).
async fn send_pending(tcp: &Stream, conn: &mut ServerConnection) -> io::Result<()> {
    socket::write_all(tcp, &to_send(conn)?).await
}

/// What rustls has to send, taken out of it.
fn to_send(conn: &mut ServerConnection) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    take_records(conn, &mut out)?;
    Ok(out)
}

/// Appends what rustls has to send to `out`.
fn take_records(conn: &mut ServerConnection, out: &mut Vec<u8>) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(out)?;
    }
    Ok(())
}

/// Feeds `bytes` from the client to rustls, taking the plaintext out as it comes (rustls holds
/// only a little); that plaintext, and whether the client closed (close_notify). An error (a
/// bad record, a failed handshake) is answered with the alert rustls queued, by the caller's
/// next flush.
fn take(conn: &mut ServerConnection, mut bytes: &[u8]) -> io::Result<(Vec<u8>, bool)> {
    let mut plain = Vec::new();
    loop {
        match conn.reader().read_to_end(&mut plain) {
            Ok(_) => return Ok((plain, true)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if bytes.is_empty() {
            return Ok((plain, false));
        }
        conn.read_tls(&mut bytes)?;
        conn.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}

/// The handshake; the connection, and the plaintext that came with its last flight (a
/// request sent at once). Its cryptography (key exchange, the certificate's signature, about
/// 0.75 ms with P-256) runs on the shard's blocking thread at the lowest priority, like a
/// token's signature: a storm of handshakes waits there, not the live documents; past
/// `Work::TlsHandshake`'s bound a handshake fails at once (the client tries again).
async fn handshake(
    shard: &Shard,
    tcp: &Stream,
    mut conn: Box<ServerConnection>,
) -> io::Result<(Box<ServerConnection>, Vec<u8>)> {
    let mut buf = [0u8; HANDSHAKE_READ_BYTES];
    let mut plain = Vec::new();
    // Bytes read, not yet a whole record: the blocking thread is asked only about whole
    // records, so a client sending a byte at a time costs the executor an append each.
    let mut partial: Vec<u8> = Vec::new();
    while conn.is_handshaking() {
        send_pending(tcp, &mut conn).await?;
        if !conn.is_handshaking() {
            break;
        }
        let n = socket::read(tcp, &mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        partial.extend_from_slice(&buf[..n]);
        let whole = whole_records(&partial)?;
        if whole == 0 {
            continue;
        }
        // Usually all of it: taken whole, not copied.
        let bytes: Vec<u8> = if whole == partial.len() {
            std::mem::take(&mut partial)
        } else {
            partial.drain(..whole).collect()
        };
        let job = move || {
            let taken = take(&mut conn, &bytes);
            (conn, taken)
        };
        let (back, taken) = shard
            .offload
            .run(super::offload::Work::TlsHandshake, job)
            .await
            .map_err(|_| io::Error::other("too many TLS handshakes wait"))?;
        conn = back;
        match taken {
            Ok((more, _)) => plain.extend_from_slice(&more),
            Err(e) => {
                // Its alert, if rustls queued one.
                let _ = send_pending(tcp, &mut conn).await;
                return Err(e);
            }
        }
    }
    send_pending(tcp, &mut conn).await?;
    Ok((conn, plain))
}

/// The largest TLS record: 16 KiB of plaintext plus the most a cipher may add.
const RECORD_BYTES_MAX: usize = 5 + (16 << 10) + 2048;

/// How many bytes at the start of `bytes` are whole TLS records (each a 5-byte header with
/// its length, then that much); an error for a record longer than TLS allows.
fn whole_records(bytes: &[u8]) -> io::Result<usize> {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 5) {
        let length = 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
        if length > RECORD_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a TLS record too long",
            ));
        }
        if bytes.len() < at + length {
            break;
        }
        at += length;
    }
    Ok(at)
}

/// Client → pair: decrypts what the client sends (`plain` first: what came with the
/// handshake). Reads into the shard's scratch buffer, borrowed only while a read is polled and
/// its bytes are taken: an idle connection holds no buffer here. When the client closes, the
/// session is told (the pair's write side shut) and the encrypting half finishes sending
/// what the session still writes; what does not decrypt ends the connection.
async fn decrypt(
    shard: Rc<Shard>,
    tcp: Rc<Stream>,
    pair: Rc<Stream>,
    conn: Rc<RefCell<ServerConnection>>,
    mut plain: Vec<u8>,
) {
    let ended = async {
        loop {
            if !plain.is_empty() {
                socket::write_all(&pair, &plain).await?;
            }
            let n = socket::read_with(&tcp, &shard.scratch, SCRATCH_BYTES).await?;
            if n == 0 {
                return Ok(());
            }
            let taken = take(&mut conn.borrow_mut(), &shard.scratch.borrow()[..n]);
            // An error's alert, if rustls queued one, goes with the end of the connection.
            let (more, closed) = taken?;
            plain = more;
            if closed {
                socket::write_all(&pair, &plain).await?;
                return Ok(());
            }
        }
    }
    .await;
    match ended {
        Ok(()) => socket::shutdown_write(&pair),
        Err::<(), io::Error>(_) => {
            socket::shutdown(&pair);
            socket::shutdown(&tcp);
        }
    }
}

/// Sends what rustls has to send through `out`: at once if the socket takes it all (the
/// usual case: no timer), else the rest within `limit` (only the deadline is told as a
/// timeout; a send's own error is its own).
async fn send_within(
    tcp: &Stream,
    conn: &RefCell<ServerConnection>,
    out: &mut Vec<u8>,
    limit: Duration,
) -> io::Result<()> {
    out.clear();
    take_records(&mut conn.borrow_mut(), out)?;
    if out.is_empty() {
        return Ok(());
    }
    let fd = tcp.borrow().as_raw_fd();
    let sent = match socket::send_vectored(fd, &mut std::iter::once(&out[..])) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if sent == out.len() {
        return Ok(());
    }
    let rest = &out[sent..];
    glommio::timer::timeout(limit, async { Ok(socket::write_all(tcp, rest).await) })
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Pair → client: encrypts what the session writes (through the shard's scratch buffer, as
/// [`decrypt`]). Ends with a close_notify when the session closes its end, or when the
/// client is gone. A client that takes nothing for `websocket.idle_timeout_ms` is dropped
/// (its session, whose sends then wait, is cut off as a slow client already), and the
/// close_notify gets `websocket.close_timeout_ms`: no client keeps the connection's
/// descriptors and buffers by not reading.
async fn encrypt(
    shard: Rc<Shard>,
    tcp: Rc<Stream>,
    pair: Rc<Stream>,
    conn: Rc<RefCell<ServerConnection>>,
) {
    let websocket = &shard.config().websocket;
    let (idle, closing) = (
        Duration::from_millis(websocket.idle_timeout_ms),
        Duration::from_millis(websocket.close_timeout_ms),
    );
    // The records to send, in one buffer kept for the connection's life.
    let mut out = Vec::new();
    let _ = async {
        loop {
            let n = socket::read_with(&pair, &shard.scratch, SCRATCH_BYTES).await?;
            if n == 0 {
                conn.borrow_mut().send_close_notify();
                return send_within(&tcp, &conn, &mut out, closing).await;
            }
            conn.borrow_mut()
                .writer()
                .write_all(&shard.scratch.borrow()[..n])?;
            send_within(&tcp, &conn, &mut out, idle).await?;
        }
    }
    .await;
    socket::shutdown(&tcp);
    socket::shutdown(&pair);
}
