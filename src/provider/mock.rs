//! The mock oracle as an in-process provider: no sockets, tokio's clock only,
//! so tests drive its faults and deadlines under `tokio::time::pause()`.

use std::sync::atomic::{AtomicU32, Ordering};

use super::openai::{classify_http, parse_data};
use super::{Chunk, ChunkStream, Provider, UpstreamRequest};
use crate::failure::FailureKind;
use crate::oracle::fault::FaultPlan;
use crate::oracle::script::{steps, Pacing, Step};
use crate::oracle::{chunks, conversation_hash, reply, Style};

/// An in-process oracle upstream with a fault plan.
#[derive(Debug)]
pub struct MockProvider {
    plan: FaultPlan,
    style: Style,
    pacing: Pacing,
    requests: AtomicU32,
}

impl MockProvider {
    /// An oracle that misbehaves according to `plan` and continues in `style`.
    pub fn new(plan: FaultPlan, style: Style) -> Self {
        MockProvider {
            plan,
            style,
            pacing: Pacing::default(),
            requests: AtomicU32::new(0),
        }
    }

    /// Changes how fast it streams.
    pub fn with_pacing(mut self, pacing: Pacing) -> Self {
        self.pacing = pacing;
        self
    }

    /// How many requests it has received.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// The steps a request gets from an oracle with this plan and style; request number `n`.
pub fn plan_steps(plan: &FaultPlan, style: Style, pacing: Pacing, n: u32, request: &UpstreamRequest) -> Vec<Step> {
    let hash = conversation_hash(&request.messages);
    let count = chunks(&reply(&request.messages, style).text, hash).len();
    let fault = plan.pick(n, hash, count);
    steps(&request.model, &request.messages, fault, style, pacing)
}

impl Provider for MockProvider {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let script = plan_steps(&self.plan, self.style, self.pacing, n, &request);
        Box::pin(async_stream::stream! {
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
