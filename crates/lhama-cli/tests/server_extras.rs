//! Smaller routes and behaviours of the real server: prompt scoring with
//! echo + max_tokens 0, generation_config defaults, tokenize/detokenize,
//! version, metrics, CORS, and the neutral forms of unsupported features.

mod common;

use serde_json::{Value, json};

#[tokio::test]
async fn echo_with_max_tokens_zero_scores_the_prompt() {
    let server = common::start(&[]).await;
    let (status, body) = common::post(
        &server,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "Qual a capital do Brasil?", "max_tokens": 0, "echo": true, "logprobs": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["text"], "Qual a capital do Brasil?");
    assert_eq!(choice["finish_reason"], "length");
    let lp = &choice["logprobs"];
    let n = body["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(body["usage"]["completion_tokens"], 0);
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n);
    assert!(
        lp["token_logprobs"][0].is_null(),
        "the first token has no context"
    );
    for v in &lp["token_logprobs"].as_array().unwrap()[1..] {
        assert!(v.as_f64().unwrap() <= 0.0);
    }
    assert_eq!(lp["tokens"][0], "<s>");
}

#[tokio::test]
async fn generation_config_supplies_defaults_the_request_leaves_out() {
    let model = common::synth_tiny();
    std::fs::write(
        model.path().join("generation_config.json"),
        r#"{"do_sample": false, "eos_token_id": 2}"#,
    )
    .unwrap();
    let server = common::start_with(model, &[], true).await;
    let ask = |extra: Value| {
        let mut b = json!({"model": "tiny", "messages": [{"role": "user", "content": "Oi"}], "max_tokens": 12, "ignore_eos": true});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let (_, silent) = common::post(&server, "/v1/chat/completions", &ask(json!({}))).await;
    let (_, greedy) = common::post(
        &server,
        "/v1/chat/completions",
        &ask(json!({"temperature": 0})),
    )
    .await;
    let (_, hot) = common::post(
        &server,
        "/v1/chat/completions",
        &ask(json!({"temperature": 1.5, "seed": 1})),
    )
    .await;
    let text = |b: &Value| {
        b["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        text(&silent),
        text(&greedy),
        "do_sample=false makes a silent request greedy"
    );
    assert_ne!(
        text(&hot),
        text(&greedy),
        "an explicit temperature still wins"
    );
}

#[tokio::test]
async fn tokenize_detokenize_version_and_metrics() {
    let server = common::start(&[]).await;
    let (status, t) = common::post(&server, "/tokenize", &json!({"prompt": "Olá, Brasil!"})).await;
    assert_eq!(status, 200);
    let ids = t["tokens"].clone();
    assert_eq!(ids[0], 1, "BOS");
    assert_eq!(t["count"], ids.as_array().unwrap().len());
    let (_, d) = common::post(&server, "/detokenize", &json!({"tokens": ids})).await;
    assert_eq!(d["prompt"], "<s> Olá, Brasil!");
    let v: Value = reqwest::get(format!("{}/version", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));

    common::post(
        &server,
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "Oi"}], "max_tokens": 3}),
    )
    .await;
    let text = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Every series carries model_name (the canonical served name), as vLLM's do.
    for name in [
        "lhama_requests_total{model_name=\"tiny\",route=\"/v1/chat/completions\",status=\"200\"} 1",
        "lhama_request_success_total{model_name=\"tiny\",finished_reason=\"length\"} 1",
        "lhama_generation_tokens_total{model_name=\"tiny\"} 3",
        "lhama_time_to_first_token_seconds_count{model_name=\"tiny\"} 1",
        "lhama_inter_token_latency_seconds_count{model_name=\"tiny\"} 2",
        "lhama_e2e_request_latency_seconds_count{model_name=\"tiny\"} 1",
        "lhama_request_queue_time_seconds_count{model_name=\"tiny\"} 1",
        "lhama_request_generation_tokens_sum{model_name=\"tiny\"} 3.0",
        "lhama_request_prompt_tokens_count{model_name=\"tiny\"} 1",
        "lhama_queue_depth{model_name=\"tiny\"} 0",
        "lhama_preemptions_total{model_name=\"tiny\"} 0",
    ] {
        assert!(text.contains(name), "missing {name:?} in\n{text}");
    }
    // The engine's time split: forward passes against its own loop.
    for name in [
        "lhama_engine_forward_seconds_total",
        "lhama_engine_host_seconds_total",
    ] {
        let seconds = common::metric_in(&text, name);
        assert!(seconds > 0.0 && seconds < 60.0, "{name} = {seconds}");
    }
    assert!(common::metric(&server, "process_resident_memory_bytes").await > 1e6);
    assert!(common::metric(&server, "process_open_fds").await > 0.0);
    let usage = common::metric(&server, "lhama_kv_cache_usage_perc").await;
    assert!((0.0..=1.0).contains(&usage), "{usage}");
}

