//! Content arrays through `baton serve`: an OpenAI upstream receives the
//! caller's parts as sent (also when a fallback continues), an Anthropic one
//! gets them translated, and a part Anthropic cannot take is a 400 naming it
//! before any upstream is asked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use serde_json::{json, Value};
use support::{finish, scripted, text, End, Reply, Serve};

/// Text parts with fields of their own, an inline image, a URL image and audio.
fn parts() -> Value {
    json!([
        {"type": "text", "text": "Hello", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "world"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==", "detail": "high"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}},
    ])
}

fn route(name: &str, provider: &str, url: &str) -> String {
    format!("[[route]]\nname = \"{name}\"\nprovider = \"{provider}\"\nbase_url = \"{url}\"\nmodel = \"{name}\"\n")
}

fn ladder(name: &str, routes: &[&str]) -> String {
    format!("[[ladder]]\nname = \"{name}\"\nroutes = {routes:?}\n")
}

#[tokio::test]
async fn an_openai_upstream_gets_the_callers_parts_as_sent_before_and_after_a_handover() {
    let primary = scripted(vec![Reply {
        data: vec![text("p", "It shows ")],
        end: End::Cut,
    }])
    .await;
    let fallback = scripted(vec![Reply {
        data: vec![text("f", "a cat."), finish("f", "stop")],
        end: End::Done,
    }])
    .await;
    let toml = format!(
        "{}{}{}",
        route("p", "openai", &primary.base_url()),
        route("f", "openai", &fallback.base_url()),
        ladder("vision", &["p", "f"])
    );
    let proxy = Serve::new(&toml).start().await;
    let messages = json!([
        {"role": "system", "content": "Describe images."},
        {"role": "user", "content": parts(), "name": "ann"},
    ]);
    let response = proxy.chat(&json!({"model": "vision", "messages": messages})).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["choices"][0]["message"]["content"], "It shows a cat.");

    let sent = primary.bodies();
    assert_eq!(
        sent[0]["messages"], messages,
        "the primary got the conversation as sent"
    );
    let continued = fallback.bodies();
    let Some(continued) = continued[0]["messages"].as_array() else {
        panic!("messages: {continued:?}")
    };
    assert_eq!(
        continued[..2],
        messages.as_array().expect("array")[..],
        "the fallback too"
    );
    assert_eq!(continued[2], json!({"role": "assistant", "content": "It shows "}));
}

/// An Anthropic upstream's answer: `text`, then the end.
fn claude_says(text: &str) -> Reply {
    let event = |kind: &str, mut body: Value| {
        body["type"] = json!(kind);
        body.to_string()
    };
    Reply {
        data: vec![
            event(
                "message_start",
                json!({"message": {"usage": {"input_tokens": 9, "output_tokens": 1}}}),
            ),
            event(
                "content_block_delta",
                json!({"index": 0, "delta": {"type": "text_delta", "text": text}}),
            ),
            event("message_delta", json!({"delta": {"stop_reason": "end_turn"}})),
            event("message_stop", json!({})),
        ],
        end: End::Done,
    }
}

#[tokio::test]
async fn an_anthropic_upstream_gets_text_blocks_and_base64_and_url_image_sources() {
    let claude = scripted(vec![claude_says("Two cats.")]).await;
    let toml = format!(
        "{}{}",
        route("claude", "anthropic", &claude.base_url()),
        ladder("vision", &["claude"])
    );
    let proxy = Serve::new(&toml).start().await;
    let content = json!([
        {"type": "text", "text": "Hello"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg==", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": "world"},
    ]);
    let request = json!({"model": "vision", "messages": [{"role": "user", "content": content}]});
    let response = proxy.chat(&request).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["choices"][0]["message"]["content"], "Two cats.");
    assert_eq!(
        claude.bodies()[0]["messages"][0]["content"],
        json!([
            {"type": "text", "text": "Hello"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
            {"type": "text", "text": "world"},
        ])
    );
}

#[tokio::test]
async fn a_part_a_ladders_anthropic_route_cannot_take_is_a_400_naming_it_and_no_upstream_is_asked() {
    let gpt = scripted(vec![Reply {
        data: vec![text("gpt", "Heard it."), finish("gpt", "stop")],
        end: End::Done,
    }])
    .await;
    let claude = scripted(vec![claude_says("unused")]).await;
    let toml = format!(
        "{}{}{}{}",
        route("gpt", "openai", &gpt.base_url()),
        route("claude", "anthropic", &claude.base_url()),
        ladder("claude-only", &["claude"]),
        // Claude may have to continue GPT's answer, so it must be able to read the question too.
        ladder("gpt-then-claude", &["gpt", "claude"])
    );
    let proxy = Serve::new(&toml).start().await;
    for model in ["claude-only", "gpt-then-claude"] {
        for stream in [false, true] {
            let request = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": parts()}]});
            let response = proxy.chat(&request).await;
            assert_eq!(response.status(), 400, "{model}");
            let error: Value = response.json().await.expect("json");
            assert_eq!(error["error"]["code"], "unsupported_content", "{error}");
            let message = error["error"]["message"].as_str().unwrap_or("");
            assert!(
                message.contains("`input_audio`")
                    && message.contains("messages[0].content[3]")
                    && message.contains("claude"),
                "{message}"
            );
        }
    }
    assert!(
        gpt.bodies().is_empty() && claude.bodies().is_empty(),
        "nothing was sent upstream"
    );
}
