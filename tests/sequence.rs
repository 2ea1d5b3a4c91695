#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test
//! A peer suite's provider faults run as ONE sequence, as real traffic is:
//! one pass-through route (`model = "{model}"`) in front of a fault server
//! whose every model is a scenario (the fault after the model's `+`), and a
//! healthy fallback on a second route, all through `baton serve` over
//! loopback. Each scenario alone is easy; in a sequence, a breaker or a
//! learned fact shared by every model of the route would make one
//! scenario's failures decide the next one's route. Health per (route,
//! model) keeps each scenario to itself: every one of them asks the primary
//! first, and every complete answer is the oracle's, byte for byte.

mod support;

use std::time::Duration;

use baton::oracle::fault::FaultPlan;
use baton::oracle::script::Pacing;
use baton::oracle::server::{spawn, MockConfig};
use baton::oracle::{answer, Style};
use baton::{Message, Role};
use serde_json::{json, Value};
use support::{Served, Sse};

/// The fault server (faults by model) and a healthy fallback, behind one ladder.
async fn suite() -> Served {
    let pacing = Pacing {
        first_token: Duration::from_millis(5),
        interval: Duration::from_millis(2),
    };
    let config = |plan| MockConfig {
        plan,
        style: Style::default(),
        pacing,
    };
    let (faults, stop_f) = spawn(config(FaultPlan::ByModel)).await.expect("fault server");
    let (healthy, stop_h) = spawn(config(FaultPlan::ByModel)).await.expect("fallback server");
    let toml = format!(
        r#"
        [[route]]
        name = "primary"
        provider = "openai"
        base_url = "http://{faults}/v1"
        model = "{{model}}"
        ttft_ms = 1000
        stall_ms = 1000

        [[route]]
        name = "fallback"
        provider = "openai"
        base_url = "http://{healthy}/v1"
        model = "oracle-small"

        [[ladder]]
        name = "suite"
        match = "s*"
        routes = ["primary", "fallback"]
        "#
    );
    support::serve(&toml, vec![stop_f, stop_h]).await
}

fn conversation(model: &str, words: usize) -> Vec<Message> {
    let mut text = format!("Scenario {model}: tell me about rivers.");
    for i in 0..words {
        text.push_str(&format!(" filler{i}"));
    }
    vec![Message::new(Role::User, text)]
}

/// What one streamed request got.
struct Got {
    status: u16,
    text: String,
    /// The routes handed over to, from the SSE comments.
    handovers: Vec<String>,
    body: String,
}

async fn ask(proxy: &Served, model: &str, messages: &[Message]) -> Got {
    let response = proxy
        .chat(&json!({"model": model, "stream": true, "messages": messages}))
        .await;
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    let sse = Sse::parse(&body);
    let text = if status == 200 { sse.text() } else { String::new() };
    let handovers = sse
        .comments
        .iter()
        .filter(|c| c.starts_with("baton handover"))
        .cloned()
        .collect();
    Got {
        status,
        text,
        handovers,
        body,
    }
}

/// A gauge or counter for the primary serving `model` in `/metrics`; a missing
/// line fails the test (a closed breaker must show as 0, not go unreported).
fn primary_metric(metrics: &str, name: &str, model: &str) -> f64 {
    let prefix = format!("{name}{{route=\"primary\",model=\"{model}\"}} ");
    let value = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{metrics}"));
    value.trim().parse().unwrap_or_else(|e| panic!("{value}: {e}"))
}

