//! baton: mid-stream handover for LLM token streams.
//!
//! When a model's streamed answer breaks — it stalls, is cut off, sends
//! garbage or an error, or never starts — baton hands the conversation, with
//! the text the user already has, to the next model on a ladder, which
//! continues from exactly that point. The caller sees one unbroken stream.
//!
//! # Layout
//!
//! * [`splice`]: the [`Splicer`], which runs one request along a ladder and
//!   yields one client stream.
//! * [`watchdog`]: deadlines and shape checks around one upstream stream.
//! * [`deadline`]: adaptive deadlines (stall from recent gaps, first token from prompt size).
//! * [`ladder`]: routes, retry policy, and the pure decision after a failure.
//! * [`live`]: process-wide gauges of live sessions and open upstream responses.
//! * [`failure`]: failure kinds and their classes.
//! * [`breaker`]: circuit breaker per (route, model), its cost-aware cool-down and probe rule.
//! * [`probe`]: active probes of open breakers (`probe = "active"`).
//! * [`budget`]: retry budget per (route, model).
//! * [`health`]: health per (route, upstream model): breaker, budget, recent gaps,
//!   first-token times and learned facts (rejects prefill, echoes, context window).
//! * [`hedge`]: hedged requests (a late first token starts the next route in parallel).
//! * [`rules`]: a ladder's latency and cost ceilings, which skip routes.
//! * [`cache`]: the response cache rung (first rung and last resort).
//! * [`safe_reply`]: the labelled degraded answer when nothing else can answer.
//! * [`continuation`]: how a route is asked to continue a prefix.
//! * [`fit`]: dropping the oldest turns so a request fits a route's context window.
//! * [`loopguard`]: noticing an answer that repeats itself.
//! * [`overlap`]: the overlap trim at the seam.
//! * [`reasoning`]: where reasoning deltas go, and the seam marker of a handover during reasoning.
//! * [`provider`]: upstream wire formats (`openai`, `anthropic`) over a bounded SSE decoder.
//! * [`oracle`]: the mock oracle, its fault scripts, its HTTP server and its in-process provider.
//! * [`event`]: [`EngineEvent`], the one schema of what happened.
//! * [`request`]: the caller's conversation.
//! * [`usage`]: a session's tokens across its attempts, reported or not.
//! * [`stats`]: percentiles shared by the demo, dashboard and summaries.
//! * [`rng`]: the small deterministic generator of the oracle and the splicer's jitter.
//! * [`serde_ms`]: durations as milliseconds in configs and recordings.
//! * [`spec`]: a ladder and a request without their providers, as a recording keeps them.
//! * [`demo`]: the headless demo run (`baton demo --headless`).
//! * [`config`]: the proxy's TOML config.
//! * [`proxy`]: `baton serve`, the OpenAI-compatible proxy.
//! * [`redact`]: secrets out of upstream error text before any sink sees it.
//! * [`record`]: session recordings on disk (JSONL) and `baton replay` (`--verify`, `--summary`).
//! * [`dashboard`]: the terminal dashboard (`baton demo`, `baton watch`).
//! * [`bench`](mod@bench): `baton bench`, streaming throughput, latency and memory, direct vs proxied.
//! * [`stall_bench`]: `baton bench stall`, the default stall policy's false handovers and detection times.
//! * [`report`]: ending a tool: its report as text or one JSON line, and its exit code.
//! * [`soak`]: `baton soak`, many sessions through `baton serve` against `baton mock` with faults; RSS and descriptors.
//!
//! # Features
//!
//! All three are on by default; with `default-features = false` only the core is
//! built (everything above not listed here: splicer, ladder, providers over
//! `reqwest`, oracle and its server, config, recordings and replay, demo).
//!
//! * `proxy`: [`proxy`] (axum, hyper, prometheus-client).
//! * `dashboard`: [`dashboard`] (ratatui, crossterm).
//! * `cli`: the `baton` binary (clap, tracing-subscriber), [`bench`](mod@bench),
//!   [`stall_bench`] and [`soak`]; turns on `proxy` and `dashboard`.
//! * `fuzzing` (off by default): the checks the fuzz targets and
//!   `tests/fuzz_corpus.rs` run.
//!
//! ```toml
//! [dependencies]
//! baton = { version = "0.1", default-features = false }
//! ```
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use baton::{ChatRequest, Ladder, Message, Role, Route, Splicer};
//! use baton::provider::openai::OpenAiProvider;
//!
//! # async fn run() {
//! let client = OpenAiProvider::default_client();
//! let primary = Arc::new(OpenAiProvider::new(client.clone(), "http://127.0.0.1:9001/v1", None));
//! let fallback = Arc::new(OpenAiProvider::new(client, "http://127.0.0.1:9002/v1", None));
//! let splicer = Splicer::new(Ladder::new(vec![
//!     Route::new("primary", "big-model", primary),
//!     Route::new("fallback", "small-model", fallback),
//! ]));
//! let done = splicer.collect(ChatRequest::new(vec![Message::new(Role::User, "hi")])).await;
//! println!("{}", done.text);
//! # }
//! ```

// The module map above links every module; in a lean build some of them are compiled out.
#![cfg_attr(
    not(all(feature = "proxy", feature = "dashboard", feature = "cli")),
    allow(rustdoc::broken_intra_doc_links)
)]

#[cfg(feature = "cli")]
pub mod bench;
pub mod breaker;
pub mod budget;
pub mod cache;
pub mod config;
pub mod continuation;
#[cfg(feature = "dashboard")]
pub mod dashboard;
pub mod deadline;
pub mod demo;
pub mod event;
pub mod failure;
pub mod fit;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod hedge;
pub mod ladder;
pub mod live;
pub mod loopguard;
pub mod oracle;
pub mod overlap;
pub mod probe;
pub mod provider;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod reasoning;
pub mod record;
pub mod redact;
#[cfg(feature = "cli")]
pub mod report;
pub mod request;
pub mod rng;
pub mod rules;
pub mod safe_reply;
pub mod serde_ms;
#[cfg(feature = "cli")]
pub mod soak;
pub mod spec;
pub mod splice;
#[cfg(feature = "cli")]
pub mod stall_bench;
pub mod stats;
pub mod usage;
pub mod watchdog;

pub use continuation::ContinuationMode;
pub use event::{EngineEvent, EventKind};
pub use failure::{Failure, FailureClass, FailureKind};
pub use ladder::{Ladder, Route};
pub use request::{ChatRequest, Message, Role, Usage};
pub use splice::{ClientItem, Splicer};
pub use watchdog::Deadlines;
