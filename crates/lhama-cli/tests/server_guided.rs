//! Structured output through the real server. The tiny model's weights are
//! random, so only the constraint can make a reply valid: every reply, over
//! many seeds and several schemas, must parse and validate against its
//! schema (checked by the `jsonschema` crate, not by llguidance). Also:
//! streaming, regex and choice through the completions extensions, a reply
//! cut by max_tokens, and the 400s.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "enums and a nested object, no extra properties",
            json!({"type": "object", "properties": {
                "cor": {"enum": ["azul", "verde", "amarelo"]},
                "endereco": {"type": "object", "properties": {
                    "cidade": {"type": "string", "maxLength": 10},
                    "cep": {"type": "string", "pattern": "^[0-9]{5}-[0-9]{3}$"}},
                    "required": ["cidade", "cep"], "additionalProperties": false}},
                "required": ["cor", "endereco"], "additionalProperties": false}),
        ),
        (
            "bounded arrays of bounded integers",
            json!({"type": "object", "properties": {
                "notas": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 10},
                          "minItems": 2, "maxItems": 4}},
                "required": ["notas"], "additionalProperties": false}),
        ),
        (
            "numbers with bounds and a boolean",
            json!({"type": "object", "properties": {
                "preco": {"type": "number", "minimum": 1.5, "maximum": 99},
                "temperatura": {"type": "integer", "exclusiveMinimum": -10, "maximum": 45},
                "disponivel": {"type": "boolean"}},
                "required": ["preco", "temperatura", "disponivel"], "additionalProperties": false}),
        ),
        (
            "anyOf with null, string patterns",
            json!({"type": "object", "properties": {
                "apelido": {"anyOf": [{"type": "string", "pattern": "^[a-z]{2,6}$"}, {"type": "null"}]},
                "codigo": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"}},
                "required": ["apelido", "codigo"], "additionalProperties": false}),
        ),
        (
            "an array at the top",
            json!({"type": "array", "items": {"enum": ["sim", "não", 1, null]}, "minItems": 1, "maxItems": 5}),
        ),
    ]
}

fn content(body: &Value) -> Vec<(String, String)> {
    body["choices"]
        .as_array()
        .unwrap_or_else(|| panic!("no choices: {body}"))
        .iter()
        .map(|c| {
            let text = c["message"]["content"]
                .as_str()
                .or(c["text"].as_str())
                .unwrap_or_else(|| panic!("no text: {c}"));
            (
                text.to_string(),
                c["finish_reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn assert_valid(what: &str, schema: &Value, text: &str) {
    let value: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text:?}"));
    let validator = jsonschema::validator_for(schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: {text} violates the schema: {errors:?}"
    );
}

/// Every schema, 24 draws each (3 seeds × n = 8: masks on several threads
/// where the machine has the cores), through response_format
/// json_schema on chat and guided_json on completions.
#[tokio::test]
async fn every_reply_parses_and_validates_under_its_schema() {
    let server = common::start(&[]).await;
    for (what, schema) in schemas() {
        for seed in 0..3 {
            let (status, body) = common::post(
                &server,
                "/v1/chat/completions",
                &json!({"model": "tiny", "messages": [{"role": "user", "content": "Responda em JSON."}],
                        "n": 8, "seed": seed, "temperature": 1.0, "max_tokens": 300,
                        "response_format": {"type": "json_schema",
                                            "json_schema": {"name": "resposta", "schema": schema, "strict": true}}}),
            )
            .await;
            assert_eq!(status, 200, "{what}: {body}");
            for (text, finish) in content(&body) {
                assert_eq!(finish, "stop", "{what}: {text:?}");
                assert_valid(what, &schema, &text);
            }
        }
        let (status, body) = common::post(
            &server,
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "JSON:", "n": 2, "seed": 9, "temperature": 0.7,
                    "max_tokens": 300, "guided_json": schema}),
        )
        .await;
        assert_eq!(status, 200, "{what}: {body}");
        for (text, finish) in content(&body) {
            assert_eq!(finish, "stop", "{what}: {text:?}");
            assert_valid(what, &schema, &text);
        }
    }
}

/// json_object gives an object; a stream's text is the same JSON; greedy
/// replies with logprobs report the masked distribution (the chosen token
/// always among the allowed, the top alternatives all allowed too).
#[tokio::test]
async fn json_object_streams_and_logprobs_follow_the_mask() {
    let server = common::start(&[]).await;
    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "Oi"}], "temperature": 0,
                     "max_tokens": 200, "response_format": {"type": "json_object"},
                     "logprobs": true, "top_logprobs": 5});
    let (status, whole) = common::post(&server, "/v1/chat/completions", &req).await;
    assert_eq!(status, 200, "{whole}");
    let (text, finish) = content(&whole).remove(0);
    if finish == "stop" {
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(v.is_object(), "{text}");
    } else {
        assert!(text.starts_with('{'), "{text}");
    }
    // The first token can only be "{": every other token is masked to -inf,
    // so it has all the probability and no alternative is listed.
    let first = &whole["choices"][0]["logprobs"]["content"][0];
    assert_eq!(first["token"], "{", "{first}");
    assert_eq!(first["logprob"], 0.0, "{first}");
    assert_eq!(
        first["top_logprobs"].as_array().unwrap().len(),
        1,
        "only allowed tokens are listed: {first}"
    );
    // Every listed alternative of every token is a number (no masked −∞ as null).
    for token in whole["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
    {
        for alt in token["top_logprobs"].as_array().unwrap() {
            assert!(alt["logprob"].as_f64().is_some(), "{token}");
        }
    }
    let mut streamed = req.clone();
    streamed["stream"] = json!(true);
    let events = common::post_stream(&server, "/v1/chat/completions", &streamed).await;
    let joined: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, text);
}

