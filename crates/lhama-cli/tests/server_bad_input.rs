//! Malformed and hostile requests: each gets the right 4xx with an
//! OpenAI-shaped body, and the server keeps serving afterwards.

mod common;

use serde_json::{Value, json};

enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: Body,
    status: u16,
    /// Expected `error.param`, when the error is about one parameter.
    param: Option<&'static str>,
}

fn chat(extra: Value) -> Body {
    let mut b =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "Oi"}], "max_tokens": 4});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    Body::Json(b)
}

fn completion(extra: Value) -> Body {
    let mut b = json!({"model": "tiny", "prompt": "Olá", "max_tokens": 4});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    Body::Json(b)
}

fn cases() -> Vec<Case> {
    let c = |name, body, status, param| Case {
        name,
        method: "POST",
        path: "/v1/chat/completions",
        body,
        status,
        param,
    };
    let p = |name, body, status, param| Case {
        name,
        method: "POST",
        path: "/v1/completions",
        body,
        status,
        param,
    };
    let raw = |s: &str| Body::Raw(s.as_bytes().to_vec());
    let nested = format!(
        "{{\"model\":\"tiny\",\"messages\":{}{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let huge = "a ".repeat(5 << 20); // 10 MB
    let many_stops: Vec<String> = (0..5000).map(|i| format!("s{i}")).collect();
    vec![
        c("truncated JSON", raw("{\"model\": \"tiny\","), 400, None),
        c("empty body", raw(""), 400, None),
        c("JSON array body", raw("[1, 2]"), 400, None),
        c(
            "invalid UTF-8",
            Body::Raw(vec![b'{', 0xff, 0xfe, b'}']),
            400,
            None,
        ),
        c(
            "NaN literal",
            raw("{\"model\":\"tiny\",\"messages\":[],\"temperature\":NaN}"),
            400,
            None,
        ),
        c(
            "number out of range",
            raw(
                "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":1e999}",
            ),
            400,
            None,
        ),
        c("deeply nested JSON", raw(&nested), 400, None),
        c(
            "missing messages",
            Body::Json(json!({"model": "tiny"})),
            400,
            None,
        ),
        c(
            "messages not a list",
            Body::Json(json!({"model": "tiny", "messages": "Oi"})),
            400,
            Some("messages"),
        ),
        c(
            "empty messages",
            chat(json!({"messages": []})),
            400,
            Some("messages"),
        ),
        c(
            "response_format json_schema without a schema",
            chat(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}})),
            400,
            Some("response_format.json_schema.schema"),
        ),
        c(
            "response_format json_schema that cannot compile",
            chat(
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}}),
            ),
            400,
            Some("response_format"),
        ),
        c(
            "guided_regex that cannot compile",
            chat(json!({"guided_regex": "[unclosed"})),
            400,
            Some("guided_regex"),
        ),
        c(
            "response_format without a type",
            chat(json!({"response_format": {}})),
            400,
            Some("response_format"),
        ),
        c(
            "tools (no function calling)",
            chat(
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
            ),
            400,
            Some("tools"),
        ),
        c(
            "tool_choice required",
            chat(json!({"tool_choice": "required"})),
            400,
            Some("tool_choice"),
        ),
        c(
            "legacy functions",
            chat(json!({"functions": [{"name": "f", "parameters": {}}]})),
            400,
            Some("functions"),
        ),
        c(
            "unknown role",
            chat(json!({"messages": [{"role": "wizard", "content": "x"}]})),
            400,
            Some("messages[0].role"),
        ),
        c(
            "content of wrong type",
            chat(json!({"messages": [{"role": "user", "content": 42}]})),
            400,
            Some("messages[0].content"),
        ),
        c(
            "image content part",
            chat(
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            ),
            400,
            Some("messages[0].content"),
        ),
        c(
            "system role (template raises)",
            chat(
                json!({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]}),
            ),
            400,
            Some("messages"),
        ),
        c(
            "unknown model",
            chat(json!({"model": "gpt-4o"})),
            404,
            Some("model"),
        ),
        c(
            "temperature as string",
            chat(json!({"temperature": "hot"})),
            400,
            Some("temperature"),
        ),
        c(
            "negative temperature",
            chat(json!({"temperature": -0.5})),
            400,
            Some("temperature"),
        ),
        c(
            "temperature above 2",
            chat(json!({"temperature": 7})),
            400,
            Some("temperature"),
        ),
        c("top_p zero", chat(json!({"top_p": 0})), 400, Some("top_p")),
        c(
            "top_p above 1",
            chat(json!({"top_p": 1.5})),
            400,
            Some("top_p"),
        ),
        c(
            "top_k negative",
            chat(json!({"top_k": -7})),
            400,
            Some("top_k"),
        ),
        c("n zero", chat(json!({"n": 0})), 400, Some("n")),
        c("n huge", chat(json!({"n": 100000})), 400, Some("n")),
        c(
            "negative max_tokens",
            chat(json!({"max_tokens": -5})),
            400,
            Some("max_tokens"),
        ),
        c(
            "fractional max_tokens",
            chat(json!({"max_tokens": 1.5})),
            400,
            Some("max_tokens"),
        ),
        c(
            "max_tokens over the context",
            chat(json!({"max_tokens": 1_000_000_000_000i64})),
            400,
            Some("messages"),
        ),
        c(
            "min_tokens over max_tokens",
            chat(json!({"min_tokens": 10})),
            400,
            Some("min_tokens"),
        ),
        c(
            "top_logprobs too many",
            chat(json!({"logprobs": true, "top_logprobs": 50})),
            400,
            Some("top_logprobs"),
        ),
        c(
            "top_logprobs without logprobs",
            chat(json!({"top_logprobs": 2})),
            400,
            Some("top_logprobs"),
        ),
        c(
            "logit_bias key not an id",
            chat(json!({"logit_bias": {"abc": 1}})),
            400,
            Some("logit_bias"),
        ),
        c(
            "logit_bias outside the vocabulary",
            chat(json!({"logit_bias": {"99999": 1}})),
            400,
            Some("logit_bias"),
        ),
        c(
            "logit_bias value too large",
            chat(json!({"logit_bias": {"5": 1000}})),
            400,
            Some("logit_bias"),
        ),
        c(
            "thousands of stop strings",
            chat(json!({"stop": many_stops})),
            400,
            Some("stop"),
        ),
        c(
            "empty stop string",
            chat(json!({"stop": [""]})),
            400,
            Some("stop"),
        ),
        c(
            "negative stop token id",
            chat(json!({"stop_token_ids": [-1]})),
            400,
            Some("stop_token_ids"),
        ),
        c(
            "presence_penalty out of range",
            chat(json!({"presence_penalty": 5})),
            400,
            Some("presence_penalty"),
        ),
        c(
            "frequency_penalty as string",
            chat(json!({"frequency_penalty": "x"})),
            400,
            Some("frequency_penalty"),
        ),
        c(
            "seed as string",
            chat(json!({"seed": "abc"})),
            400,
            Some("seed"),
        ),
        c(
            "stream as string",
            chat(json!({"stream": "yes"})),
            400,
            Some("stream"),
        ),
        c(
            "10 MB prompt",
            chat(json!({"messages": [{"role": "user", "content": huge}]})),
            413,
            None,
        ),
        p(
            "empty prompt list",
            completion(json!({"prompt": []})),
            400,
            Some("prompt"),
        ),
        p(
            "prompt id outside the vocabulary",
            completion(json!({"prompt": [1, 99999]})),
            400,
            Some("prompt"),
        ),
        p(
            "negative prompt id",
            completion(json!({"prompt": [[1, -3]]})),
            400,
            Some("prompt"),
        ),
        p(
            "prompt of wrong type",
            completion(json!({"prompt": {"text": "x"}})),
            400,
            Some("prompt"),
        ),
        p(
            "suffix",
            completion(json!({"suffix": "fim"})),
            400,
            Some("suffix"),
        ),
        p(
            "logprobs too many",
            completion(json!({"logprobs": 30})),
            400,
            Some("logprobs"),
        ),
        p(
            "best_of above n",
            completion(json!({"best_of": 3})),
            400,
            Some("best_of"),
        ),
        p(
            "echo as string",
            completion(json!({"echo": "yes"})),
            400,
            Some("echo"),
        ),
        Case {
            name: "GET on a POST route",
            method: "GET",
            path: "/v1/chat/completions",
            body: raw(""),
            status: 405,
            param: None,
        },
        Case {
            name: "unknown route",
            method: "POST",
            path: "/v1/embeddings",
            body: raw("{}"),
            status: 404,
            param: None,
        },
        Case {
            name: "tokenize a number",
            method: "POST",
            path: "/tokenize",
            body: Body::Json(json!({"prompt": 5})),
            status: 400,
            param: Some("prompt"),
        },
        Case {
            name: "detokenize a negative id",
            method: "POST",
            path: "/detokenize",
            body: Body::Json(json!({"tokens": [-1]})),
            status: 400,
            param: Some("tokens"),
        },
    ]
}

#[tokio::test]
async fn every_bad_request_gets_an_openai_error_and_the_server_keeps_serving() {
    let server = common::start(&["--max-body-bytes", "1048576"]).await;
    let http = reqwest::Client::new();
    let cases = cases();
    assert!(cases.len() >= 30);
    for case in cases {
        let url = format!("{}{}", server.base, case.path);
        let req = match case.method {
            "GET" => http.get(&url),
            _ => http.post(&url),
        };
        let req = match case.body {
            Body::Json(v) => req.json(&v),
            Body::Raw(b) => req.header("content-type", "application/json").body(b),
        };
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let status = r.status().as_u16();
        let body: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: body is not JSON: {e}", case.name));
        assert_eq!(status, case.status, "{}: {body}", case.name);
        let err = &body["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}: {body}",
            case.name
        );
        assert!(err["type"].is_string(), "{}: {body}", case.name);
        assert!(
            err.get("param").is_some() && err.get("code").is_some(),
            "{}: {body}",
            case.name
        );
        if let Some(param) = case.param {
            assert_eq!(err["param"], param, "{}: {body}", case.name);
        }
    }
    // Still serving.
    let (status, body) = common::post(
        &server,
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "Oi"}], "max_tokens": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 3);
}
