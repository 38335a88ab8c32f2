//! Starts the real `lhama serve` on a free port with a fresh tiny synthetic
//! model, and small HTTP helpers for the server tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

pub struct Server {
    pub child: Child,
    pub base: String,
    /// Every line the server wrote to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _model: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary under test: LHAMA_BIN when set (test executables carried to
/// another machine), else the one cargo built.
pub fn lhama_bin() -> String {
    std::env::var("LHAMA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_lhama").to_string())
}

pub fn synth_tiny() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new(lhama_bin())
        .args([
            "synth",
            "--preset",
            "tiny",
            "--seed",
            "0",
            "--out",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(st.status.success());
    dir
}

/// Starts a server and waits until /health answers (200, or 503 when
/// `expect_ready` is false).
pub async fn start_with(model: tempfile::TempDir, extra: &[&str], expect_ready: bool) -> Server {
    start_with_env(model, extra, expect_ready, &[]).await
}

/// As `start_with`, with extra environment variables for the server.
pub async fn start_with_env(
    model: tempfile::TempDir,
    extra: &[&str],
    expect_ready: bool,
    env: &[(&str, &str)],
) -> Server {
    let mut child = Command::new(lhama_bin())
        .args([
            "serve",
            "--model",
            model.path().to_str().unwrap(),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .args([
            "--served-model-name",
            "tiny,tiny-alias",
            "--log-format",
            "json",
        ])
        .args(if extra.contains(&"--shutdown-grace-secs") {
            &[][..]
        } else {
            &["--shutdown-grace-secs", "20"][..]
        })
        .args(extra)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .env_remove("LHAMA_CONFIG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = log.clone();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line.clone());
            if !sent
                && let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(a) = v["address"].as_str()
            {
                let _ = tx.send(a.to_string());
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server printed its address");
    let server = Server {
        child,
        base: format!("http://{addr}"),
        log,
        _model: model,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(format!("{}/health", server.base)).send().await {
            if expect_ready && r.status().is_success() {
                // When a backend is forced (LHAMA_BACKEND=cuda on the device), prove it is the one serving.
                let body: Value = r.json().await.unwrap();
                if let Ok(want) = std::env::var("LHAMA_BACKEND") {
                    assert_eq!(
                        body["backend"], want,
                        "the server runs on the requested backend"
                    );
                }
                break;
            }
            if r.status().is_success() == expect_ready
                || (!expect_ready && r.status().as_u16() == 503)
            {
                if !expect_ready {
                    let body: Value = r.json().await.unwrap();
                    if body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("loading"))
                    {
                        continue;
                    }
                }
                break;
            }
        }
        assert!(Instant::now() < deadline, "server did not become healthy");
        tokio::task::yield_now().await;
    }
    server
}

pub async fn start(extra: &[&str]) -> Server {
    start_with(synth_tiny(), extra, true).await
}

pub async fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", server.base))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Posts a streaming request and returns the parsed `data:` payloads
/// (`[DONE]` as the string "[DONE]").
pub async fn post_stream(server: &Server, path: &str, body: &Value) -> Vec<Value> {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", server.base))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    let mut events = Vec::new();
    // Bytes until a blank line: a chunk may end inside a UTF-8 character.
    let mut buf: Vec<u8> = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.unwrap());
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            for line in std::str::from_utf8(&event).unwrap().lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    events.push(if data == "[DONE]" {
                        Value::String(data.into())
                    } else {
                        serde_json::from_str(data).unwrap()
                    });
                }
            }
        }
    }
    events
}

/// Concatenated text per choice index of a stream of chunks.
pub fn stream_texts(events: &[Value], field: fn(&Value) -> Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events {
        for c in e["choices"].as_array().into_iter().flatten() {
            let i = c["index"].as_u64().unwrap() as usize;
            if out.len() <= i {
                out.resize(i + 1, String::new());
            }
            if let Some(t) = field(c) {
                out[i].push_str(t);
            }
        }
    }
    out
}

pub async fn metric(server: &Server, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_in(&text, name)
}

/// A series' value in a /metrics text: `name value` or `name{labels} value`
/// (every series has model_name).
pub fn metric_in(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once('}')?.1,
                None => rest,
            };
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}

pub async fn wait_metric(server: &Server, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(server, name).await != want {
        assert!(Instant::now() < deadline, "{name} never reached {want}");
        tokio::task::yield_now().await;
    }
}

/// Waits until a metric is at least `want`.
pub async fn wait_metric_at_least(server: &Server, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(server, name).await < want {
        assert!(Instant::now() < deadline, "{name} never reached {want}");
        tokio::task::yield_now().await;
    }
}

/// Waits until the server has written a log line containing `text`.
pub async fn wait_log(server: &Server, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log.lock().unwrap().iter().any(|l| l.contains(text)) {
        assert!(Instant::now() < deadline, "the log never said {text:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends SIGTERM and waits until the server is draining (/health 503), so
/// that a request sent next meets the drain.
pub async fn sigterm_and_wait_for_drain(server: &Server) {
    sigterm(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = reqwest::get(format!("{}/health", server.base)).await
            && r.status().as_u16() == 503
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not start draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends SIGTERM to the server.
pub fn sigterm(server: &Server) {
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}
