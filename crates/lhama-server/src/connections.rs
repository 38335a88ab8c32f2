//! The HTTP/1 connections themselves: accepting with a cap, TCP_NODELAY,
//! header-read and keep-alive idle timeouts, half-closed clients, and the
//! count of requests in flight that graceful shutdown waits on.
//!
//! One task per connection drives hyper's HTTP/1 state machine over the
//! router. A request is "in flight" from the moment hyper hands it to the
//! router until its response body has been sent or dropped, so a streamed
//! response counts until its last event; during a shutdown, a connection
//! counts until hyper has written its last response and closed it.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::body::WithGuard;
use crate::state::AppState;

/// Limits on connections (flags, env and TOML in `lhama serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// From when a connection starts waiting for a request (new, or between
    /// keep-alive requests) until that request's head is complete.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight that receives no byte for
    /// this long is closed.
    pub keep_alive_timeout: Duration,
}

/// What graceful shutdown waits for, server-wide: requests in flight (from
/// the router's call until their body ends), and connections closing after
/// their last response, until it is written. A body ends when its last
/// bytes are handed to hyper, which may still hold them while the socket is
/// full: exiting then would cut the response short.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    closing: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl InFlight {
    /// Requests in flight.
    pub fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Connections still writing their last response.
    pub fn closing(&self) -> usize {
        self.closing.load(Ordering::SeqCst)
    }

    /// Waits until no request is in flight and every closing connection
    /// has written its last response.
    pub async fn idle(&self) {
        loop {
            let notified = self.changed.notified();
            if self.get() == 0 && self.closing() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Counts a connection as closing until the value is dropped.
    fn closing_connection(self: &Arc<Self>) -> ClosingGuard {
        self.closing.fetch_add(1, Ordering::SeqCst);
        ClosingGuard(self.clone())
    }
}

struct ClosingGuard(Arc<InFlight>);

impl Drop for ClosingGuard {
    fn drop(&mut self) {
        self.0.closing.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// No head is being received (`Activity::head_ms`).
const NO_HEAD: u64 = u64::MAX;

/// What one connection's task watches: requests in flight on it, when it
/// last received a byte or finished a response, and when the first byte of
/// the request head now arriving came (ms since `start`).
struct Activity {
    start: Instant,
    busy: AtomicUsize,
    /// Whether a request has begun on this connection (its response may
    /// still be being written after its body ended).
    served: std::sync::atomic::AtomicBool,
    last_ms: AtomicU64,
    head_ms: AtomicU64,
    /// Signalled when a request on this connection starts or ends, or a head
    /// begins: what the connection's task waits for changes.
    changed: tokio::sync::Notify,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Bytes arrived: with no request in flight they begin a request head.
    fn received(&self) {
        self.touch();
        if self.busy.load(Ordering::SeqCst) == 0 {
            let ms = self.start.elapsed().as_millis() as u64;
            let begun = self
                .head_ms
                .compare_exchange(NO_HEAD, ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
            if begun {
                self.changed.notify_one();
            }
        }
    }

    /// When the connection must have done something by, and what, if nothing
    /// is in flight: finish the head it began, or send one at all.
    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        match self.head_ms.load(Ordering::Relaxed) {
            NO_HEAD => Some(self.last() + limits.keep_alive_timeout),
            ms => Some(self.start + Duration::from_millis(ms) + limits.header_read_timeout),
        }
    }
}

/// Set when the client's side of the connection has closed (read EOF): the
/// client may have gone, or only half-closed and still wait for the answer.
/// Handlers of non-streamed requests find it in the request's extensions.
#[derive(Debug, Default)]
pub struct ClientEof {
    closed: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl ClientEof {
    fn set(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Resolves once the client has closed its side.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// Held by a request from the router's call until its body is done.
struct RequestGuard {
    conn: Arc<Activity>,
    server: Arc<InFlight>,
}

impl RequestGuard {
    fn new(conn: Arc<Activity>, server: Arc<InFlight>) -> Self {
        conn.busy.fetch_add(1, Ordering::SeqCst);
        conn.served.store(true, Ordering::SeqCst);
        conn.head_ms.store(NO_HEAD, Ordering::Relaxed);
        // The connection's task re-arms its branches: with a request in
        // flight it watches for the client's end of file.
        conn.changed.notify_one();
        server.count.fetch_add(1, Ordering::SeqCst);
        Self { conn, server }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.touch();
        self.conn.busy.fetch_sub(1, Ordering::SeqCst);
        self.conn.changed.notify_one();
        self.server.count.fetch_sub(1, Ordering::SeqCst);
        self.server.changed.notify_waiters();
    }
}

/// The socket, noting when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.received();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts connections until the process ends. `closing` turning true asks
/// every open connection to finish its request in flight and close (idle
/// ones and ones with a half-sent request close at once); connections
/// accepted afterwards are still answered (503 while shutting down).
pub async fn accept_loop(
    listener: TcpListener,
    app: Router,
    state: AppState,
    limits: ConnLimits,
    closing: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Connections over the cap get a short 503; a few at a time, the rest are dropped.
    let refusals = Arc::new(Semaphore::new(64));
    let mut last_cap_log: Option<Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if last_cap_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    peer = %peer,
                    "connection limit reached: refusing new connections with 503 until some close (--max-connections)"
                );
                last_cap_log = Some(Instant::now());
            }
            state.0.metrics.connection_refused();
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = tokio::time::timeout(Duration::from_secs(1), refuse(stream)).await;
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let counted = state.0.metrics.connection_opened();
        let app = app.clone();
        let state = state.clone();
        let closing = closing.clone();
        tokio::spawn(async move {
            let _slot = (slot, counted);
            serve_connection(stream, app, state, limits, closing).await;
        });
    }
}

/// Answers a connection over the cap with 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    let body = crate::error::ApiError::unavailable(
        "The server has reached its connection limit. Retry later.",
    )
    .body()
    .to_string();
    // Read the request's start (briefly) and, after answering, whatever
    // else comes until the client closes: closing a socket with unread
    // input resets the connection, and the client would lose the answer.
    // The caller bounds the whole exchange (1 s).
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut scratch)).await;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
    while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    state: AppState,
    limits: ConnLimits,
    mut closing: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity {
        start: Instant::now(),
        busy: AtomicUsize::new(0),
        served: std::sync::atomic::AtomicBool::new(false),
        last_ms: AtomicU64::new(0),
        head_ms: AtomicU64::new(NO_HEAD),
        changed: tokio::sync::Notify::new(),
    });
    // hyper does not read while a request is answered (half-closed clients
    // are allowed), so a second handle on the socket watches for its end.
    let (stream, peer_side) = match split_watch(stream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "could not prepare a connection");
            return;
        }
    };
    let eof = Arc::new(ClientEof::default());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let conn_activity = activity.clone();
    let request_eof = eof.clone();
    let in_flight = state.0.in_flight.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(request_eof.clone());
        let guard = RequestGuard::new(conn_activity.clone(), state.0.in_flight.clone());
        let app = app.clone();
        let state = state.clone();
        async move {
            let mut response = app
                .oneshot(req.map(Body::new))
                .await
                .unwrap_or_else(|e: Infallible| match e {});
            close_while_draining(&state, &mut response);
            // The request stays counted until its body ends.
            Ok::<_, Infallible>(response.map(|inner| Body::new(WithGuard::new(inner, guard))))
        }
    });
    // hyper's own header timer starts when the connection begins to wait
    // for a request, idle time included, so it only backs up the two
    // separate limits watched below.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout + limits.keep_alive_timeout)
        .half_close(true)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    // Accepted during the drain: its requests are answered 503 with
    // `Connection: close` (see close_while_draining), which closes it.
    let mut shutting = *closing.borrow();
    // Held from the shutdown's start until this connection has written its
    // last response and closed.
    let mut _closing_guard = None;
    loop {
        // While a request is in flight no clock runs; its end starts the
        // idle clock again, and a head's first byte the header clock. The deadline is re-read after every
        // wake-up, since bytes may have arrived meanwhile.
        let deadline = activity.deadline(&limits);
        tokio::select! {
            () = activity.changed.notified(), if !shutting => {}
            () = read_closed(&peer_side), if activity.busy.load(Ordering::SeqCst) > 0
                && !eof.closed.load(Ordering::SeqCst) => eof.set(),
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = closing.changed(), if !shutting => {
                if changed.is_err() || *closing.borrow() {
                    if activity.busy.load(Ordering::SeqCst) == 0
                        && !activity.served.load(Ordering::SeqCst)
                    {
                        // No request yet, perhaps its head arriving: nothing
                        // to finish (hyper's graceful close would wait for
                        // the head of a connection's first request).
                        return;
                    }
                    // A request in flight, or a response perhaps still
                    // being written: hyper finishes it and closes (an idle
                    // kept-alive connection, or one with a later request's
                    // head half-received, closes at once).
                    shutting = true;
                    _closing_guard = Some(in_flight.closing_connection());
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = sleep_until(deadline), if !shutting => {
                if activity.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    // Idle, or a head too slow; no request is in flight, so
                    // dropping the connection loses nothing.
                    tracing::debug!("closing a connection: keep-alive or header-read timeout");
                    return;
                }
            }
        }
    }
}

