//! Load, cancellation, queue limits, start-up failure and graceful shutdown
//! of the real server.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

fn chat_body(prompt: &str, extra: Value) -> Value {
    let mut b = json!({"model": "tiny", "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 24, "ignore_eos": true});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// 64 concurrent streaming requests with mixed parameters: some cancelled
/// midway, some with stop strings, some with n = 2. Every finished greedy
/// output equals the same request run alone, and the KV blocks in use return
/// to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_streams_equal_their_solo_runs() {
    // A small KV pool (96 blocks of 16) so the load also preempts.
    let server = common::start(&[
        "--kv-cache-tokens",
        "1536",
        "--max-num-batched-tokens",
        "256",
    ])
    .await;
    let prompts: Vec<String> = (0..64)
        .map(|i| {
            format!(
                "Pergunta {i}: qual a capital {}?",
                "do Brasil ".repeat(i % 7)
            )
        })
        .collect();
    // Solo runs, one at a time.
    let mut solo = Vec::new();
    for p in &prompts {
        let (status, body) =
            common::post(&server, "/v1/chat/completions", &chat_body(p, json!({}))).await;
        assert_eq!(status, 200, "{body}");
        solo.push(
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut tasks = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let extra = match i % 4 {
            0 => json!({"stream": true}),
            1 => json!({"stream": true, "n": 2}),
            2 => {
                // A stop string that occurs in the solo output, when there is one.
                let chars: Vec<char> = solo[i].chars().collect();
                let stop: String = chars[chars.len() / 2..(chars.len() / 2 + 2).min(chars.len())]
                    .iter()
                    .collect();
                json!({"stream": true, "stop": [stop]})
            }
            _ => json!({"stream": true, "max_tokens": 400}), // cancelled midway
        };
        let body = chat_body(p, extra.clone());
        let base = server.base.clone();
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(format!("{base}/v1/chat/completions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let mut stream = r.bytes_stream();
            // Bytes, decoded at the end: a chunk may split a UTF-8 character.
            let mut bytes: Vec<u8> = Vec::new();
            let cancel = i % 4 == 3;
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk.unwrap());
                if cancel && bytes.windows(6).filter(|w| w == b"data: ").count() >= 3 {
                    return (i, extra, None); // drop the stream: the client goes away
                }
            }
            let raw = String::from_utf8(bytes).unwrap();
            let events: Vec<Value> = raw
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            assert!(raw.trim_end().ends_with("data: [DONE]"));
            (
                i,
                extra,
                Some(common::stream_texts(&events, |c| {
                    c["delta"]["content"].as_str()
                })),
            )
        }));
    }
    for t in tasks {
        let (i, extra, texts) = t.await.unwrap();
        let Some(texts) = texts else { continue };
        match i % 4 {
            0 => assert_eq!(texts, vec![solo[i].clone()], "request {i}"),
            1 => assert_eq!(
                texts,
                vec![solo[i].clone(), solo[i].clone()],
                "request {i}: greedy n=2"
            ),
            2 => {
                let stop = extra["stop"][0].as_str().unwrap();
                let want = &solo[i][..solo[i].find(stop).unwrap()];
                assert_eq!(
                    texts,
                    vec![want.to_string()],
                    "request {i} with stop {stop:?}"
                );
            }
            _ => unreachable!("cancelled requests return no texts"),
        }
    }
    common::wait_metric(&server, "lhama_kv_blocks_used", 0.0).await;
    common::wait_metric(&server, "lhama_running_sequences", 0.0).await;
}

