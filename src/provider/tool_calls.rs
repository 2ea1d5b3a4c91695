//! Tool-call deltas from an upstream: bounded as they arrive, merged at the end.
//!
//! The upstream picks each delta's `index` and how much it sends, and baton
//! holds an attempt's deltas until the attempt finishes (and, for a whole
//! answer, merges them by index). An index of four billion once made that
//! merge allocate until the process aborted, taking every session with it.
//! So every attempt's deltas pass a [`ToolCallBudget`]: an index must be below
//! [`MAX_TOOL_CALLS`], and the deltas held may not pass
//! [`MAX_TOOL_CALL_DELTAS`] in number (else the chunk is
//! [`FailureKind::Malformed`]) or [`MAX_TOOL_CALL_BYTES`] in size (else
//! [`FailureKind::TooLarge`]). The
//! attempt then fails and hands over like any other broken stream; nothing
//! of its tool calls has reached the client.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::failure::FailureKind;

/// Tool calls one answer may make: an `index` must be below this.
pub const MAX_TOOL_CALLS: u64 = 128;

/// Tool-call deltas one attempt may send (they are held until it finishes).
pub const MAX_TOOL_CALL_DELTAS: usize = 65_536;

/// Bytes of tool-call deltas (as JSON) one attempt may send.
pub const MAX_TOOL_CALL_BYTES: usize = 4 << 20;

/// What one attempt's tool-call deltas have used of the bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ToolCallBudget {
    /// Deltas admitted so far.
    deltas: usize,
    /// Their size as JSON.
    bytes: usize,
}

impl ToolCallBudget {
    /// Admits `deltas` (one chunk's), or says which bound they break.
    pub fn admit(&mut self, deltas: &[Value]) -> Result<(), FailureKind> {
        for delta in deltas {
            index_of(delta)?;
            self.deltas = self.deltas.saturating_add(1);
            self.bytes = self.bytes.saturating_add(json_len(delta));
        }
        if self.deltas > MAX_TOOL_CALL_DELTAS {
            return Err(FailureKind::Malformed {
                detail: format!("more than {MAX_TOOL_CALL_DELTAS} tool-call deltas in one answer"),
            });
        }
        if self.bytes > MAX_TOOL_CALL_BYTES {
            return Err(FailureKind::TooLarge {
                what: "tool-call deltas".to_string(),
                limit: MAX_TOOL_CALL_BYTES as u64,
            });
        }
        Ok(())
    }
}

/// A delta's tool-call index: absent or null is 0 (one call); anything but
/// an integer below [`MAX_TOOL_CALLS`] is malformed, as is a delta that is not an object.
pub fn index_of(delta: &Value) -> Result<u64, FailureKind> {
    let malformed = |what: String| FailureKind::Malformed {
        detail: format!("tool-call delta {what}"),
    };
    let Some(object) = delta.as_object() else {
        return Err(malformed("is not an object".to_string()));
    };
    match object.get("index") {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(i) if i < MAX_TOOL_CALLS => Ok(i),
            _ => Err(malformed(format!("index {n} is not an integer below {MAX_TOOL_CALLS}"))),
        },
        Some(_) => Err(malformed("index is not a number".to_string())),
    }
}

/// The size of `value` written as JSON, without writing it anywhere.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail; were it to, the count so far is still a bound from below.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// One call being put together from its deltas.
#[derive(Default)]
struct Merged {
    id: String,
    kind: String,
    name: String,
    arguments: String,
}

/// Merges streamed tool-call deltas into complete `tool_calls` entries, by
/// `index` in ascending order. Deltas without a valid index (never admitted
/// by a [`ToolCallBudget`]) are skipped; only indices that occur make a call.
pub fn merge(deltas: &[Value]) -> Vec<Value> {
    let mut calls: BTreeMap<u64, Merged> = BTreeMap::new();
    for delta in deltas {
        let Ok(index) = index_of(delta) else {
            continue;
        };
        let call = calls.entry(index).or_default();
        let text = |pointer: &str| delta.pointer(pointer).and_then(Value::as_str);
        if let Some(id) = text("/id") {
            call.id = id.to_string();
        }
        if let Some(kind) = text("/type") {
            call.kind = kind.to_string();
        }
        // Appended in place: a long argument streamed in many pieces costs its length, not its square.
        if let Some(name) = text("/function/name") {
            call.name.push_str(name);
        }
        if let Some(arguments) = text("/function/arguments") {
            call.arguments.push_str(arguments);
        }
    }
    calls
        .into_values()
        .map(|c| {
            let kind = if c.kind.is_empty() {
                "function".to_string()
            } else {
                c.kind
            };
            json!({"id": c.id, "type": kind, "function": {"name": c.name, "arguments": c.arguments}})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_must_be_small_integers() {
        assert_eq!(index_of(&json!({})), Ok(0));
        assert_eq!(index_of(&json!({"index": null})), Ok(0));
        assert_eq!(index_of(&json!({"index": MAX_TOOL_CALLS - 1})), Ok(MAX_TOOL_CALLS - 1));
        for bad in [
            json!({"index": MAX_TOOL_CALLS}),
            json!({"index": 4_000_000_000u64}),
            json!({"index": -1}),
            json!({"index": 1.5}),
            json!({"index": "0"}),
            json!(7),
        ] {
            assert!(matches!(index_of(&bad), Err(FailureKind::Malformed { .. })), "{bad}");
        }
    }

    #[test]
    fn the_budget_counts_deltas_and_bytes_across_chunks() {
        let mut budget = ToolCallBudget::default();
        let piece = json!({"index": 0, "function": {"arguments": "x".repeat(1 << 20)}});
        for _ in 0..3 {
            assert_eq!(budget.admit(std::slice::from_ref(&piece)), Ok(()));
        }
        assert_eq!(
            budget.admit(&[piece]),
            Err(FailureKind::TooLarge {
                what: "tool-call deltas".into(),
                limit: MAX_TOOL_CALL_BYTES as u64
            })
        );
        let mut budget = ToolCallBudget::default();
        let tiny = vec![json!({}); MAX_TOOL_CALL_DELTAS];
        assert_eq!(budget.admit(&tiny), Ok(()));
        assert!(matches!(budget.admit(&[json!({})]), Err(FailureKind::Malformed { .. })));
        let mut budget = ToolCallBudget::default();
        assert!(matches!(
            budget.admit(&[json!({"index": 4_000_000_000u64})]),
            Err(FailureKind::Malformed { .. })
        ));
    }

    #[test]
    fn deltas_merge_by_index_in_order_and_only_indices_that_occur_make_calls() {
        let deltas = vec![
            json!({"index": 5, "id": "call_b", "type": "function", "function": {"name": "second", "arguments": "{"}}),
            json!({"index": 0, "id": "call_a", "function": {"name": "get_", "arguments": ""}}),
            json!({"index": 0, "function": {"name": "weather", "arguments": "{\"city\":"}}),
            json!({"index": 5, "function": {"arguments": "}"}}),
            json!({"index": 0, "function": {"arguments": "\"Paris\"}"}}),
            json!({"index": 4_000_000_000u64, "function": {"arguments": "never"}}),
        ];
        let merged = merge(&deltas);
        assert_eq!(
            merged,
            vec![
                json!({"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}),
                json!({"id": "call_b", "type": "function", "function": {"name": "second", "arguments": "{}"}}),
            ]
        );
    }
}
