//! What instances tell each other, and its wire form: one JSON envelope per
//! update, versioned and signed with the sender's instance id.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::continuation::ContinuationMode;

/// The envelope format this build writes and reads; others are ignored.
pub const VERSION: u32 = 1;

/// Names and keys from the store longer than this are not ours: ignored.
pub const MAX_NAME_BYTES: usize = 512;

/// One change another instance should know of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Update {
    /// A (route, model)'s breaker opened until `open_until_ms` (Unix ms), or closed (`None`).
    Breaker {
        /// The route.
        route: String,
        /// The upstream model.
        model: String,
        /// When its cool-down ends; `None`: it closed.
        open_until_ms: Option<u64>,
    },
    /// Something a (route, model) was seen to do.
    Fact {
        /// The route.
        route: String,
        /// The upstream model.
        model: String,
        /// What.
        fact: Fact,
    },
    /// First-token times and inter-token gaps a (route, model) took (for
    /// adaptive deadlines, latency ceilings and hedging); sent, not stored.
    Samples {
        /// The route.
        route: String,
        /// The upstream model.
        model: String,
        /// Times to first token, in µs.
        ttft_us: Vec<u64>,
        /// Inter-token gaps, in µs.
        gaps_us: Vec<u64>,
    },
    /// An answer a ladder's cache stored.
    Cache {
        /// The ladder.
        ladder: String,
        /// The cache key ([`ResponseCache::key`](crate::rungs::cache::ResponseCache::key)).
        key: String,
        /// The text deltas.
        deltas: Vec<String>,
        /// Its finish reason.
        finish_reason: String,
        /// When it was stored (Unix ms).
        stored_ms: u64,
    },
}

/// A learned fact about a (route, model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    /// It rejected a prefill: continue by instruction.
    RejectsPrefill,
    /// Its errors stated this context window.
    Window {
        /// Tokens.
        tokens: u32,
    },
    /// It echoes the prefix when continuing in this mode.
    Echoes {
        /// The mode.
        mode: ContinuationMode,
    },
}

/// An update as it travels: format version, sender, update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`VERSION`] when this build wrote it.
    pub v: u32,
    /// The instance that sent it.
    pub from: Uuid,
    /// The update.
    #[serde(flatten)]
    pub update: Update,
}

impl Envelope {
    /// `update` from `from`, in this build's format.
    pub fn new(from: Uuid, update: Update) -> Self {
        Envelope {
            v: VERSION,
            from,
            update,
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        // A struct of strings and numbers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads `bytes` from the store: an envelope of this format, or why it is ignored.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        match value.get("v").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => return Err(format!("format version {v}, this build reads {VERSION}")),
            None => return Err("no format version".into()),
        }
        let envelope: Envelope = serde_json::from_value(value).map_err(|e| format!("not an update: {e}"))?;
        let names: &[&str] = match &envelope.update {
            Update::Breaker { route, model, .. }
            | Update::Fact { route, model, .. }
            | Update::Samples { route, model, .. } => &[route, model],
            Update::Cache { ladder, .. } => &[ladder],
        };
        if names.iter().any(|n| n.len() > MAX_NAME_BYTES) {
            return Err("a name longer than any route's".into());
        }
        Ok(envelope)
    }

    /// The store key that holds this update's latest value, under `prefix`.
    pub fn key(&self, prefix: &str) -> String {
        // The names go in as a JSON array: any character may appear in them.
        let (kind, id) = match &self.update {
            Update::Breaker { route, model, .. } => ("breaker", serde_json::json!([route, model])),
            Update::Fact { route, model, fact } => ("fact", serde_json::json!([route, model, fact])),
            Update::Samples { route, model, .. } => ("samples", serde_json::json!([route, model])),
            Update::Cache { ladder, key, .. } => ("cache", serde_json::json!([ladder, key])),
        };
        format!("{prefix}{kind}:{id}")
    }
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_foreign_data_is_refused_with_a_reason() {
        let from = Uuid::from_u128(7);
        for update in [
            Update::Breaker {
                route: "a:b".into(),
                model: "m".into(),
                open_until_ms: Some(5),
            },
            Update::Fact {
                route: "a".into(),
                model: "m".into(),
                fact: Fact::Echoes {
                    mode: ContinuationMode::Instruct,
                },
            },
            Update::Cache {
                ladder: "l".into(),
                key: "{\"k\":1}".into(),
                deltas: vec!["x".into()],
                finish_reason: "stop".into(),
                stored_ms: 9,
            },
        ] {
            let envelope = Envelope::new(from, update);
            assert_eq!(Envelope::parse(envelope.to_json().as_bytes()), Ok(envelope.clone()));
            assert!(envelope.key("p:").starts_with("p:"));
        }
        for (bytes, why) in [
            (&b"garbage"[..], "not JSON"),
            (b"[1,2]", "no format version"),
            (b"{\"v\":2,\"kind\":\"breaker\"}", "format version 2"),
            (b"{\"v\":1,\"from\":\"x\",\"kind\":\"breaker\"}", "not an update"),
            (b"{\"v\":1,\"from\":\"00000000-0000-0000-0000-000000000001\",\"kind\":\"fact\",\"route\":\"r\",\"model\":\"m\",\"fact\":{\"fact\":\"window\",\"tokens\":-1}}", "not an update"),
        ] {
            let error = Envelope::parse(bytes).expect_err("refused");
            assert!(error.contains(why), "{error}");
        }
        let long = Envelope::new(
            from,
            Update::Breaker {
                route: "r".repeat(MAX_NAME_BYTES + 1),
                model: "m".into(),
                open_until_ms: None,
            },
        );
        assert!(Envelope::parse(long.to_json().as_bytes()).is_err());
    }
}
