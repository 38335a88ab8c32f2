//! The real server through a real OpenAI client crate (async-openai): its
//! typed responses only deserialize if ours have OpenAI's exact shape.

mod common;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::Prompt;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessageArgs,
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions,
    CreateChatCompletionRequestArgs, FinishReason, Role, StopConfiguration,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use futures_util::StreamExt;

fn client(server: &common::Server, key: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", server.base))
            .with_api_key(key),
    )
}

fn user(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

fn api_error(e: OpenAIError) -> (u16, async_openai::error::ApiError) {
    match e {
        OpenAIError::ApiError(r) => (r.status_code.as_u16(), r.api_error),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn chat_streaming_equals_non_streaming_and_reports_usage() {
    let server = common::start(&[]).await;
    let c = client(&server, "unused");
    let req = |stream: bool| {
        let mut b = CreateChatCompletionRequestArgs::default();
        b.model("tiny")
            .messages([user("Qual a capital do Brasil?")])
            .max_completion_tokens(24u32)
            .temperature(0.0)
            .seed(1);
        if stream {
            b.stream_options(ChatCompletionStreamOptions {
                include_usage: Some(true),
                include_obfuscation: None,
            });
        }
        b.build().unwrap()
    };
    let whole = c.chat().create(req(false)).await.unwrap();
    assert_eq!(whole.object, "chat.completion");
    assert_eq!(whole.model, "tiny");
    let choice = &whole.choices[0];
    assert_eq!(choice.message.role, Role::Assistant);
    let text = choice.message.content.clone().unwrap();
    let usage = whole.usage.clone().unwrap();
    assert_eq!(
        usage.prompt_tokens, 12,
        "<s><instruction>…</instruction> of the tiny tokenizer"
    );
    assert!(usage.completion_tokens >= 1 && usage.completion_tokens <= 24);
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );

    let mut stream = c.chat().create_stream(req(true)).await.unwrap();
    let (mut streamed, mut roles, mut finish, mut stream_usage) = (String::new(), 0, None, None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.object, "chat.completion.chunk");
        if let Some(u) = chunk.usage {
            assert!(chunk.choices.is_empty(), "the usage chunk has no choices");
            stream_usage = Some(u);
        }
        for ch in chunk.choices {
            if ch.delta.role.is_some() {
                roles += 1;
            }
            streamed.push_str(ch.delta.content.as_deref().unwrap_or(""));
            finish = finish.or(ch.finish_reason);
        }
    }
    assert_eq!(roles, 1, "the first chunk carries the role");
    assert_eq!(
        streamed, text,
        "concatenated deltas equal the non-streamed text"
    );
    assert_eq!(finish, choice.finish_reason);
    assert_eq!(stream_usage, Some(usage));
}

#[tokio::test]
async fn n_seed_stop_and_logprobs() {
    let server = common::start(&[]).await;
    let c = client(&server, "unused");
    let sampled = |seed: i64| {
        CreateChatCompletionRequestArgs::default()
            .model("tiny-alias")
            .messages([user("Oi")])
            .max_completion_tokens(16u32)
            .temperature(1.0)
            .seed(seed)
            .n(3u8)
            .build()
            .unwrap()
    };
    let a = c.chat().create(sampled(7)).await.unwrap();
    let b = c.chat().create(sampled(7)).await.unwrap();
    assert_eq!(a.choices.len(), 3);
    let texts = |r: &async_openai::types::chat::CreateChatCompletionResponse| -> Vec<String> {
        r.choices
            .iter()
            .map(|ch| ch.message.content.clone().unwrap_or_default())
            .collect()
    };
    assert_eq!(texts(&a), texts(&b), "same seed, same choices");
    assert!(
        texts(&a).windows(2).any(|w| w[0] != w[1]),
        "n choices differ from each other"
    );
    assert_eq!(
        a.choices.iter().map(|ch| ch.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );

    // A stop string from the greedy text ends the answer before it.
    let greedy = |stop: Option<&str>| {
        let mut b = CreateChatCompletionRequestArgs::default();
        b.model("tiny")
            .messages([user("Oi")])
            .max_completion_tokens(30u32)
            .temperature(0.0);
        if let Some(s) = stop {
            b.stop(StopConfiguration::String(s.to_string()));
        }
        b.build().unwrap()
    };
    let full = c.chat().create(greedy(None)).await.unwrap().choices[0]
        .message
        .content
        .clone()
        .unwrap();
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = c.chat().create(greedy(Some(&stop))).await.unwrap();
    assert_eq!(cut.choices[0].finish_reason, Some(FinishReason::Stop));
    assert_eq!(
        cut.choices[0].message.content.as_deref().unwrap(),
        &full[..full.find(&stop).unwrap()]
    );

    // logprobs with 3 alternatives per token.
    let req = CreateChatCompletionRequestArgs::default()
        .model("tiny")
        .messages([user("Oi")])
        .max_completion_tokens(5u32)
        .temperature(0.0)
        .logprobs(true)
        .top_logprobs(3u8)
        .build()
        .unwrap();
    let r = c.chat().create(req).await.unwrap();
    let lps = r.choices[0].logprobs.clone().unwrap().content.unwrap();
    assert_eq!(lps.len() as u32, r.usage.unwrap().completion_tokens);
    for lp in &lps {
        assert_eq!(lp.top_logprobs.len(), 3);
        assert!(lp.logprob <= 0.0);
        // Greedy: the chosen token is the most likely one.
        assert!((lp.top_logprobs[0].logprob - lp.logprob).abs() < 1e-6);
    }
}

#[tokio::test]
async fn completions_with_prompt_lists_echo_and_streaming() {
    let server = common::start(&[]).await;
    let c = client(&server, "unused");
    let req = CreateCompletionRequestArgs::default()
        .model("tiny")
        .prompt(Prompt::StringArray(vec!["Olá".into(), "Bom dia".into()]))
        .max_tokens(6u32)
        .temperature(0.0)
        .n(2u8)
        .logprobs(2u8)
        .echo(true)
        .build()
        .unwrap();
    let r = c.completions().create(req).await.unwrap();
    assert_eq!(r.object, "text_completion");
    assert_eq!(r.choices.len(), 4, "2 prompts x n=2");
    assert!(r.choices[0].text.starts_with("Olá") && r.choices[2].text.starts_with("Bom dia"));
    let lp = r.choices[0].logprobs.clone().unwrap();
    assert_eq!(
        lp.token_logprobs[0], None,
        "the first prompt token has no logprob"
    );
    assert_eq!(lp.tokens.len(), lp.token_logprobs.len());

    let ids = CreateCompletionRequestArgs::default()
        .model("tiny")
        .prompt(Prompt::IntegerArray(vec![1, 300, 301, 302]))
        .max_tokens(10u32)
        .temperature(0.0)
        .build()
        .unwrap();
    let whole = c.completions().create(ids.clone()).await.unwrap();
    let mut streamed = String::new();
    let mut s = c.completions().create_stream(ids).await.unwrap();
    while let Some(chunk) = s.next().await {
        for ch in chunk.unwrap().choices {
            streamed.push_str(&ch.text);
        }
    }
    assert_eq!(streamed, whole.choices[0].text);
}

#[tokio::test]
async fn models_and_errors_through_the_client() {
    let server = common::start(&[]).await;
    let c = client(&server, "unused");
    let models = c.models().list().await.unwrap();
    let ids: Vec<_> = models.data.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids, vec!["tiny", "tiny-alias"]);
    assert_eq!(
        c.models().retrieve("tiny-alias").await.unwrap().id,
        "tiny-alias"
    );
    let (status, e) = api_error(c.models().retrieve("gpt-9").await.unwrap_err());
    assert_eq!((status, e.code.as_deref()), (404, Some("model_not_found")));

    let chat = |model: &str, msgs: Vec<ChatCompletionRequestMessage>, max: u32| {
        CreateChatCompletionRequestArgs::default()
            .model(model)
            .messages(msgs)
            .max_completion_tokens(max)
            .build()
            .unwrap()
    };
    let (status, e) = api_error(
        c.chat()
            .create(chat("nope", vec![user("Oi")], 4))
            .await
            .unwrap_err(),
    );
    assert_eq!((status, e.param.as_deref()), (404, Some("model")));

    let system: ChatCompletionRequestMessage = ChatCompletionRequestSystemMessageArgs::default()
        .content("Seja breve.")
        .build()
        .unwrap()
        .into();
    let (status, e) = api_error(
        c.chat()
            .create(chat("tiny", vec![system, user("Oi")], 4))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 400);
    assert_eq!(
        e.message,
        "Conversation roles must alternate user/assistant/user/assistant/..."
    );

    let (status, e) = api_error(
        c.chat()
            .create(chat("tiny", vec![user("Oi")], 600))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status, e.code.as_deref()),
        (400, Some("context_length_exceeded"))
    );
    assert!(
        e.message.contains("600") && e.message.contains("512"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn api_keys_guard_the_v1_routes() {
    let server = common::start(&["--api-key", "k1,k2"]).await;
    let req = || {
        CreateChatCompletionRequestArgs::default()
            .model("tiny")
            .messages([user("Oi")])
            .max_completion_tokens(2u32)
            .build()
            .unwrap()
    };
    let (status, e) = api_error(
        client(&server, "wrong")
            .chat()
            .create(req())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status, e.r#type.as_deref()),
        (401, Some("authentication_error"))
    );
    assert!(client(&server, "k2").chat().create(req()).await.is_ok());
    // /health stays open.
    let r = reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Raw requests: the scheme in any case, 401 before 404 on unknown /v1
    // paths, path errors in OpenAI's shape.
    let http = reqwest::Client::new();
    let get = |path: &str, auth: Option<&str>| {
        let mut r = http.get(format!("{}{path}", server.base));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    assert_eq!(get("/v1/models", Some("bearer k1")).await.0, 200);
    assert_eq!(get("/v1/models", Some("BEARER k2")).await.0, 200);
    let (status, body) = get("/v1/no-such-route", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(get("/v1/no-such-route", Some("Bearer k1")).await.0, 404);
    let (status, body) = get("/v1/models/%ff%fe", Some("Bearer k1")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
}

#[tokio::test]
async fn body_limit_and_unavailable_model_through_the_client() {
    let server = common::start(&["--max-body-bytes", "2000"]).await;
    let long = "a".repeat(5000);
    let req = CreateChatCompletionRequestArgs::default()
        .model("tiny")
        .messages([user(&long)])
        .build()
        .unwrap();
    let (status, e) = api_error(
        client(&server, "unused")
            .chat()
            .create(req)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 413);
    assert!(e.message.contains("2000"), "{}", e.message);

    // A server draining after SIGTERM (a slowed stream keeps it running)
    // answers 503, which the client reports with the server's message.
    let draining = common::start_with_env(
        common::synth_tiny(),
        &[],
        true,
        &[("LHAMA_TEST_STEP_DELAY_MS", "20")],
    )
    .await;
    let running = reqwest::Client::new()
        .post(format!("{}/v1/completions", draining.base))
        .json(&serde_json::json!({"model": "tiny", "prompt": "Oi", "max_tokens": 100, "stream": true, "ignore_eos": true}))
        .send()
        .await
        .unwrap();
    let mut running = running.bytes_stream();
    running.next().await.unwrap().unwrap();
    common::sigterm_and_wait_for_drain(&draining).await;
    let req = CreateChatCompletionRequestArgs::default()
        .model("tiny")
        .messages([user("Oi")])
        .build()
        .unwrap();
    let (status, e) = api_error(
        client(&draining, "unused")
            .chat()
            .create(req)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 503);
    assert!(e.message.contains("shutting down"), "{}", e.message);
}