#[tokio::test]
async fn cors_is_off_by_default_and_configurable() {
    let preflight = |base: String| async move {
        reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                format!("{base}/v1/chat/completions"),
            )
            .header("origin", "https://chat.example.com")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap()
    };
    let plain = common::start(&[]).await;
    let r = preflight(plain.base.clone()).await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let cors = common::start(&["--cors-origins", "https://chat.example.com"]).await;
    let r = preflight(cors.base.clone()).await;
    assert_eq!(
        r.headers().get("access-control-allow-origin").unwrap(),
        "https://chat.example.com"
    );
    // The headers the OpenAI JS SDK sends are allowed; the answer is cached.
    let r = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", cors.base),
        )
        .header("origin", "https://chat.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, x-stainless-os, x-stainless-lang",
        )
        .send()
        .await
        .unwrap();
    let allowed = r
        .headers()
        .get("access-control-allow-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("x-stainless-os"), "{allowed}");
    assert_eq!(r.headers().get("access-control-max-age").unwrap(), "600");
    // Scripts may read Retry-After and the request id.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/models", cors.base))
        .header("origin", "https://chat.example.com")
        .send()
        .await
        .unwrap();
    let exposed = r
        .headers()
        .get("access-control-expose-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("retry-after") && exposed.contains("x-request-id"),
        "{exposed}"
    );
}

