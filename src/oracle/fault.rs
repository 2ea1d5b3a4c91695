//! Fault scripts: what an oracle upstream does wrong, and when.
//!
//! Syntax (for `baton mock --fault` and tests): `none`, `stall@K`, `drop@K`,
//! `malformed@K`, `error@K` (K = content chunks sent first), `429`, `429:S`
//! (with `Retry-After: S`), `500`, `503` (any status 400–599), `reset`
//! (connection reset before headers), `hang` (accept, never answer),
//! `slow:MS` (first token after MS milliseconds), `nodone` (finish without
//! `[DONE]`), `noprefill` (reject a final assistant message), `policy` (400
//! content-policy rejection), `loop@K` (after K content chunks, repeat
//! [`LOOP_PHRASE`](super::script::LOOP_PHRASE) until the answer hits its
//! length limit, as a degenerate model does). A suffix `xN` limits the fault
//! to the first N requests: `503x1`.
//!
//! Test only: `panic@K` makes the in-process mock provider panic after K
//! content chunks, to prove a panic inside one session cannot take the proxy
//! down; the HTTP oracle, where a panic would prove nothing, stalls instead.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::SplitMix;

/// One kind of misbehaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    None,
    /// Send K content chunks, then go silent with the connection open.
    StallAfter(usize),
    /// Send K content chunks, then drop the connection mid-body.
    DropAfter(usize),
    /// Send K content chunks, then a chunk that is not valid JSON.
    MalformedAt(usize),
    /// Send K content chunks, then an error object in the stream.
    ErrorEventAt(usize),
    /// Answer with an HTTP error status, optionally with `Retry-After` seconds.
    Status {
        /// The status code.
        status: u16,
        /// `Retry-After` in seconds.
        retry_after: Option<u32>,
    },
    /// Reset the connection before sending headers.
    Reset,
    /// Accept the request and never answer.
    Hang,
    /// Send the first content chunk only after this delay.
    SlowFirstToken(Duration),
    /// End with a finish reason but without the `[DONE]` sentinel.
    NoDone,
    /// Reject requests that end with an assistant message (no prefill support).
    RejectPrefill,
    /// Reject every request as a content-policy violation.
    Policy,
    /// Reject every request as too long for a context window of this many
    /// tokens, stating it as OpenAI and vLLM do (400 `context_length_exceeded`).
    ContextLength(u32),
    /// A reasoning model thinks, then finishes (`stop`) without answering.
    ThinkOnly,
    /// Send K content chunks, then the same phrase over and over, then finish with `length`.
    LoopAfter(usize),
    /// Test only: the in-process mock provider panics after K content chunks
    /// (the HTTP oracle stalls there instead).
    PanicAt(usize),
}

/// A fault and how many requests it affects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultScript {
    /// What goes wrong.
    pub fault: Fault,
    /// Only the first N requests misbehave; `None`: all of them.
    pub times: Option<u32>,
}

impl FaultScript {
    /// A script that never misbehaves.
    pub const NONE: FaultScript = FaultScript {
        fault: Fault::None,
        times: None,
    };

    /// `fault` on every request.
    pub fn always(fault: Fault) -> Self {
        FaultScript { fault, times: None }
    }

    /// The fault for the request numbered `n` (from 0).
    pub fn for_request(&self, n: u32) -> Fault {
        match self.times {
            Some(t) if n >= t => Fault::None,
            _ => self.fault,
        }
    }
}

/// A fault script that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad fault script {script:?}: {reason} (expected none, stall@K, drop@K, malformed@K, error@K, 429, 429:SECS, 500, 503, reset, hang, slow:MS, nodone, noprefill, policy, ctx:TOKENS, thinkonly, loop@K or panic@K, optionally followed by xN)")]
pub struct FaultParseError {
    /// The text given.
    pub script: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for FaultScript {
    type Err = FaultParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| FaultParseError {
            script: s.to_string(),
            reason: reason.to_string(),
        };
        let num = |t: &str| t.parse::<usize>().map_err(|_| err(&format!("{t:?} is not a number")));
        let (body, times) = match s.rsplit_once('x') {
            Some((body, n)) if !body.is_empty() && n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
                (body, Some(num(n)? as u32))
            }
            _ => (s, None),
        };
        let fault = match body.split_once(['@', ':']) {
            Some(("stall", k)) => Fault::StallAfter(num(k)?),
            Some(("drop", k)) => Fault::DropAfter(num(k)?),
            Some(("malformed", k)) => Fault::MalformedAt(num(k)?),
            Some(("error", k)) => Fault::ErrorEventAt(num(k)?),
            Some(("panic", k)) => Fault::PanicAt(num(k)?),
            Some(("loop", k)) => Fault::LoopAfter(num(k)?),
            Some(("slow", ms)) => Fault::SlowFirstToken(Duration::from_millis(num(ms)? as u64)),
            Some(("ctx", tokens)) => Fault::ContextLength(
                u32::try_from(num(tokens)?)
                    .ok()
                    .filter(|t| *t > 0)
                    .ok_or_else(|| err("a context window is 1 to 4294967295 tokens"))?,
            ),
            Some((status, secs)) => Fault::Status {
                status: parse_status(status).ok_or_else(|| err("unknown fault"))?,
                retry_after: Some(num(secs)? as u32),
            },
            None => match body {
                "none" => Fault::None,
                "reset" => Fault::Reset,
                "hang" => Fault::Hang,
                "nodone" => Fault::NoDone,
                "noprefill" => Fault::RejectPrefill,
                "policy" => Fault::Policy,
                "thinkonly" => Fault::ThinkOnly,
                status => Fault::Status {
                    status: parse_status(status).ok_or_else(|| err("unknown fault"))?,
                    retry_after: None,
                },
            },
        };
        Ok(FaultScript { fault, times })
    }
}

