//! The mock oracle as an in-process provider: no sockets, tokio's clock only,
//! so tests drive its faults and deadlines under `tokio::time::pause()`.
//!
//! Each stream counts as an open upstream response in [`crate::live`], like a
//! real provider's, so tests through the in-process mock see leaks too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use super::fault::{Fault, FaultPlan};
use super::script::{steps, Pacing, Step};
use super::{chunks, conversation_hash, reply, Style};
use crate::failure::FailureKind;
use crate::live::LiveGuard;
use crate::provider::openai::{classify_http, parse_data};
use crate::provider::{Chunk, ChunkStream, Provider, UpstreamRequest};

/// An in-process oracle upstream with a fault plan.
#[derive(Debug)]
pub struct MockProvider {
    plan: FaultPlan,
    style: Style,
    pacing: Pacing,
    requests: RequestCounter,
}

/// Numbers an oracle's requests: over all of them, and per model for a
/// [`FaultPlan::ByModel`] oracle (whose `xN` counts one model's requests).
#[derive(Debug, Default)]
pub struct RequestCounter {
    all: AtomicU32,
    per_model: Mutex<HashMap<String, u32>>,
}

/// Models a per-model count is kept for; past it, the counts start again
/// (an oracle is a test upstream, but its memory stays bounded all the same).
const COUNTED_MODELS: usize = 4096;

impl RequestCounter {
    /// Counts one request to `model`; its number under `plan` (from 0).
    pub fn next(&self, plan: &FaultPlan, model: &str) -> u32 {
        let n = self.all.fetch_add(1, Ordering::Relaxed);
        if !matches!(plan, FaultPlan::ByModel) {
            return n;
        }
        let mut per_model = self.per_model.lock().unwrap_or_else(|p| p.into_inner());
        if per_model.len() >= COUNTED_MODELS && !per_model.contains_key(model) {
            per_model.clear();
        }
        let count = per_model.entry(model.to_string()).or_insert(0);
        let n = *count;
        *count = count.saturating_add(1);
        n
    }

    /// Requests counted.
    pub fn total(&self) -> u32 {
        self.all.load(Ordering::Relaxed)
    }

    /// Requests counted for `model` (under a [`FaultPlan::ByModel`] plan).
    pub fn of_model(&self, model: &str) -> u32 {
        let per_model = self.per_model.lock().unwrap_or_else(|p| p.into_inner());
        per_model.get(model).copied().unwrap_or(0)
    }
}

impl MockProvider {
    /// An oracle that misbehaves according to `plan` and continues in `style`.
    pub fn new(plan: FaultPlan, style: Style) -> Self {
        MockProvider {
            plan,
            style,
            pacing: Pacing::default(),
            requests: RequestCounter::default(),
        }
    }

    /// Changes how fast it streams.
    pub fn with_pacing(mut self, pacing: Pacing) -> Self {
        self.pacing = pacing;
        self
    }

    /// How many requests it has received.
    pub fn requests(&self) -> u32 {
        self.requests.total()
    }
}

/// The fault request number `n` gets from an oracle with this plan and style.
fn plan_fault(plan: &FaultPlan, style: Style, n: u32, request: &UpstreamRequest) -> Fault {
    let hash = conversation_hash(&request.messages);
    let count = chunks(&reply(&request.messages, style).text, hash).len();
    plan.pick_for(&request.model, n, hash, count)
}

/// The wire steps of `fault`; a scripted panic is played as a stall at the same
/// point (only the in-process provider turns that stall into a panic).
fn fault_steps(fault: Fault, style: Style, pacing: Pacing, request: &UpstreamRequest) -> Vec<Step> {
    let fault = match fault {
        Fault::PanicAt(k) => Fault::StallAfter(k),
        other => other,
    };
    steps(&request.model, &request.messages, fault, style, pacing)
}

/// The steps a request gets from an oracle with this plan and style; request number `n`.
pub fn plan_steps(plan: &FaultPlan, style: Style, pacing: Pacing, n: u32, request: &UpstreamRequest) -> Vec<Step> {
    fault_steps(plan_fault(plan, style, n, request), style, pacing, request)
}

impl Provider for MockProvider {
    /// An oracle styled to give the seam's whitespace back behaves as a provider that stripped it.
    fn strips_trailing_whitespace(&self, _mode: crate::continuation::ContinuationMode) -> bool {
        self.style.extra_space
    }

    // The scripted panic is the fault that tests the server's panic isolation.
    #[allow(clippy::panic)]
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let n = self.requests.next(&self.plan, &request.model);
        let fault = plan_fault(&self.plan, self.style, n, &request);
        let script = fault_steps(fault, self.style, self.pacing, &request);
        Box::pin(async_stream::stream! {
            let _open = LiveGuard::upstream();
            for step in script {
                match step {
                    Step::Status { status, retry_after, body } => {
                        let retry_after = retry_after.map(|s| s.to_string());
                        yield Err(classify_http(status, retry_after.as_deref(), &body));
                        return;
                    }
                    Step::Reset => {
                        yield Err(FailureKind::Reset { detail: "connection reset by the oracle".into() });
                        return;
                    }
                    Step::Hang if matches!(fault, Fault::PanicAt(_)) => {
                        panic!("mock provider: scripted panic ({})", crate::oracle::fault::FaultScript::always(fault));
                    }
                    Step::Hang => futures::future::pending::<()>().await,
                    Step::Open => yield Ok(Chunk::Opened),
                    Step::Wait(d) => tokio::time::sleep(d).await,
                    Step::Data(data) => match parse_data(&data) {
                        Ok(parsed) => {
                            for chunk in parsed {
                                yield Ok(chunk);
                            }
                        }
                        Err(kind) => {
                            yield Err(kind);
                            return;
                        }
                    },
                    Step::Cut => {
                        yield Err(FailureKind::Truncated { detail: Some("connection dropped by the oracle".into()) });
                        return;
                    }
                    Step::End => return,
                }
            }
        })
    }
}