/// The stream, and a second handle on the same socket for `read_closed`.
fn split_watch(stream: TcpStream) -> io::Result<(TcpStream, TcpStream)> {
    let std = stream.into_std()?;
    let watch = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, TcpStream::from_std(watch)?))
}

/// Resolves when the client's side has closed (end of file, or an error);
/// stays pending while bytes of a next request wait to be read.
async fn read_closed(peer: &TcpStream) {
    let mut byte = [0u8; 1];
    match peer.peek(&mut byte).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `Connection: close` on every response while shutting down, so that
/// clients and load balancers open their next request elsewhere.
pub fn close_while_draining(state: &AppState, response: &mut Response<Body>) {
    if state.0.shutting_down.load(Ordering::SeqCst) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use axum::routing::get;

    use super::*;
    use crate::state::ServerConfig;

    const FRAMES: usize = 256;
    const FRAME: usize = 1024;

    fn config() -> ServerConfig {
        ServerConfig {
            served_model_names: vec!["m".into()],
            api_keys: Vec::new(),
            max_body_bytes: 1 << 20,
            max_queue_requests: 8,
            max_queue_tokens: 1 << 16,
            cors_origins: Vec::new(),
            body_read_timeout: Duration::from_secs(10),
            system_prompt_merge: false,
            chat_ui: false,
        }
    }

    /// The body of a chunked response, decoded; `None` if it does not end
    /// with the last chunk.
    fn dechunk(raw: &[u8]) -> Option<Vec<u8>> {
        let at = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let mut rest = &raw[at..];
        let mut body = Vec::new();
        loop {
            let line = rest.windows(2).position(|w| w == b"\r\n")?;
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).ok()?, 16).ok()?;
            rest = &rest[line + 2..];
            if size == 0 {
                return (rest == b"\r\n").then_some(body);
            }
            body.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
    }

    /// Graceful shutdown waits until a response's last bytes are written,
    /// not only until its body has ended: with a slow reader and a full
    /// socket, hyper still holds the tail when the body ends, and the
    /// process exiting then (here: the connection's task dropped as soon as
    /// `idle` resolves) cut the response short.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_drain_waits_for_the_last_response_to_be_written() {
        let app = Router::new().route(
            "/big",
            get(|| async {
                let frames = (0..FRAMES).map(|_| Ok::<_, Infallible>(vec![b'x'; FRAME]));
                Body::from_stream(futures_util::stream::iter(frames))
            }),
        );
        let state = AppState::new(config());
        let limits = ConnLimits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(10),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            socket.connect(&addr.into()).unwrap();
            let mut s: std::net::TcpStream = socket.into();
            s.write_all(b"GET /big HTTP/1.1\r\nhost: m\r\n\r\n")
                .unwrap();
            go_rx.recv().unwrap();
            let mut raw = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                // The slowness is what is under test, not a wait: 1 KB per
                // half millisecond keeps the server's socket full, so hyper
                // still holds the response's tail when its body ends.
                std::thread::sleep(Duration::from_micros(500));
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return raw,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
            }
        });
        let (stream, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&stream)
            .set_send_buffer_size(4096)
            .unwrap();
        let (closing_tx, closing_rx) = watch::channel(false);
        let task = tokio::spawn(serve_connection(
            stream,
            app,
            state.clone(),
            limits,
            closing_rx,
        ));
        let in_flight = state.0.in_flight.clone();
        // Two conditions the test waits on, polled every millisecond until a
        // deadline (nothing signals them: InFlight notifies only the drain).
        let deadline = Instant::now() + Duration::from_secs(10);
        while in_flight.get() == 0 {
            assert!(Instant::now() < deadline, "the request never began");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        closing_tx.send(true).unwrap();
        while in_flight.closing() == 0 {
            assert!(
                Instant::now() < deadline,
                "the connection was not counted as closing"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        go_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(20), in_flight.idle())
            .await
            .expect("the drain never ended");
        task.abort();
        let raw = client.join().unwrap();
        let body = dechunk(&raw).expect("the response was cut short");
        assert_eq!(body.len(), FRAMES * FRAME);
        assert_eq!((in_flight.get(), in_flight.closing()), (0, 0));
    }
}
