//! The chat page's routes in-process (Router + oneshot, no socket): content
//! types, the Content-Security-Policy, what /ui/config tells the page, and
//! `chat_ui: false` removing them. The page itself is driven in a real
//! browser by tests/python/test_chat_ui.py.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use lhama_server::{AppState, ServerConfig, router};
use serde_json::Value;
use tower::ServiceExt;

fn app(chat_ui: bool, keys: &[&str], merge: bool) -> axum::Router {
    router(AppState::new(ServerConfig {
        served_model_names: vec!["tiny".into()],
        api_keys: keys.iter().map(|k| k.to_string()).collect(),
        max_body_bytes: 1 << 20,
        max_queue_requests: 8,
        max_queue_tokens: 1 << 16,
        cors_origins: Vec::new(),
        body_read_timeout: std::time::Duration::from_secs(5),
        system_prompt_merge: merge,
        chat_ui,
    }))
}

async fn get(app: &axum::Router, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let r = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = r.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn the_page_and_its_files_have_their_types_and_a_strict_policy() {
    let app = app(true, &["secret"], false);
    for (path, ty, has) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<script src=\"/ui/app.js\"",
        ),
        (
            "/ui/app.js",
            "text/javascript; charset=utf-8",
            "AbortController",
        ),
        ("/ui/app.css", "text/css; charset=utf-8", "@media"),
    ] {
        let (status, headers, body) = get(&app, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers[header::CONTENT_TYPE], ty, "{path}");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(body.contains(has), "{path}");
    }
    // The page has no inline script or style for the policy to forbid.
    let (_, _, html) = get(&app, "/").await;
    assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains("style="));
    // Open without a key (the page asks for one before calling /v1).
    let (_, _, config) = get(&app, "/ui/config").await;
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["api_key_required"], true);
    assert_eq!(config["system_prompt"], "reject");
    let (_, _, config) = get(&self::app(true, &[], true), "/ui/config").await;
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["api_key_required"], false);
    assert_eq!(config["system_prompt"], "merge");
}

#[tokio::test]
async fn chat_ui_false_removes_the_page() {
    let app = app(false, &[], false);
    for path in ["/", "/ui/app.js", "/ui/config"] {
        let (status, _, body) = get(&app, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
    }
}
