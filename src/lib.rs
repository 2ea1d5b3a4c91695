//! baton: mid-stream handover for LLM token streams.
//!
//! When a model's streamed answer breaks — it stalls, is cut off, sends
//! garbage or an error, or never starts — baton hands the conversation, with
//! the text the user already has, to the next model on a ladder, which
//! continues from exactly that point. The caller sees one unbroken stream.
//!
//! # Layout
//!
//! The folders are the architecture, bottom to top; a module uses only what
//! is below it (`tests/layering.rs` fails on any cycle between modules).
//!
//! * Vocabulary, at the root: [`failure`] (failure kinds and their classes),
//!   [`request`] (the caller's conversation), [`door`] (the client API it came through), [`usage`] (a session's tokens
//!   across its attempts), [`stats`] (percentiles), [`rng`] (the small
//!   deterministic generator), [`serde_ms`] (durations as milliseconds),
//!   [`redact`] (secrets out of upstream error text before any sink sees it).
//! * [`provider`]: upstream wire formats (`openai`, `anthropic`) over a bounded
//!   SSE decoder, with the typed channels (text, reasoning, tool calls).
//! * [`policy`]: what the engine decides with, no IO:
//!   [`ladder`](policy::ladder) (routes, retry policy, the pure decision after a failure),
//!   [`health`](policy::health) (per (route, upstream model): breaker, budget, gaps,
//!   first-token times, learned facts), [`breaker`](policy::breaker),
//!   [`budget`](policy::budget), [`deadline`](policy::deadline) (adaptive deadlines),
//!   [`hedge`](policy::hedge), [`rules`](policy::rules) (latency and cost ceilings),
//!   and the seam rules: [`continuation`](policy::continuation),
//!   [`overlap`](policy::overlap), [`loopguard`](policy::loopguard),
//!   [`reasoning`](policy::reasoning) (where reasoning goes, the seam marker),
//!   [`fit`](policy::fit) (context windows).
//! * [`rungs`]: the non-model rungs, the response [`cache`](rungs::cache) and the
//!   labelled [`safe_reply`](rungs::safe_reply).
//! * [`engine`]: the [`Splicer`] ([`splice`](engine::splice): a pure state machine,
//!   `splice::machine`, driven by a thin async loop), the [`watchdog`](engine::watchdog)
//!   around each upstream stream, [`event`](engine::event) ([`EngineEvent`], the one
//!   schema of what happened), [`probe`](engine::probe) (active probes of open
//!   breakers) and [`live`](engine::live) (process-wide gauges).
//! * [`spec`]: a ladder and a request without their providers, as a recording keeps them.
//! * [`oracle`]: the mock oracle, its fault scripts, its HTTP server and its in-process provider.
//! * [`config`]: the proxy's TOML config.
//! * [`record`]: session recordings on disk (JSONL) and `baton replay` (`--verify`, `--summary`).
//! * [`proxy`]: `baton serve`, the OpenAI-compatible proxy.
//! * [`dashboard`]: the terminal dashboard (`baton demo`, `baton watch`).
//! * [`tools`]: the demo (`baton demo --headless`) and, with `cli`, `baton bench`,
//!   `baton bench stall`, `baton soak` and their shared report ending.
//!
//! # Features
//!
//! All three are on by default; with `default-features = false` only the core is
//! built (everything above not listed here: splicer, ladder, providers over
//! `reqwest`, oracle and its server, config, recordings and replay, demo).
//!
//! * `proxy`: [`proxy`] (axum, hyper, prometheus-client).
//! * `dashboard`: [`dashboard`] (ratatui, crossterm).
//! * `cli`: the `baton` binary (clap, tracing-subscriber), [`tools::bench`](mod@tools::bench),
//!   [`tools::stall_bench`] and [`tools::soak`]; turns on `proxy` and `dashboard`.
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

pub mod config;
pub mod continuation;
#[cfg(feature = "dashboard")]
pub mod dashboard;
pub mod door;
pub mod engine;
pub mod failure;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod live;
pub mod oracle;
pub mod policy;
pub mod provider;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod record;
pub mod redact;
pub mod request;
pub mod rng;
pub mod rungs;
pub mod serde_ms;
pub mod spec;
pub mod state;
pub mod stats;
pub mod tools;
pub mod usage;

pub use continuation::ContinuationMode;
pub use door::Door;
pub use engine::event::{EngineEvent, EventBus, EventKind, Subscriber};
pub use engine::splice::{ClientItem, Splicer};
pub use engine::watchdog::Deadlines;
pub use failure::{Failure, FailureClass, FailureKind};
pub use policy::ladder::{Ladder, Route};
pub use request::{ChatRequest, Message, Role, Usage};