#[tokio::test]
async fn a_client_that_disconnects_frees_its_blocks() {
    // Steps slowed to 2 ms: 480 tokens take about a second, so the request
    // is still running when the client leaves however fast the CPU is (the
    // tiny model alone makes 480 tokens in ~50 ms). EOS is ignored so that
    // the generation cannot end early on its own.
    let server = common::start_with_env(
        common::synth_tiny(),
        &[],
        true,
        &[("LHAMA_TEST_STEP_DELAY_MS", "2")],
    )
    .await;
    // Non-streaming: give up on the response after a moment.
    let body = chat_body("Oi", json!({"max_tokens": 480, "ignore_eos": true}));
    let url = format!("{}/v1/chat/completions", server.base);
    let r = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .timeout(Duration::from_millis(30))
        .send()
        .await;
    assert!(
        r.is_err(),
        "the request should have been abandoned before finishing"
    );
    common::wait_metric(&server, "lhama_kv_blocks_used", 0.0).await;
    let generated = common::metric(&server, "lhama_generation_tokens_total").await;
    assert!(
        generated < 480.0,
        "generation went on after the client left ({generated} tokens)"
    );
    // Streaming: read one chunk, then drop.
    let r = reqwest::Client::new()
        .post(&url)
        .json(&chat_body(
            "Oi",
            json!({"max_tokens": 480, "stream": true, "ignore_eos": true}),
        ))
        .send()
        .await
        .unwrap();
    let mut s = r.bytes_stream();
    s.next().await.unwrap().unwrap();
    drop(s);
    common::wait_metric(&server, "lhama_kv_blocks_used", 0.0).await;
    common::wait_metric(&server, "lhama_running_sequences", 0.0).await;
    let total = common::metric(&server, "lhama_generation_tokens_total").await;
    assert!(
        total - generated < 480.0,
        "the stream's generation went on after the client left"
    );
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    // One running sequence (its 480 steps slowed to 5 ms each); the next
    // request waits in the queue (one place).
    let server = common::start_with_env(
        common::synth_tiny(),
        &["--max-queue-requests", "1", "--max-num-seqs", "1"],
        true,
        &[("LHAMA_TEST_STEP_DELAY_MS", "5")],
    )
    .await;
    let url = format!("{}/v1/chat/completions", server.base);
    let running = reqwest::Client::new()
        .post(&url)
        .json(&chat_body("Oi", json!({"max_tokens": 480, "stream": true})))
        .send()
        .await
        .unwrap();
    // Its first token gives its queue place back.
    let mut running = running.bytes_stream();
    let mut seen = Vec::new();
    while seen.windows(6).filter(|w| w == b"data: ").count() < 2 {
        seen.extend_from_slice(&running.next().await.unwrap().unwrap());
    }
    let waiting = reqwest::Client::new()
        .post(&url)
        .json(&chat_body("Oi", json!({"max_tokens": 4, "stream": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(waiting.status().as_u16(), 200);
    common::wait_metric(&server, "lhama_queue_depth", 1.0).await;
    let r = reqwest::Client::new()
        .post(&url)
        .json(&chat_body("Oi", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    drop(running);
    drop(waiting);
    // Once they are gone, one at a time is fine.
    common::wait_metric(&server, "lhama_queue_depth", 0.0).await;
    let (status, _) =
        common::post(&server, "/v1/chat/completions", &chat_body("Oi", json!({}))).await;
    assert_eq!(status, 200);
}

/// A request that no queue state could ever admit gets 400, not 429, and
/// nothing of it reaches the engine.
#[tokio::test]
async fn a_request_that_can_never_be_admitted_gets_400() {
    let server = common::start(&["--max-queue-tokens", "4000"]).await;
    let url = format!("{}/v1/completions", server.base);
    let client = reqwest::Client::new();
    let send = |body: Value| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client.post(&url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }
    };
    // 300 prompts: more sequences than the queue's 256 places.
    let prompts: Vec<Vec<u32>> = (0..300).map(|i| vec![1, 5 + i % 100]).collect();
    let (status, body) = send(json!({"model": "tiny", "prompt": prompts, "max_tokens": 1})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("300 sequences"),
        "{body}"
    );
    // n × prompt tokens over --max-queue-tokens.
    let prompt: Vec<u32> = (0..500).map(|i| 5 + i % 100).collect();
    let (status, body) =
        send(json!({"model": "tiny", "prompt": prompt, "n": 10, "max_tokens": 1})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("5000 tokens"),
        "{body}"
    );
    // A prompt of 1.1 million ids: over the context, said as such.
    let huge: Vec<u32> = vec![5; 1_100_000];
    let (status, body) = send(json!({"model": "tiny", "prompt": huge, "max_tokens": 1})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    // The same as text, 7 MB of it: refused before it is tokenized.
    let text = "palavra ".repeat(7 << 17);
    let (status, body) = send(json!({"model": "tiny", "prompt": text, "max_tokens": 1})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    // Nothing was submitted to the engine.
    assert_eq!(
        common::metric(&server, "lhama_prompt_tokens_total").await,
        0.0
    );
    assert_eq!(common::metric(&server, "lhama_queue_depth").await, 0.0);
}

/// A model that fails to load ends `lhama serve` with a non-zero status and
/// the reason on stderr, so a supervisor (Docker, systemd, Kubernetes)
/// restarts it or reports it, instead of a server answering 503 forever.
#[tokio::test]
async fn a_model_that_fails_to_load_exits_non_zero_saying_why() {
    let model = common::synth_tiny();
    std::fs::write(model.path().join("config.json"), "{ not json").unwrap();
    let mut child = std::process::Command::new(common::lhama_bin())
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--model"])
        .arg(model.path())
        .env_remove("LHAMA_CONFIG")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server kept running with a model that cannot load");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        stderr.contains("error: the model failed to load") && stderr.contains("config.json"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_lets_running_requests_finish_and_exits_zero() {
    let mut server = common::start(&[]).await;
    let url = format!("{}/v1/chat/completions", server.base);
    let r = reqwest::Client::new()
        .post(&url)
        .json(&chat_body("Oi", json!({"max_tokens": 300, "stream": true})))
        .send()
        .await
        .unwrap();
    let mut s = r.bytes_stream();
    let mut bytes = s.next().await.unwrap().unwrap().to_vec();
    common::sigterm(&server);
    while let Some(chunk) = s.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let raw = String::from_utf8(bytes).unwrap();
    assert!(
        raw.trim_end().ends_with("data: [DONE]"),
        "the running stream finished"
    );
    assert!(raw.contains("\"finish_reason\":\"length\""));
    let status = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}