fn parse_status(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|c| (400..600).contains(c))
}

impl fmt::Display for FaultScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fault {
            Fault::None => write!(f, "none")?,
            Fault::StallAfter(k) => write!(f, "stall@{k}")?,
            Fault::DropAfter(k) => write!(f, "drop@{k}")?,
            Fault::MalformedAt(k) => write!(f, "malformed@{k}")?,
            Fault::ErrorEventAt(k) => write!(f, "error@{k}")?,
            Fault::Status {
                status,
                retry_after: None,
            } => write!(f, "{status}")?,
            Fault::Status {
                status,
                retry_after: Some(s),
            } => write!(f, "{status}:{s}")?,
            Fault::Reset => write!(f, "reset")?,
            Fault::Hang => write!(f, "hang")?,
            Fault::SlowFirstToken(d) => write!(f, "slow:{}", d.as_millis())?,
            Fault::NoDone => write!(f, "nodone")?,
            Fault::RejectPrefill => write!(f, "noprefill")?,
            Fault::Policy => write!(f, "policy")?,
            Fault::ThinkOnly => write!(f, "thinkonly")?,
            Fault::ContextLength(tokens) => write!(f, "ctx:{tokens}")?,
            Fault::PanicAt(k) => write!(f, "panic@{k}")?,
            Fault::LoopAfter(k) => write!(f, "loop@{k}")?,
        }
        if let Some(t) = self.times {
            write!(f, "x{t}")?;
        }
        Ok(())
    }
}

/// Which fault each request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPlan {
    /// The same script for every request.
    Fixed(FaultScript),
    /// A fault picked per conversation from a mix of all mid-stream and
    /// before-headers faults, at a random point: a pure function of the
    /// conversation and the seed, so a run can be repeated.
    Random {
        /// Mixed into the conversation hash.
        seed: u64,
    },
    /// A provider that is flaky, then down, then back: outside outages, half
    /// the conversations (picked by hash) get the `Random` mix and the others
    /// none; from `offset` after `epoch`, every `period` begins with `down`
    /// of 503s to every request.
    Outage {
        /// Mixed into the conversation hash.
        seed: u64,
        /// When the clock starts (tokio time, so tests can pause it).
        epoch: tokio::time::Instant,
        /// The first outage begins this long after `epoch`.
        offset: Duration,
        /// One outage per period.
        period: Duration,
        /// How long each outage lasts.
        down: Duration,
    },
    /// The fault comes from the request's model name: the script after its
    /// last `+` (`s07+stall@5`), counting `xN` over that model's requests
    /// only; a model without one (or with one that does not parse) behaves.
    /// One upstream serves a whole suite of scenarios, one model each, as a
    /// peer test suite's fault server does.
    ByModel,
}

impl FaultPlan {
    /// The script a [`FaultPlan::ByModel`] oracle plays for `model`.
    pub fn script_for_model(model: &str) -> FaultScript {
        model
            .rsplit_once('+')
            .and_then(|(_, script)| script.parse().ok())
            .unwrap_or(FaultScript::NONE)
    }

    /// The fault for the `n`th request to `model` (counted per model under
    /// [`FaultPlan::ByModel`], else over all requests), as [`FaultPlan::pick`] says.
    pub fn pick_for(&self, model: &str, n: u32, hash: u64, chunks: usize) -> Fault {
        match self {
            FaultPlan::ByModel => FaultPlan::script_for_model(model).for_request(n),
            other => other.pick(n, hash, chunks),
        }
    }