#[tokio::test]
async fn sixteen_faults_in_one_sequence_each_ask_the_primary_and_keep_to_their_own_model() {
    let proxy = suite().await;
    // (model, primary attempts, handed over to the fallback)
    let scenarios: [(&str, f64, bool); 12] = [
        ("s01+429:1x1", 1.0, true), // Retry-After, but another rung exists: at once
        ("s02+429x1", 1.0, true),   // no Retry-After: never asked again while a rung remains
        ("s03+503x1", 2.0, false),  // a 5xx is retried on the same route
        ("s04+resetx1", 2.0, false),
        ("s05+hang", 1.0, true), // silence: the first-token deadline
        ("s06+slow:3000", 1.0, true),
        ("s07+drop@5", 1.0, true), // cut mid-answer: continued by the fallback
        ("s08+stall@5", 1.0, true),
        ("s09+malformed@5", 1.0, true),
        ("s10+error@5", 1.0, true),
        ("s11+nodone", 1.0, false),  // a finish reason without [DONE] is a complete answer
        ("s12+ctx:8192", 1.0, true), // the stated window is learned; the fallback's is unknown: tried
    ];
    for (model, _, handed_over) in scenarios {
        let messages = conversation(model, 0);
        let got = ask(&proxy, model, &messages).await;
        assert_eq!(got.status, 200, "[{model}] {}", got.body);
        assert_eq!(
            got.text,
            answer(&messages),
            "[{model}] the oracle's answer, byte for byte"
        );
        assert_eq!(
            !got.handovers.is_empty(),
            handed_over,
            "[{model}] handovers: {:?}",
            got.handovers
        );
    }

    // A content-policy refusal is the primary's to give: it was asked, and the
    // fallback did not answer what the primary refused.
    let refused = ask(&proxy, "s13+policy", &conversation("s13+policy", 0)).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("content_policy_violation"), "{}", refused.body);

    // The learned window: a request the estimate puts past 8192 tokens skips the
    // primary for that model without a request, and the fallback answers it.
    let big = conversation("s12+ctx:8192", 9000);
    let got = ask(&proxy, "s12+ctx:8192", &big).await;
    assert_eq!((got.status, got.text == answer(&big)), (200, true), "{}", got.body);

    // Five silent answers in a row open that model's breaker, and only its own.
    for i in 0..4 {
        let messages = conversation(&format!("s05+hang again {i}"), 0);
        let got = ask(&proxy, "s05+hang", &messages).await;
        assert_eq!(got.text, answer(&messages));
    }
    let skipped = conversation("s05+hang skipped", 0);
    let got = ask(&proxy, "s05+hang", &skipped).await;
    assert_eq!(got.text, answer(&skipped), "an open breaker: straight to the fallback");

    // A healthy model after all of it is still the primary's.
    let healthy = conversation("s16", 0);
    let got = ask(&proxy, "s16", &healthy).await;
    assert_eq!(got.text, answer(&healthy));
    assert!(got.handovers.is_empty(), "{:?}", got.handovers);

    let metrics = proxy.get("/metrics").await;
    let attempts = |model: &str| primary_metric(&metrics, "baton_model_attempts_total", model);
    let breaker = |model: &str| primary_metric(&metrics, "baton_breaker_state", model);
    for (model, expected, _) in scenarios {
        let expected = if model == "s05+hang" { 5.0 } else { expected };
        assert_eq!(attempts(model), expected, "[{model}] primary attempts\n{metrics}");
    }
    assert_eq!(attempts("s13+policy"), 1.0, "the refusal came from the primary");
    assert_eq!(attempts("s16"), 1.0);
    assert_eq!(breaker("s05+hang"), 2.0, "open\n{metrics}");
    for model in ["s01+429:1x1", "s08+stall@5", "s12+ctx:8192", "s16"] {
        assert_eq!(
            breaker(model),
            0.0,
            "[{model}] closed: another model's failures are not its own"
        );
    }
    assert_eq!(
        primary_metric(&metrics, "baton_learned_context_window_tokens", "s12+ctx:8192"),
        8192.0
    );
    let fallback_attempts: Value = metrics
        .lines()
        .find_map(|l| l.strip_prefix("baton_model_attempts_total{route=\"fallback\",model=\"oracle-small\"} "))
        .map(|v| json!(v.trim().parse::<f64>().expect("a number")))
        .unwrap_or(Value::Null);
    // 9 handed-over scenarios, the big request, 4 + 1 silent ones.
    assert_eq!(fallback_attempts, json!(15.0), "{metrics}");
}
