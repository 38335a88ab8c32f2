//! Clients that are slow, half-closed, hostile or simply unlucky, against the
//! real server over raw sockets: streamed events are written as they are
//! made, slow or idle connections are closed, a connection cap answers 503,
//! heavy requests do not stall others, half-closed clients get their answer,
//! and shutdown drains with 503s and ends cut streams with an error event.
//!
//! The tests run one at a time (some measure latency).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn host(server: &common::Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

fn connect(server: &common::Server) -> TcpStream {
    let s = TcpStream::connect(host(server)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn request(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: lhama\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn chat(extra: Value) -> String {
    let mut b = json!({"model": "tiny", "messages": [{"role": "user", "content": "Oi"}],
                       "temperature": 0, "max_tokens": 24, "ignore_eos": true});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b.to_string()
}

/// Reads until the peer closes (or `stop` says the bytes so far are a whole answer).
fn read_until(s: &mut TcpStream, stop: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while !stop(&out) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

fn chunked_end(b: &[u8]) -> bool {
    b.ends_with(b"0\r\n\r\n")
}

/// Whether the server has closed this connection (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}

/// The JSON body of a whole (content-length) response.
fn json_body(response: &[u8]) -> Value {
    let text = String::from_utf8_lossy(response);
    let (_, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

/// An OpenAI-shaped error answer with this status whose message says `what`.
fn assert_error(answer: &[u8], status: u16, what: &str) {
    assert_eq!(
        status_of(answer),
        status,
        "{}",
        String::from_utf8_lossy(answer)
    );
    let body = json_body(answer);
    assert!(
        body["error"]["message"].as_str().unwrap().contains(what),
        "{body}"
    );
}

fn whole_response(b: &[u8]) -> bool {
    let text = String::from_utf8_lossy(b);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .and_then(|v| v.trim().parse::<usize>().ok());
    match len {
        Some(n) => body.len() >= n,
        None => chunked_end(b),
    }
}

/// Six streamed requests over one kept-alive connection: each stream's events
/// arrive as they are made. Without TCP_NODELAY every stream after the first
/// came in a clump, its tail ~40 ms late (Nagle's algorithm against delayed
/// ACKs): measured 48 ms per stream instead of 6.
#[tokio::test]
async fn streamed_events_arrive_as_made_on_a_reused_connection() {
    let _serial = SERIAL.lock().await;
    let server = common::start(&[]).await;
    let mut s = connect(&server);
    let latencies = tokio::task::spawn_blocking(move || {
        let mut first_event = Vec::new();
        for _ in 0..6 {
            let sent = Instant::now();
            s.write_all(
                request(
                    "POST",
                    "/v1/chat/completions",
                    &chat(json!({"stream": true})),
                )
                .as_bytes(),
            )
            .unwrap();
            let mut got = Vec::new();
            let mut first = None;
            let mut buf = [0u8; 65536];
            while !chunked_end(&got) {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the server closed the kept-alive connection");
                got.extend_from_slice(&buf[..n]);
                // The second event: the first token (the first is the role chunk,
                // written with the response head).
                if first.is_none() && got.windows(6).filter(|w| w == b"data: ").count() >= 2 {
                    first = Some(sent.elapsed());
                }
            }
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(text.contains("data: [DONE]"), "{text}");
            first_event.push((first.unwrap(), sent.elapsed()));
        }
        first_event
    })
    .await
    .unwrap();
    // 24 tokens take about 6 ms to make here; with Nagle's algorithm the
    // tail of each stream on a reused connection waited ~40 ms for an ACK.
    let mut whole: Vec<Duration> = latencies[1..].iter().map(|l| l.1).collect();
    whole.sort();
    let median = whole[whole.len() / 2];
    assert!(
        median < Duration::from_millis(30),
        "(first token, whole stream) per request: {latencies:?}"
    );
}

/// Starts trickling a request head on `s`: the request line now, then one
/// header line every 200 ms until the server closes. Returns when it was
/// closed and whether the server had answered anything first.
fn trickle(mut s: TcpStream, i: usize) -> std::thread::JoinHandle<(Instant, bool)> {
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\n")
        .unwrap();
    std::thread::spawn(move || {
        let mut answered = false;
        for j in 0..100 {
            std::thread::sleep(Duration::from_millis(200));
            if s.write_all(format!("x-slow-{i}-{j}: 1\r\n").as_bytes())
                .is_err()
            {
                break;
            }
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            let mut buf = [0u8; 4096];
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => answered = true,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        (Instant::now(), answered)
    })
}

/// Connections that trickle a request head are closed after the header-read
/// timeout; past the connection cap a new one gets an OpenAI-shaped 503 and
/// the log and metrics say why; once the tricklers are gone the server
/// serves again.
///
/// The eight connections that fill the cap are known to hold its eight
/// places before the ninth comes: the first is the one that read
/// `lhama_http_open_connections` = 1 (no other connection open), and the
/// other seven connected before the ninth (the accept loop takes them in
/// order). Probing while tricklers still connect would race with them.
#[tokio::test]
async fn slowloris_connections_are_capped_and_timed_out() {
    let _serial = SERIAL.lock().await;
    let server =
        common::start(&["--max-connections", "8", "--header-read-timeout-secs", "2"]).await;
    let scrape = b"GET /metrics HTTP/1.1\r\nhost: lhama\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let mut s = connect(&server);
        s.write_all(scrape).unwrap();
        let answer = read_until(&mut s, whole_response);
        assert_eq!(status_of(&answer), 200);
        let text = String::from_utf8_lossy(&answer).to_string();
        if common::metric_in(&text, "lhama_http_open_connections") == 1.0 {
            break s;
        }
        // The server has yet to see the start-up check's connection close.
        assert!(Instant::now() < deadline, "connections stayed open: {text}");
        drop(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let started = Instant::now();
    let mut tricklers = vec![trickle(first, 0)];
    for i in 1..8 {
        tricklers.push(trickle(connect(&server), i));
    }
    // The ninth connection is answered 503 and closed.
    let mut s = connect(&server);
    s.write_all(b"GET /health HTTP/1.1\r\nhost: lhama\r\nconnection: close\r\n\r\n")
        .unwrap();
    let answer = read_until(&mut s, |_| false);
    assert_error(&answer, 503, "connection limit");
    // A log line says the cap was hit (read from stderr by another thread).
    common::wait_log(&server, "connection limit reached").await;
    // The tricklers are cut off by the 2 s header-read timeout, unanswered.
    for t in tricklers {
        let (ended, answered) = t.join().unwrap();
        let lived = ended - started;
        assert!(!answered, "a trickling connection got an answer");
        assert!(
            lived > Duration::from_millis(1500) && lived < Duration::from_secs(6),
            "a trickling connection lived {lived:?}"
        );
    }
    assert_eq!(
        common::metric(&server, "lhama_http_refused_connections_total").await,
        1.0
    );
}

/// A kept-alive connection with nothing in flight is closed after the idle
/// timeout; a body that does not arrive in time gets 408.
#[tokio::test]
async fn idle_connections_and_slow_bodies_time_out() {
    let _serial = SERIAL.lock().await;
    let server = common::start(&[
        "--keep-alive-timeout-secs",
        "1",
        "--body-read-timeout-secs",
        "1",
    ])
    .await;
    let mut s = connect(&server);
    for _ in 0..2 {
        s.write_all(b"GET /health HTTP/1.1\r\nhost: lhama\r\n\r\n")
            .unwrap();
        let answer = read_until(&mut s, whole_response);
        assert_eq!(status_of(&answer), 200, "kept alive between requests");
        std::thread::sleep(Duration::from_millis(300));
    }
    let idle = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(4)),
        "the idle connection stayed open"
    );
    assert!(
        idle.elapsed() >= Duration::from_millis(500),
        "closed too early"
    );

    let mut s = connect(&server);
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: lhama\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\": ")
        .unwrap();
    let answer = read_until(&mut s, whole_response);
    assert_eq!(
        status_of(&answer),
        408,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let body = json_body(&answer);
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
}

/// A client that sends its request and then shuts down its write side still
/// gets the answer, non-streamed and streamed.
#[tokio::test]
async fn half_closed_clients_get_their_answer() {
    let _serial = SERIAL.lock().await;
    let server = common::start(&[]).await;
    let mut s = connect(&server);
    s.write_all(request("POST", "/v1/chat/completions", &chat(json!({}))).as_bytes())
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let answer = read_until(&mut s, |_| false);
    assert_eq!(
        status_of(&answer),
        200,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let text = String::from_utf8_lossy(&answer);
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    // The answer may be sent chunked: take the JSON object out of it.
    let json_text = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let body: Value = serde_json::from_str(json_text).unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 24, "{body}");

    let mut s = connect(&server);
    s.write_all(
        request(
            "POST",
            "/v1/chat/completions",
            &chat(json!({"stream": true})),
        )
        .as_bytes(),
    )
    .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let answer = read_until(&mut s, |_| false);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("data: [DONE]"), "{text}");
}

/// Megabytes of prompt (JSON parsing, templates, tokenization) are handled off
/// the async workers and refused before tokenizing: /health and another
/// client's stream keep answering within 100 ms, and memory stays bounded.
// Several threads, and the heavy bodies serialized before the clock runs:
// on the test's own single thread, serializing 7 MB of JSON stalled the
// /health probe itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_requests_do_not_stall_others() {
    let _serial = SERIAL.lock().await;
    let server = common::start(&[]).await;
    let big = "palavra ".repeat(7 << 17); // 7 MB
    let chat_body =
        json!({"model": "tiny", "messages": [{"role": "user", "content": big}]}).to_string();
    let tokenize_body = json!({"prompt": format!("{big}{}", "x".repeat(900_000))}).to_string();
    let mut heavy = Vec::new();
    for (path, body) in [
        ("/v1/chat/completions", chat_body.clone()),
        ("/v1/chat/completions", chat_body.clone()),
        ("/v1/chat/completions", chat_body),
        ("/tokenize", tokenize_body),
    ] {
        let base = server.base.clone();
        heavy.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    // Meanwhile: /health over and over, and a stream of another client.
    let client = reqwest::Client::new();
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + Duration::from_millis(1500);
    let stream = tokio::spawn({
        let base = server.base.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{base}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(chat(json!({"stream": true, "max_tokens": 200})))
                .send()
                .await
                .unwrap();
            r.text().await.unwrap()
        }
    });
    while Instant::now() < until {
        let t = Instant::now();
        let r = client
            .get(format!("{}/health", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("slowest /health while heavy requests ran: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(100),
        "/health took {slowest:?} while heavy requests ran"
    );
    for h in heavy {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    }
    assert!(stream.await.unwrap().contains("data: [DONE]"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        peak_kb < 400 * 1024,
        "peak resident memory {} MB",
        peak_kb / 1024
    );
}

/// Tokens that are bytes no character can start with (`<0xFF>`) stream as
/// U+FFFD one by one, instead of being held back to the end.
#[tokio::test]
async fn invalid_byte_tokens_stream_as_they_come() {
    let _serial = SERIAL.lock().await;
    let server = common::start(&[]).await;
    let events = common::post_stream(
        &server,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "Oi", "max_tokens": 100, "stream": true,
                "temperature": 0, "ignore_eos": true, "logit_bias": {"258": 100}}),
    )
    .await;
    let texts: Vec<&str> = events
        .iter()
        .flat_map(|e| e["choices"].as_array().into_iter().flatten())
        .filter_map(|c| c["text"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(texts.len(), 100, "one chunk per token: {texts:?}");
    assert!(texts.iter().all(|t| *t == "\u{FFFD}"), "{texts:?}");
}

/// A client socket with a 4 KB receive buffer that reads nothing yet, asking
/// for a stream of about 12 MB (16 choices, 480 tokens, 20 top logprobs
/// each): more than the kernel buffers (4 MB at most here), so the server
/// cannot finish writing it until the client reads.
fn stalled_stream(server: &common::Server) -> TcpStream {
    let addr: std::net::SocketAddr = host(server).parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        request(
            "POST",
            "/v1/chat/completions",
            &chat(json!({"stream": true, "n": 16, "max_tokens": 480, "logprobs": true, "top_logprobs": 20})),
        )
        .as_bytes(),
    )
    .unwrap();
    s
}

fn sse_data(raw: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(raw)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// SIGTERM: new requests get a 503 in OpenAI's shape while a running stream
/// finishes, a connection holding a half-sent request does not keep the
/// process alive, and it exits 0 as soon as the stream is done.
#[tokio::test]
async fn shutdown_drains_with_503_and_exits_when_streams_end() {
    let _serial = SERIAL.lock().await;
    let mut server = common::start(&["--shutdown-grace-secs", "20"]).await;
    let mut stalled = stalled_stream(&server);
    let mut half_sent = connect(&server);
    half_sent
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: lhama\r\ncontent-le")
        .unwrap();
    // The stalled request has reached the engine.
    common::wait_metric_at_least(&server, "lhama_prompt_tokens_total", 1.0).await;
    common::sigterm_and_wait_for_drain(&server).await;
    for (method, path, body) in [
        ("GET", "/health", String::new()),
        ("POST", "/v1/chat/completions", chat(json!({}))),
    ] {
        let mut s = connect(&server);
        s.write_all(request(method, path, &body).as_bytes())
            .unwrap();
        let answer = read_until(&mut s, whole_response);
        assert_error(&answer, 503, "shutting down");
        assert!(
            String::from_utf8_lossy(&answer)
                .to_ascii_lowercase()
                .contains("connection: close")
        );
    }
    // The stream is still running; read it to its end.
    let raw = read_until(&mut stalled, chunked_end);
    let data = sse_data(&raw);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        String::from_utf8_lossy(&raw)
            .matches("\"finish_reason\":\"length\"")
            .count()
            == 16,
        "all sixteen choices finished"
    );
    let done = Instant::now();
    let status = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        done.elapsed() < Duration::from_secs(5),
        "the process lingered {:?} after its last stream",
        done.elapsed()
    );
}

/// When the grace period runs out, a stream still running ends with an
/// OpenAI error event and `[DONE]`, not a bare end of file.
#[tokio::test]
async fn streams_cut_at_grace_expiry_end_with_an_error_event() {
    let _serial = SERIAL.lock().await;
    let mut server = common::start(&["--shutdown-grace-secs", "1"]).await;
    let mut stalled = stalled_stream(&server);
    common::wait_metric_at_least(&server, "lhama_prompt_tokens_total", 1.0).await;
    common::sigterm(&server);
    common::wait_log(&server, "grace period over").await;
    let raw = read_until(&mut stalled, chunked_end);
    let data = sse_data(&raw);
    let n = data.len();
    assert!(n >= 2, "{data:?}");
    assert_eq!(data[n - 1], "[DONE]");
    let err: Value = serde_json::from_str(&data[n - 2]).unwrap();
    assert_eq!(err["error"]["type"], "server_error", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("grace period"),
        "{err}"
    );
    let status = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}