/// vLLM's regex and choice extensions on completions; max_tokens cutting a
/// reply short gives finish_reason "length".
#[tokio::test]
async fn regex_choice_and_length() {
    let server = common::start(&[]).await;
    for seed in 0..6 {
        let (status, body) = common::post(
            &server,
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "Código:", "seed": seed, "temperature": 1.0,
                    "max_tokens": 40, "guided_regex": "[0-9]{3}-[a-z]{2,4}"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (text, finish) = content(&body).remove(0);
        assert_eq!(finish, "stop", "{text:?}");
        assert!(is_code(&text), "{text:?} does not match");
        // With logprobs the row comes back and is masked and drawn on the
        // host; without, the backend masks and draws it: the same text.
        let (status, body) = common::post(
            &server,
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "Código:", "seed": seed, "temperature": 1.0,
                    "max_tokens": 40, "guided_regex": "[0-9]{3}-[a-z]{2,4}", "logprobs": 1}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            content(&body).remove(0).0,
            text,
            "host and backend masking differ"
        );
        let choices = ["sim", "não", "talvez não"];
        let (status, body) = common::post(
            &server,
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": [{"role": "user", "content": "E então?"}],
                    "seed": seed, "temperature": 1.0, "max_tokens": 40, "guided_choice": choices}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (text, finish) = content(&body).remove(0);
        assert_eq!(finish, "stop");
        assert!(choices.contains(&text.as_str()), "{text:?}");
    }
    // min_tokens bans the end the finished grammar allows: the grammar wins.
    let (status, body) = common::post(
        &server,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "x", "max_tokens": 10, "min_tokens": 6, "guided_choice": ["sim"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        content(&body).remove(0),
        ("sim".to_string(), "stop".to_string())
    );
    let (_, body) = common::post(
        &server,
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "Oi"}], "max_tokens": 3,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schemas()[0].1}}}),
    )
    .await;
    let (text, finish) = content(&body).remove(0);
    assert_eq!(finish, "length", "{body}");
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "cut short: {text:?}"
    );
}

/// Whether `s` matches `[0-9]{3}-[a-z]{2,4}`: digits, a dash, 2 to 4
/// lowercase letters.
fn is_code(s: &str) -> bool {
    let b = s.as_bytes();
    (6..=8).contains(&b.len())
        && b[..3].iter().all(u8::is_ascii_digit)
        && b[3] == b'-'
        && b[4..].iter().all(u8::is_ascii_lowercase)
}

/// Constraints that cannot be compiled, or conflict, get a 400 naming the
/// parameter; a hostile grammar fails within its limits while the server
/// keeps answering others.
#[tokio::test]
async fn bad_and_hostile_constraints_get_400s() {
    let server = common::start(&[]).await;
    let chat = |extra: Value| {
        let mut b = json!({"model": "tiny", "messages": [{"role": "user", "content": "Oi"}], "max_tokens": 5});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (extra, param, says) in [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}}),
            "response_format",
            "strin",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format.json_schema.schema",
            "json_schema.schema",
        ),
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format",
            "\"text\"",
        ),
        (
            json!({"guided_regex": "(unclosed"}),
            "guided_regex",
            "cannot be used",
        ),
        (
            json!({"guided_choice": []}),
            "guided_choice",
            "at least one",
        ),
        (
            json!({"guided_json": "{not json"}),
            "guided_json",
            "not valid JSON",
        ),
        (
            json!({"guided_grammar": "start: missing_rule"}),
            "guided_grammar",
            "cannot be used",
        ),
        (
            json!({"guided_regex": "a", "guided_choice": ["b"]}),
            "guided_choice",
            "only one",
        ),
        (
            json!({"guided_regex": "a", "response_format": {"type": "json_object"}}),
            "guided_regex",
            "together",
        ),
    ] {
        let (status, body) =
            common::post(&server, "/v1/chat/completions", &chat(extra.clone())).await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(body["error"]["param"], param, "{extra}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{extra}: {message}");
    }
    // A request refused anyway is refused before its grammar is compiled.
    let (status, body) = common::post(
        &server,
        "/v1/chat/completions",
        &chat(json!({"max_tokens": 100_000, "guided_json": {"type": "strin"}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    // A schema past llguidance's grammar-size limit (20,000 properties of
    // two alternatives each): refused in bounded time, while /health answers.
    let properties: serde_json::Map<String, Value> = (0..20_000)
        .map(|i| {
            (format!("k{i}"), json!({"anyOf": [{"type": "string", "pattern": format!("^[a-z]{{1,{}}}$", i % 50 + 1)},
                                               {"type": "array", "items": {"type": "integer"}}]}))
        })
        .collect();
    let started = Instant::now();
    let hostile = tokio::spawn({
        let base = server.base.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{base}/v1/completions"))
                .json(&json!({"model": "tiny", "prompt": "x", "max_tokens": 5,
                              "guided_json": {"type": "object", "properties": properties}}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    });
    let r = reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (status, body) = hostile.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "guided_json", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too large"),
        "{body}"
    );
}