/// A body that says it is not JSON gets 415 in OpenAI's shape, so a
/// cross-site "simple" POST (text/plain) cannot run a generation.
#[tokio::test]
async fn non_json_content_types_get_415() {
    let server = common::start(&[]).await;
    let body = r#"{"model": "tiny", "prompt": "Oi", "max_tokens": 2}"#;
    for ct in [
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
    ] {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/completions", server.base))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 415, "{ct}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }
    assert_eq!(
        common::metric(&server, "lhama_prompt_tokens_total").await,
        0.0,
        "nothing reached the engine"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.base))
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn neutral_forms_of_unsupported_features_and_unknown_fields_pass() {
    let server = common::start(&[]).await;
    // What SDKs send by default: text output, no tools, metadata fields.
    let (status, body) = common::post(
        &server,
        "/v1/chat/completions",
        &json!({
            "model": "tiny",
            "messages": [{"role": "user", "content": "Oi"}],
            "max_tokens": 3,
            "response_format": {"type": "text"},
            "tools": [],
            "tool_choice": "none",
            "user": "u-1",
            "store": false,
            "metadata": {"k": "v"},
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);
}

/// Every response carries `x-request-id` (the client's own when it sends a
/// usable one), and every request gets one access-log line when its body
/// ends, with its status, route, tokens and finish reason.
#[tokio::test]
async fn every_request_gets_an_id_and_an_access_log_line() {
    let server = common::start(&[]).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/chat/completions", server.base))
        .header("x-request-id", "test-req-1")
        .json(
            &json!({"model": "tiny", "messages": [{"role": "user", "content": "Oi"}],
                      "max_tokens": 5, "ignore_eos": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers().get("x-request-id").unwrap(), "test-req-1");
    r.bytes().await.unwrap();
    let r = http
        .post(format!("{}/v1/completions", server.base))
        .json(&json!({"model": "tiny", "prompt": "Oi", "max_tokens": 7, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    let streamed_id = r
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(streamed_id.starts_with("req-"), "{streamed_id}");
    r.bytes().await.unwrap();
    let r = http
        .post(format!("{}/v1/completions", server.base))
        .json(&json!({"model": "tiny", "prompt": "Oi", "temperature": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let bad_id = r
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();

    // The lines, from the server's JSON log.
    let line = |id: &str| {
        let lines = server.log.lock().unwrap().clone();
        lines.iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["message"] == "request" && v["request_id"] == id).then_some(v)
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while [line("test-req-1"), line(&streamed_id), line(&bad_id)]
        .iter()
        .any(Option::is_none)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "access-log lines missing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let chat = line("test-req-1").unwrap();
    assert_eq!(
        chat["target"], "lhama::access",
        "flat fields beside the target: {chat}"
    );
    assert_eq!(chat["status"], 200, "{chat}");
    assert_eq!(chat["method"], "POST");
    assert_eq!(chat["route"], "/v1/chat/completions");
    assert_eq!(chat["completion_tokens"], 5, "{chat}");
    assert!(chat["prompt_tokens"].as_u64().unwrap() > 0, "{chat}");
    assert_eq!(chat["finish_reason"], "length");
    assert!(chat["latency_ms"].as_f64().unwrap() > 0.0);
    let streamed = line(&streamed_id).unwrap();
    assert_eq!(streamed["completion_tokens"], 7, "{streamed}");
    assert_eq!(streamed["route"], "/v1/completions");
    let bad = line(&bad_id).unwrap();
    assert_eq!(bad["status"], 400, "{bad}");
    // JSON lines are flat, and a list is a JSON list.
    let serving = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "lhama serving")
        .expect("the start-up line");
    assert_eq!(
        serving["served_as"],
        json!(["tiny", "tiny-alias"]),
        "{serving}"
    );
    assert_eq!(serving["level"], "INFO");
    assert!(serving["timestamp"].is_string());
}

/// The rendered prompt's token count, through /tokenize.
async fn tokens_of(server: &common::Server, text: &str) -> u64 {
    let (status, body) = common::post(
        server,
        "/tokenize",
        &json!({"prompt": text, "add_special_tokens": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["count"].as_u64().unwrap()
}

/// `--system-prompt merge` folds system messages into the first user turn
/// (without it the template's own 400 stands); `--chat-template FILE`
/// replaces the model's template.
#[tokio::test]
async fn system_prompt_merge_and_chat_template_override() {
    let chat = json!({"model": "tiny", "max_tokens": 1, "messages": [
        {"role": "system", "content": "Responda em português."},
        {"role": "user", "content": "Qual a capital do Brasil?"}]});
    let strict = common::start(&[]).await;
    let (status, body) = common::post(&strict, "/v1/chat/completions", &chat).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("roles must alternate")
            || body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Only user and assistant"),
        "{body}"
    );
    let merging = common::start(&["--system-prompt", "merge"]).await;
    let (status, body) = common::post(&merging, "/v1/chat/completions", &chat).await;
    assert_eq!(status, 200, "{body}");
    let want = tokens_of(
        &merging,
        "<s><instruction>Responda em português.\n\nQual a capital do Brasil?</instruction>",
    )
    .await;
    assert_eq!(body["usage"]["prompt_tokens"], want, "{body}");

    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("t.jinja");
    std::fs::write(
        &template,
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}",
    )
    .unwrap();
    let custom = common::start(&["--chat-template", template.to_str().unwrap()]).await;
    let (status, body) = common::post(&custom, "/v1/chat/completions", &chat).await;
    assert_eq!(
        status, 200,
        "the custom template takes a system role: {body}"
    );
    let want = tokens_of(
        &custom,
        "<s>[system] Responda em português.\n[user] Qual a capital do Brasil?\n",
    )
    .await;
    assert_eq!(body["usage"]["prompt_tokens"], want, "{body}");
}

/// Reads a streamed response's events: the content and the usage chunk.
async fn stream_usage(server: &common::Server, path: &str, body: &Value) -> (String, Value) {
    let events = common::post_stream(server, path, body).await;
    let mut text = String::new();
    let mut usage = Value::Null;
    for e in &events {
        if let Some(c) = e["choices"][0]["delta"]["content"].as_str() {
            text += c;
        }
        if let Some(c) = e["choices"][0]["text"].as_str() {
            text += c;
        }
        if !e["usage"].is_null() {
            usage = e["usage"].clone();
        }
    }
    (text, usage)
}

/// Prefix caching through HTTP: a repeated chat is served from the cache
/// (whole 16-token blocks, the last prompt token computed) with the same
/// answer, streamed or not; the second choice of an n = 2 completion shares
/// the first one's blocks; usage reports it in
/// prompt_tokens_details.cached_tokens and /metrics counts it. With
/// `--prefix-caching false` nothing is reused.
#[tokio::test]
async fn repeated_prompts_are_served_from_the_prefix_cache() {
    let history =
        "Olá! Quero saber mais sobre a história do Brasil, das capitais e dos rios. ".repeat(4);
    let chat = json!({"model": "tiny", "messages": [{"role": "user", "content": history}],
                      "max_tokens": 8, "temperature": 0, "ignore_eos": true});
    let server = common::start(&[]).await;
    let (status, first) = common::post(&server, "/v1/chat/completions", &chat).await;
    assert_eq!(status, 200, "{first}");
    let prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 40, "{first}");
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let reusable = (prompt - 1) / 16 * 16;
    let (_, second) = common::post(&server, "/v1/chat/completions", &chat).await;
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"], reusable,
        "{second}"
    );
    assert_eq!(
        second["choices"][0]["message"],
        first["choices"][0]["message"]
    );
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (text, usage) = stream_usage(&server, "/v1/chat/completions", &streamed).await;
    assert_eq!(text, first["choices"][0]["message"]["content"]);
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"], reusable,
        "{usage}"
    );

    // Two choices of a new prompt: the second waits for the first's blocks.
    let text = "Era uma vez um menino que morava perto do mar e gostava de barcos. ".repeat(3);
    let (_, c) = common::post(
        &server,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": text, "n": 2, "max_tokens": 4, "temperature": 0, "ignore_eos": true}),
    )
    .await;
    let per_choice = c["usage"]["prompt_tokens"].as_u64().unwrap() / 2;
    let shared = (per_choice - 1) / 16 * 16;
    assert_eq!(
        c["usage"]["prompt_tokens_details"]["cached_tokens"], shared,
        "{c}"
    );
    assert_eq!(c["choices"][0]["text"], c["choices"][1]["text"]);

    let hits = common::metric(&server, "lhama_prefix_cache_hits_total").await;
    assert_eq!(hits, (2 * reusable + shared) as f64);
    let queries = common::metric(&server, "lhama_prefix_cache_queries_total").await;
    assert_eq!(queries, (3 * prompt + 2 * per_choice) as f64);
    assert!(common::metric(&server, "lhama_prefix_cache_blocks").await >= (reusable / 16) as f64);

    let server = common::start(&["--prefix-caching", "false"]).await;
    for _ in 0..2 {
        let (_, body) = common::post(&server, "/v1/chat/completions", &chat).await;
        assert_eq!(
            body["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
            "{body}"
        );
        assert_eq!(
            body["choices"][0]["message"],
            first["choices"][0]["message"]
        );
    }
    assert_eq!(
        common::metric(&server, "lhama_prefix_cache_hits_total").await,
        0.0
    );
}

/// Requests under different API keys, or with different `cache_salt`s, never
/// share prefix-cache blocks (one client could otherwise learn from its time
/// to first token what another sent); the same key and salt do.
#[tokio::test]
async fn the_prefix_cache_is_scoped_by_api_key_and_cache_salt() {
    let server = common::start(&["--api-key", "alpha,beta"]).await;
    let history = "Uma conversa longa sobre rios, mares e cidades do Brasil. ".repeat(6);
    let ask = |key: &'static str, salt: Option<&'static str>| {
        let base = server.base.clone();
        let history = history.clone();
        async move {
            let mut body = json!({"model": "tiny", "messages": [{"role": "user", "content": history}],
                                  "max_tokens": 2, "temperature": 0});
            if let Some(s) = salt {
                body["cache_salt"] = json!(s);
            }
            let r = reqwest::Client::new()
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let v: Value = r.json().await.unwrap();
            v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap()
        }
    };
    assert_eq!(ask("alpha", None).await, 0);
    assert_eq!(ask("beta", None).await, 0, "another key");
    assert!(ask("alpha", None).await > 0, "the same key");
    assert_eq!(ask("alpha", Some("s1")).await, 0, "another salt");
    assert!(ask("alpha", Some("s1")).await > 0, "the same salt");
}
