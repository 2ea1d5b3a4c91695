//! Two `baton serve` instances sharing one real `redis-server` (started here
//! on a free loopback port from `BATON_REDIS_SERVER`; `.ci/run` installs it):
//! breakers, learned facts and the cache cross from one to the other, and a
//! Redis that dies leaves both answering and re-syncing once it is back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton::oracle::answer;
use baton::{Message, Role};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `redis-server` of our own on 127.0.0.1, killed when dropped.
struct Redis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl Redis {
    async fn start() -> Redis {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("addr").port()
        };
        let mut redis = Redis { port, child: None };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// (Re)starts it on its port, empty, and waits until it answers.
    async fn restart(&mut self) {
        let server = std::env::var_os("BATON_REDIS_SERVER")
            .expect("set BATON_REDIS_SERVER to a redis-server binary (bash .ci/run installs Debian's and sets it)");
        let child = tokio::process::Command::new(server)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..200 {
            if self.command("PING").await.is_some_and(|r| r.starts_with("+PONG")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }

    /// One command, its arguments split at spaces (sent as RESP, so quotes and
    /// braces are bytes like any other); its first reply.
    async fn command(&self, line: &str) -> Option<String> {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
        let args: Vec<&str> = line.split(' ').collect();
        let mut resp = format!("*{}\r\n", args.len());
        for arg in args {
            resp.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        socket.write_all(resp.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).to_string())
    }
}

/// An upstream that answers 503 while `down`, else one short streamed answer; `hits` counts its requests.
async fn switchable(model: &'static str) -> (String, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let down = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicUsize::new(0));
    let (d, h) = (down.clone(), hits.clone());
    let url = support::raw_upstream(move |mut socket, _head, _body| {
        let down = d.load(Ordering::SeqCst);
        h.fetch_add(1, Ordering::SeqCst);
        async move {
            let reply = if down {
                let body = r#"{"error":{"message":"overloaded","type":"server_error"}}"#;
                format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                let mut sse = String::new();
                for data in [support::text(model, "primary is back"), support::finish(model, "stop")] {
                    sse.push_str(&format!("data: {data}\n\n"));
                }
                sse.push_str("data: [DONE]\n\n");
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{sse}",
                    sse.len()
                )
            };
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    })
    .await;
    (url, down, hits)
}

fn state(redis: &Redis) -> String {
    format!(
        "[state]\nredis_url = \"{}\"\nkey_prefix = \"baton-test:\"\n",
        redis.url()
    )
}

/// Polls `instance`'s /metrics until `line` is in it (generous: a loaded machine is slow).
async fn until_metric(instance: &support::Served, line: &str) -> String {
    let mut metrics = String::new();
    for _ in 0..300 {
        metrics = instance.get("/metrics").await;
        if metrics.lines().any(|l| l == line) {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never saw {line:?} in:\n{metrics}");
}

/// Two instances of `toml` (the first keeping `upstreams` alive), once both are connected to Redis.
async fn pair(toml: &str, upstreams: Vec<tokio::sync::oneshot::Sender<()>>) -> (support::Served, support::Served) {
    let a = support::Serve::new(toml).upstreams(upstreams).start().await;
    let b = support::Serve::new(toml).start().await;
    for instance in [&a, &b] {
        until_metric(instance, "baton_state_connected 1").await;
    }
    (a, b)
}

/// The oracle's answer to a conversation of one user message, `content`.
fn oracle_answer(content: &str) -> String {
    answer(&[Message::new(Role::User, content)])
}

/// A whole chat answer (`stream: false`) to `content` from ladder `model`.
async fn ask(instance: &support::Served, model: &str, content: &str) -> Value {
    let response = instance
        .chat(&json!({"model": model, "messages": [{"role": "user", "content": content}]}))
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.expect("json")
}

fn text_of(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().expect("text")
}

fn chain(v: &Value) -> Vec<String> {
    serde_json::from_value(v["baton"]["route_chain"].clone()).expect("a route chain")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server in BATON_REDIS_SERVER; .ci/run runs it"]
async fn failures_on_one_instance_open_the_breaker_on_the_other_and_a_probe_there_closes_it_here() {
    let redis = Redis::start().await;
    let (primary, down, hits) = switchable("big").await;
    let (fallback, stop) = support::oracle("none", 0).await;
    let toml = format!(
        "{}[[route]]\nname = \"primary\"\nprovider = \"openai\"\nbase_url = \"{primary}\"\nmodel = \"big\"\n\
         breaker_consecutive_failures = 2\nbreaker_cooldown_ms = 2000\nbreaker_max_cooldown_ms = 2000\n\
         [[route]]\nname = \"fallback\"\nprovider = \"openai\"\nbase_url = \"{fallback}\"\nmodel = \"small\"\ncontinuation = \"instruct\"\n\
         [[ladder]]\nname = \"chat\"\nroutes = [\"primary\", \"fallback\"]\nmax_retries = 0\n",
        state(&redis)
    );
    let (a, b) = pair(&toml, vec![stop]).await;
    for instance in [&a, &b] {
        until_metric(instance, "baton_state_shared 1").await;
    }
    let open = "baton_breaker_state{route=\"primary\",model=\"big\"} 2";
    let closed = "baton_breaker_state{route=\"primary\",model=\"big\"} 0";
    until_metric(&b, closed).await;

    // Two failures on A open its breaker; B hears of it with no traffic of its own.
    for i in 0..2 {
        let v = ask(&a, "chat", &format!("fleet {i}")).await;
        assert_eq!(chain(&v), ["fallback"], "{v}");
    }
    until_metric(&a, open).await;
    let on_b = until_metric(&b, open).await;
    assert!(
        on_b.lines()
            .any(|l| l.starts_with("baton_model_attempts_total{route=\"primary\",model=\"big\"} 0")),
        "B sent nothing to the primary:\n{on_b}"
    );
    let seen = hits.load(Ordering::SeqCst);
    // While B holds it open (its opener's cool-down, 2 s, and half as long again), B's sessions skip the primary too.
    let v = ask(&b, "chat", "skipped on B").await;
    assert_eq!(chain(&v), ["fallback"], "{v}");
    assert_eq!(hits.load(Ordering::SeqCst), seen, "B skipped the open primary");

    // The primary recovers; once B's cool-down is over, B's request is the probe, and it closes A's breaker.
    down.store(false, Ordering::SeqCst);
    let mut probed = false;
    for _ in 0..400 {
        let v = ask(&b, "chat", "probe from B").await;
        if chain(&v) == ["primary"] {
            assert_eq!(text_of(&v), "primary is back");
            probed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(probed, "B's probe of the primary never went through");
    until_metric(&b, closed).await;
    until_metric(&a, closed).await;
    // And A sends to the primary again without a probe of its own.
    let v = ask(&a, "chat", "after B's probe").await;
    assert_eq!(chain(&v), ["primary"], "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server in BATON_REDIS_SERVER; .ci/run runs it"]
async fn a_prefill_rejection_learned_on_one_instance_and_a_cached_answer_serve_the_other() {
    let redis = Redis::start().await;
    let (primary, s1) = support::oracle("drop@15", 0).await;
    let (fallback, s2) = support::oracle("noprefill", 0).await;
    let toml = format!(
        "{}[[route]]\nname = \"primary\"\nprovider = \"openai\"\nbase_url = \"{primary}\"\nmodel = \"big\"\n\
         [[route]]\nname = \"fallback\"\nprovider = \"openai\"\nbase_url = \"{fallback}\"\nmodel = \"small\"\ncontinuation = \"prefill\"\n\
         [[ladder]]\nname = \"chat\"\nroutes = [\"primary\", \"fallback\"]\nmax_retries = 0\n\
         [[ladder]]\nname = \"cached\"\nroutes = [\"fallback\"]\nmax_retries = 0\ncache = \"first\"\n",
        state(&redis)
    );
    let (a, b) = pair(&toml, vec![s1, s2]).await;

    // A learns that the fallback rejects prefill: the drop, the rejection, then the answer by instruction.
    let v = ask(&a, "chat", "learn on A").await;
    assert_eq!(text_of(&v), oracle_answer("learn on A"), "{v}");
    assert_eq!(v["baton"]["failures"], 2, "{v}");
    until_metric(&b, "baton_rejects_prefill{route=\"fallback\",model=\"small\"} 1").await;
    // B continues by instruction at once: only the drop fails.
    let v = ask(&b, "chat", "use on B").await;
    assert_eq!(text_of(&v), oracle_answer("use on B"), "{v}");
    assert_eq!(v["baton"]["failures"], 1, "B used what A learned: {v}");

    // An answer A's cache stored answers on B.
    until_metric(&b, "baton_cache_entries{ladder=\"cached\"} 0").await;
    let v = ask(&a, "cached", "cache me").await;
    assert_eq!(chain(&v), ["fallback"], "{v}");
    until_metric(&b, "baton_cache_entries{ladder=\"cached\"} 1").await;
    let v = ask(&b, "cached", "cache me").await;
    assert_eq!(chain(&v), ["cache"], "{v}");
    assert_eq!(text_of(&v), oracle_answer("cache me"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server in BATON_REDIS_SERVER; .ci/run runs it"]
async fn with_redis_gone_both_answer_byte_for_byte_and_they_resync_when_it_is_back() {
    let mut redis = Redis::start().await;
    let (cut, s1) = support::oracle("drop@15", 0).await;
    let (fallback, s2) = support::oracle("none", 2).await;
    let (primary, down, _hits) = switchable("big").await;
    let toml = format!(
        "{}[[route]]\nname = \"cut\"\nprovider = \"openai\"\nbase_url = \"{cut}\"\nmodel = \"big\"\n\
         [[route]]\nname = \"fallback\"\nprovider = \"openai\"\nbase_url = \"{fallback}\"\nmodel = \"small\"\ncontinuation = \"instruct\"\n\
         [[route]]\nname = \"primary\"\nprovider = \"openai\"\nbase_url = \"{primary}\"\nmodel = \"big\"\n\
         breaker_consecutive_failures = 1\nbreaker_cooldown_ms = 60000\nbreaker_max_cooldown_ms = 60000\n\
         [[ladder]]\nname = \"chat\"\nroutes = [\"cut\", \"fallback\"]\nmax_retries = 0\n\
         [[ladder]]\nname = \"flaky\"\nroutes = [\"primary\", \"fallback\"]\nmax_retries = 0\n",
        state(&redis)
    );
    let (a, b) = pair(&toml, vec![s1, s2]).await;

    redis.kill().await;
    for instance in [&a, &b] {
        until_metric(instance, "baton_state_connected 0").await;
    }
    // Spliced answers go on, byte for byte, on local state.
    for (name, instance) in [("A", &a), ("B", &b)] {
        for i in 0..3 {
            let content = format!("redis down, {name} {i}");
            let v = ask(instance, "chat", &content).await;
            assert_eq!(text_of(&v), oracle_answer(&content), "{v}");
            assert_eq!(chain(&v), ["cut", "fallback"], "{v}");
        }
    }
    // A opens a breaker while Redis is away: B cannot hear of it yet.
    assert!(down.load(Ordering::SeqCst));
    let v = ask(&a, "flaky", "opens while apart").await;
    assert_eq!(chain(&v), ["fallback"], "{v}");
    let open = "baton_breaker_state{route=\"primary\",model=\"big\"} 2";
    until_metric(&a, open).await;
    let on_b = b.get("/metrics").await;
    assert!(!on_b.lines().any(|l| l == open), "{on_b}");

    // Redis is back, empty: both reconnect, A writes what it knows, B reads it.
    redis.restart().await;
    for instance in [&a, &b] {
        until_metric(instance, "baton_state_connected 1").await;
    }
    until_metric(&b, open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server in BATON_REDIS_SERVER; .ci/run runs it"]
async fn garbage_in_redis_is_ignored_and_counted_never_fatal() {
    let redis = Redis::start().await;
    for command in [
        "SET baton-test:breaker:x notjson",
        "SET baton-test:fact:y {\"v\":99,\"kind\":\"fact\"}",
        "LPUSH baton-test:cache:z 1",
        "SET baton-test:breaker:w {\"v\":1,\"from\":\"00000000-0000-0000-0000-000000000009\",\"kind\":\"breaker\",\"route\":\"nowhere\",\"model\":\"m\",\"open_until_ms\":1}",
    ] {
        assert!(redis.command(command).await.is_some_and(|r| !r.starts_with('-')), "{command}");
    }
    let (fallback, stop) = support::oracle("none", 0).await;
    let toml = format!(
        "{}[[route]]\nname = \"only\"\nprovider = \"openai\"\nbase_url = \"{fallback}\"\nmodel = \"small\"\n\
         [[ladder]]\nname = \"chat\"\nroutes = [\"only\"]\nmax_retries = 0\n",
        state(&redis)
    );
    let a = support::Serve::new(&toml).upstreams(vec![stop]).start().await;
    until_metric(&a, "baton_state_connected 1").await;
    // Two unreadable entries and one for a route this config has not (the list is no
    // string: MGET reads it as absent).
    until_metric(&a, "baton_state_updates_total{what=\"ignored\"} 3").await;
    assert!(redis.command("PUBLISH baton-test:updates garbage").await.is_some());
    until_metric(&a, "baton_state_updates_total{what=\"ignored\"} 4").await;
    let v = ask(&a, "chat", "still fine").await;
    assert_eq!(text_of(&v), oracle_answer("still fine"));
    until_metric(&a, "baton_state_connected 1").await;
}