    /// The fault for a request numbered `n` with conversation hash `hash`, whose answer has `chunks` chunks.
    pub fn pick(&self, n: u32, hash: u64, chunks: usize) -> Fault {
        match self {
            FaultPlan::Fixed(script) => script.for_request(n),
            // The model decides; without one (see `pick_for`), behave.
            FaultPlan::ByModel => Fault::None,
            FaultPlan::Outage {
                seed,
                epoch,
                offset,
                period,
                down,
            } => {
                let since = tokio::time::Instant::now().saturating_duration_since(*epoch);
                let into = since
                    .checked_sub(*offset)
                    .map(|d| d.as_nanos() % period.as_nanos().max(1));
                if into.is_some_and(|d| d < down.as_nanos()) {
                    return Fault::Status {
                        status: 503,
                        retry_after: None,
                    };
                }
                if SplitMix::new(hash ^ seed.rotate_left(29)).below(2) == 0 {
                    return Fault::None;
                }
                FaultPlan::Random { seed: *seed }.pick(n, hash, chunks)
            }
            FaultPlan::Random { seed } => {
                let mut rng = SplitMix::new(hash ^ seed.rotate_left(17));
                let k = rng.below(chunks as u64 + 1) as usize;
                match rng.below(13) {
                    0 | 1 => Fault::None,
                    2 => Fault::StallAfter(k),
                    3 => Fault::DropAfter(k),
                    4 => Fault::MalformedAt(k),
                    5 => Fault::ErrorEventAt(k),
                    6 => Fault::Status {
                        status: 429,
                        retry_after: Some(1),
                    },
                    7 => Fault::Status {
                        status: 503,
                        retry_after: None,
                    },
                    8 => Fault::Reset,
                    9 => Fault::Hang,
                    10 => Fault::SlowFirstToken(std::time::Duration::from_millis(200)),
                    11 => Fault::NoDone,
                    _ => Fault::StallAfter(k / 2),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_outage_answers_503_to_everything_only_while_it_lasts() {
        let plan = FaultPlan::Outage {
            seed: 3,
            epoch: tokio::time::Instant::now(),
            offset: Duration::from_secs(10),
            period: Duration::from_secs(60),
            down: Duration::from_secs(5),
        };
        let down = Fault::Status {
            status: 503,
            retry_after: None,
        };
        let picks = |plan: &FaultPlan| (0..200u64).map(|h| plan.pick(0, h, 40)).collect::<Vec<_>>();
        let before = picks(&plan);
        assert!(before.contains(&Fault::None) && before.iter().any(|f| *f != Fault::None));
        tokio::time::advance(Duration::from_secs(12)).await;
        assert!(picks(&plan).iter().all(|f| *f == down), "down from 10 s to 15 s");
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(picks(&plan), before, "back, with the same mix as before");
        tokio::time::advance(Duration::from_secs(56)).await;
        assert!(picks(&plan).iter().all(|f| *f == down), "again one period later");
    }

    #[test]
    fn scripts_round_trip_through_text() {
        for s in [
            "none",
            "stall@5",
            "drop@0",
            "malformed@3",
            "error@9",
            "429",
            "429:2",
            "503x1",
            "500",
            "reset",
            "hang",
            "slow:1500",
            "nodone",
            "noprefill",
            "policy",
            "ctx:8192",
            "ctx:8192x1",
            "thinkonly",
            "stall@2x3",
            "panic@4",
            "loop@6",
            "loop@0x1",
        ] {
            let parsed: FaultScript = s.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.to_string(), s);
        }
        assert_eq!(
            "503x1"
                .parse::<FaultScript>()
                .map(|f| (f.for_request(0), f.for_request(1))),
            Ok((
                Fault::Status {
                    status: 503,
                    retry_after: None
                },
                Fault::None
            ))
        );
    }

    #[test]
    fn a_by_model_plan_takes_the_script_after_the_last_plus() {
        let plan = FaultPlan::ByModel;
        assert_eq!(plan.pick_for("s08+stall@5", 0, 1, 9), Fault::StallAfter(5));
        assert_eq!(plan.pick_for("a+b+ctx:8192", 0, 1, 9), Fault::ContextLength(8192));
        // xN counts that model's requests, numbered by the caller.
        assert_eq!(plan.pick_for("s03+503x1", 1, 1, 9), Fault::None);
        for behaves in ["oracle", "s01+", "s01+explode", "s01+ctx:0"] {
            assert_eq!(plan.pick_for(behaves, 0, 1, 9), Fault::None, "{behaves}");
        }
        // Other plans ignore the model.
        let fixed = FaultPlan::Fixed(FaultScript::always(Fault::Hang));
        assert_eq!(fixed.pick_for("s08+stall@5", 0, 1, 9), Fault::Hang);
    }

    #[test]
    fn bad_scripts_say_what_is_wrong() {
        for s in [
            "",
            "stall",
            "stall@x",
            "200",
            "explode",
            "429:soon",
            "ctx:0",
            "ctx:99999999999",
        ] {
            let e = s.parse::<FaultScript>().expect_err(s);
            assert!(e.to_string().contains("bad fault script"), "{e}");
        }
    }
}
