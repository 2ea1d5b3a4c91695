//! A session's tokens across its attempts, honest about what was not reported.
//!
//! A provider bills every attempt it answered, a cut one included (its prompt
//! was read), but only reports usage at the end of a stream, or at its start
//! (Anthropic's `message_start`), or not at all. So the figures kept are what
//! upstreams reported, per attempt and summed; an attempt that streamed text
//! without reporting usage counts its text deltas, which are chunks, not
//! tokens, and are never added to the reported figures.

use serde::{Deserialize, Serialize};

use crate::request::Usage;

/// One upstream attempt's tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptTokens {
    /// Its number in the session, from 1.
    pub attempt: u32,
    /// The route it ran on.
    pub route: String,
    /// The upstream model it asked for.
    pub model: String,
    /// What its upstream reported; `None`: nothing (cut before its usage, or a server that sends none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Usage>,
    /// Text deltas it streamed (chunks: at best an estimate of tokens).
    pub deltas: u64,
}

/// Every attempt of a session that streamed text or reported usage, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tally {
    /// The attempts.
    pub attempts: Vec<AttemptTokens>,
}

impl Tally {
    /// Adds `attempt`, unless it neither streamed nor reported anything (a refused request costs no tokens).
    pub fn push(&mut self, attempt: AttemptTokens) {
        if attempt.reported.is_some() || attempt.deltas > 0 {
            self.attempts.push(attempt);
        }
    }

    /// What the upstreams reported, summed over every attempt that reported
    /// (cut ones included); `None` when none did.
    pub fn reported(&self) -> Option<Usage> {
        self.attempts.iter().filter_map(|a| a.reported).reduce(|mut sum, u| {
            sum += u;
            sum
        })
    }

    /// How many attempts reported usage.
    pub fn reported_attempts(&self) -> usize {
        self.attempts.iter().filter(|a| a.reported.is_some()).count()
    }

    /// How many attempts streamed text without reporting usage: the reported figures miss them.
    pub fn unreported_attempts(&self) -> usize {
        self.attempts.iter().filter(|a| a.reported.is_none()).count()
    }

    /// The text deltas of those attempts.
    pub fn unreported_deltas(&self) -> u64 {
        self.attempts
            .iter()
            .filter(|a| a.reported.is_none())
            .map(|a| a.deltas)
            .sum()
    }
}

/// One attempt's usage so far with one more report folded in. Reports within
/// a stream are running totals (Anthropic's `message_start` then
/// `message_delta`, vLLM's continuous usage), and a later one may leave a
/// field out (reported as 0): the larger figure of each field stands.
pub fn merge(so_far: Option<Usage>, report: Usage) -> Usage {
    match so_far {
        None => report,
        Some(u) => Usage {
            prompt_tokens: u.prompt_tokens.max(report.prompt_tokens),
            completion_tokens: u.completion_tokens.max(report.completion_tokens),
            reasoning_tokens: u.reasoning_tokens.max(report.reasoning_tokens),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32, reported: Option<(u64, u64)>, deltas: u64) -> AttemptTokens {
        AttemptTokens {
            attempt: n,
            route: format!("r{n}"),
            model: "m".into(),
            reported: reported.map(|(p, c)| Usage {
                prompt_tokens: p,
                completion_tokens: c,
                reasoning_tokens: None,
            }),
            deltas,
        }
    }

    #[test]
    fn reported_figures_are_summed_and_deltas_kept_apart() {
        let mut tally = Tally::default();
        assert_eq!(tally.reported(), None);
        // A cut attempt that reported its prompt, one that reported nothing, the one that finished.
        tally.push(attempt(1, Some((120, 0)), 14));
        tally.push(attempt(2, None, 9));
        tally.push(attempt(3, None, 0));
        tally.push(attempt(4, Some((150, 40)), 38));
        assert_eq!(tally.attempts.len(), 3, "an attempt with nothing to count is left out");
        assert_eq!(
            tally.reported(),
            Some(Usage {
                prompt_tokens: 270,
                completion_tokens: 40,
                reasoning_tokens: None,
            })
        );
        assert_eq!((tally.reported_attempts(), tally.unreported_attempts()), (2, 1));
        assert_eq!(tally.unreported_deltas(), 9);
    }

    #[test]
    fn running_totals_merge_to_the_larger_figure() {
        // Anthropic: message_start has the prompt, message_delta the output only.
        let start = Usage {
            prompt_tokens: 12,
            completion_tokens: 1,
            reasoning_tokens: None,
        };
        let delta = Usage {
            prompt_tokens: 0,
            completion_tokens: 7,
            reasoning_tokens: Some(5),
        };
        let merged = Usage {
            prompt_tokens: 12,
            completion_tokens: 7,
            reasoning_tokens: Some(5),
        };
        assert_eq!(merge(Some(merge(None, start)), delta), merged);
        // A later report that leaves the detail out keeps the figure.
        assert_eq!(merge(Some(merged), start), merged);
    }

    #[test]
    fn reasoning_tokens_are_summed_over_the_attempts_that_reported_them() {
        let mut tally = Tally::default();
        let usage = |p, c, r| Usage {
            prompt_tokens: p,
            completion_tokens: c,
            reasoning_tokens: r,
        };
        // A thinking attempt cut after its usage, an Anthropic one (no figure), a thinking one that finished.
        for (n, u) in [
            (1, usage(10, 30, Some(25))),
            (2, usage(10, 40, None)),
            (3, usage(12, 50, Some(20))),
        ] {
            tally.push(AttemptTokens {
                attempt: n,
                route: format!("r{n}"),
                model: "m".into(),
                reported: Some(u),
                deltas: 1,
            });
        }
        assert_eq!(tally.reported(), Some(usage(32, 120, Some(45))));
        // No attempt gave the figure: none is made up.
        let mut plain = Tally::default();
        plain.push(attempt(1, Some((1, 2)), 1));
        assert_eq!(plain.reported().and_then(|u| u.reasoning_tokens), None);
        // Hostile figures saturate instead of overflowing.
        let mut huge = usage(u64::MAX, u64::MAX, Some(u64::MAX));
        huge += usage(1, 1, Some(1));
        assert_eq!(huge, usage(u64::MAX, u64::MAX, Some(u64::MAX)));
        assert_eq!(huge.total(), u64::MAX);
    }
}
