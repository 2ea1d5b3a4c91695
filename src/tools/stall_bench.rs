//! `baton bench stall`: how often the default stall policy cuts a healthy
//! stream (a false handover), and how fast it declares a real stall.
//!
//! Each profile runs its sessions one after another through one ladder (a
//! primary with the default policy, a healthy fallback), so the primary's
//! gap history evolves as it would under traffic. The primary is the oracle
//! re-timed by a jitter profile ([`Profile`]); every `stall_every`-th session
//! it also goes silent for good after a random chunk (a real stall). A
//! healthy session that fails at all is a false handover; for the stalls, the
//! detection time is from the primary's last delta to the failure. Every
//! answer is checked byte for byte against the oracle.
//!
//! Everything runs on one current-thread runtime with a paused clock, so ten
//! thousand sessions of virtual minutes take seconds.

use std::fmt;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use crate::engine::event::{EngineEvent, EventKind};
use crate::engine::splice::Splicer;
use crate::failure::FailureKind;
use crate::oracle::fault::{FaultPlan, FaultScript};
use crate::oracle::provider::MockProvider;
use crate::oracle::script::Pacing;
use crate::oracle::{answer, SplitMix, Style};
use crate::policy::ladder::{Ladder, Route};
use crate::provider::{Chunk, ChunkStream, Provider, UpstreamRequest};
use crate::request::{ChatRequest, Message, Role};

/// A jitter profile of a healthy stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Lognormal gaps (σ 0.5) around a median of 15–40 ms (drawn per session).
    Fast,
    /// As `Fast`, and one gap in 40 is a pause of 0.3–1.5 s (tool-call generation, a reasoning step).
    Pauses,
    /// As `Fast`, and one gap in 400 is a pause of 0.3–1.5 s: most sessions never pause,
    /// so neither the stream nor the route has shown one when it comes.
    RarePauses,
    /// A slow, steady cadence of 300–900 ms (drawn per session), lognormal jitter σ 0.15.
    Slow,
}

impl Profile {
    /// Every profile, in report order.
    pub const ALL: [Profile; 4] = [Profile::Fast, Profile::Pauses, Profile::RarePauses, Profile::Slow];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Fast => "fast",
            Profile::Pauses => "pauses",
            Profile::RarePauses => "rare-pauses",
            Profile::Slow => "slow",
        }
    }

    /// The gaps of one session: drawn from `rng`, before the first chunk and between chunks.
    fn gaps(self, rng: &mut SplitMix) -> Gaps {
        let (median_ms, sigma, pause_one_in) = match self {
            Profile::Fast => (uniform(rng, 15.0, 40.0), 0.5, None),
            Profile::Pauses => (uniform(rng, 15.0, 40.0), 0.5, Some(40)),
            Profile::RarePauses => (uniform(rng, 15.0, 40.0), 0.5, Some(400)),
            Profile::Slow => (uniform(rng, 300.0, 900.0), 0.15, None),
        };
        Gaps {
            rng: SplitMix::new(rng.next_u64()),
            median_ms,
            sigma,
            pause_one_in,
        }
    }
}

/// One session's gap generator.
#[derive(Clone, Debug)]
struct Gaps {
    rng: SplitMix,
    median_ms: f64,
    sigma: f64,
    pause_one_in: Option<u64>,
}

impl Gaps {
    fn next(&mut self) -> Duration {
        if let Some(n) = self.pause_one_in {
            if self.rng.below(n) == 0 {
                return Duration::from_secs_f64(uniform(&mut self.rng, 0.3, 1.5));
            }
        }
        let z = normal(&mut self.rng);
        Duration::from_secs_f64(self.median_ms * (self.sigma * z).exp() / 1000.0)
    }
}

/// A uniform draw in `[lo, hi)`.
fn uniform(rng: &mut SplitMix, lo: f64, hi: f64) -> f64 {
    let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    lo + (hi - lo) * unit
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut SplitMix) -> f64 {
    let u1 = uniform(rng, f64::MIN_POSITIVE, 1.0);
    let u2 = uniform(rng, 0.0, 1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// What the primary does in the current session.
#[derive(Clone, Debug)]
struct Plan {
    gaps: Gaps,
    /// Go silent for good after this many text chunks.
    stall_after: Option<usize>,
}

/// The oracle, re-timed by the current session's plan (sessions run one at a time).
struct Jittered {
    inner: MockProvider,
    plan: Arc<Mutex<Option<Plan>>>,
}

impl Provider for Jittered {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let mut inner = self.inner.stream(request);
        let plan = self.plan.lock().ok().and_then(|p| p.clone());
        Box::pin(async_stream::stream! {
            let Some(mut plan) = plan else {
                return;
            };
            let mut sent = 0;
            while let Some(item) = inner.next().await {
                if matches!(item, Ok(Chunk::Text(_))) {
                    if plan.stall_after == Some(sent) {
                        futures::future::pending::<()>().await;
                    }
                    tokio::time::sleep(plan.gaps.next()).await;
                    sent += 1;
                }
                yield item;
            }
        })
    }
}

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct StallBenchOptions {
    /// Healthy sessions per profile.
    pub sessions: usize,
    /// Every this many sessions, one more stalls for real (0: none).
    pub stall_every: usize,
    /// Seed of the jitter and the stall positions.
    pub seed: u64,
    /// The profiles to run.
    pub profiles: Vec<Profile>,
}

impl Default for StallBenchOptions {
    fn default() -> Self {
        StallBenchOptions {
            sessions: 10_000,
            stall_every: 10,
            seed: 1,
            profiles: Profile::ALL.to_vec(),
        }
    }
}

/// The figures of one profile.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProfileResult {
    /// The profile's name.
    pub profile: String,
    /// Healthy sessions run.
    pub sessions: usize,
    /// Healthy sessions whose primary failed (every one is a false handover).
    pub false_handovers: usize,
    /// Of those, declared stalls.
    pub false_stalls: usize,
    /// `false_handovers / sessions`.
    pub rate: f64,
    /// Sessions whose primary stalled for real.
    pub stalls: usize,
    /// Of those, declared a stall by the watchdog.
    pub detected: usize,
    /// Detection times (last delta to the failure), ms: median.
    pub detection_p50_ms: Option<u64>,
    /// 99th percentile.
    pub detection_p99_ms: Option<u64>,
    /// Largest.
    pub detection_max_ms: Option<u64>,
    /// Sessions whose answer differed from the oracle's (never expected).
    pub broken: usize,
    /// The first of them: its user message, and where the primary stalled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<String>,
    /// The stall deadline the primary's history gives a new attempt at the end, ms.
    pub final_stall_ms: u64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct StallReport {
    /// What ran.
    pub options: StallBenchOptions,
    /// Per profile.
    pub profiles: Vec<ProfileResult>,
}

impl StallReport {
    /// Whether every answer was intact.
    pub fn intact(&self) -> bool {
        self.profiles.iter().all(|p| p.broken == 0)
    }
}

/// One session's conversation.
fn conversation(profile: Profile, i: usize) -> Vec<Message> {
    vec![Message::new(
        Role::User,
        format!("stall bench {} session {i}", profile.name()),
    )]
}

/// Runs one profile; call on a runtime with a paused clock.
pub async fn run_profile(profile: Profile, options: &StallBenchOptions) -> ProfileResult {
    let plan = Arc::new(Mutex::new(None));
    let oracle = || MockProvider::new(FaultPlan::Fixed(FaultScript::NONE), Style::default());
    let primary = Jittered {
        inner: oracle().with_pacing(Pacing {
            first_token: Duration::from_millis(200),
            interval: Duration::ZERO,
        }),
        plan: plan.clone(),
    };
    let primary = Route::new("primary", "jittered", Arc::new(primary));
    let fallback = Route::new("fallback", "oracle", Arc::new(oracle()));
    let splicer = Splicer::new(Ladder::new(vec![primary.clone(), fallback]));
    let mut events = splicer.subscribe();
    let mut rng = SplitMix::new(options.seed ^ (profile as u64).wrapping_mul(0x9E37_79B9));
    let mut result = ProfileResult {
        profile: profile.name().to_string(),
        ..ProfileResult::default()
    };
    let mut detections = Vec::new();
    let stall_every = options.stall_every;
    let total = options.sessions + options.sessions.checked_div(stall_every).unwrap_or(0);
    for i in 0..total {
        let stalls = stall_every > 0 && (i + 1) % (stall_every + 1) == 0;
        let messages = conversation(profile, i);
        let chunks = crate::oracle::chunks(&answer(&messages), crate::oracle::conversation_hash(&messages)).len();
        let stall_after = stalls.then(|| 1 + rng.below(chunks.saturating_sub(1).max(1) as u64) as usize);
        if let Ok(mut p) = plan.lock() {
            *p = Some(Plan {
                gaps: profile.gaps(&mut rng),
                stall_after,
            });
        }
        let done = splicer.collect(ChatRequest::new(messages.clone())).await;
        if done.text != answer(&messages) {
            result.broken += 1;
            if result.first_broken.is_none() {
                result.first_broken = Some(format!(
                    "{:?} (primary stalled after {stall_after:?} chunks)",
                    messages[0].content
                ));
            }
        }
        let session: Vec<EngineEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        let failure = session.iter().find_map(|e| match &e.kind {
            EventKind::Failure { failure, cause } if failure.route == "primary" => Some((e.t_ms, cause.clone())),
            _ => None,
        });
        if stalls {
            result.stalls += 1;
            if let Some((at, FailureKind::Stall { .. })) = failure {
                result.detected += 1;
                let last = session.iter().rev().find_map(|e| match &e.kind {
                    EventKind::Delta { route, .. } if route == "primary" => Some(e.t_ms),
                    _ => None,
                });
                if let Some(last) = last {
                    detections.push(at.saturating_sub(last));
                }
            }
        } else {
            result.sessions += 1;
            if let Some((_, cause)) = failure {
                result.false_handovers += 1;
                if matches!(cause, FailureKind::Stall { .. }) {
                    result.false_stalls += 1;
                }
            }
        }
    }
    detections.sort_unstable();
    result.detection_p50_ms = crate::stats::percentile(&detections, 50.0);
    result.detection_p99_ms = crate::stats::percentile(&detections, 99.0);
    result.detection_max_ms = detections.last().copied();
    result.rate = if result.sessions == 0 {
        0.0
    } else {
        result.false_handovers as f64 / result.sessions as f64
    };
    result.final_stall_ms = primary.current_stall(&primary.health_for(None)).as_millis() as u64;
    result
}

/// Runs every profile of `options` in virtual time, on a thread of its own.
pub fn run(options: &StallBenchOptions) -> std::io::Result<StallReport> {
    let profiles = crate::record::verify::in_virtual_time(|rt| {
        options
            .profiles
            .iter()
            .map(|p| rt.block_on(run_profile(*p, options)))
            .collect::<Vec<_>>()
    })?;
    Ok(StallReport {
        options: options.clone(),
        profiles,
    })
}

fn ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{v} ms"))
}

impl fmt::Display for StallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "baton bench stall: default stall policy (adaptive, floor {} ms, ceiling {} ms), seed {}, virtual time",
            crate::policy::deadline::DEFAULT_FLOOR.as_millis(),
            crate::engine::watchdog::Deadlines::default().stall.as_millis(),
            o.seed
        )?;
        match o.stall_every {
            0 => writeln!(f, "{} healthy sessions per profile, no real stalls", o.sessions)?,
            n => writeln!(
                f,
                "{} healthy sessions per profile; after every {n}, one that stalls for good after a random chunk",
                o.sessions
            )?,
        }
        writeln!(
            f,
            "{:<12} {:>8} {:>8} {:>9} {:>7} {:>8} {:>9} {:>9} {:>9} {:>10}",
            "profile", "healthy", "false", "rate", "stalls", "detected", "p50", "p99", "max", "stall now"
        )?;
        for p in &self.profiles {
            writeln!(
                f,
                "{:<12} {:>8} {:>8} {:>8.3}% {:>7} {:>8} {:>9} {:>9} {:>9} {:>7} ms",
                p.profile,
                p.sessions,
                p.false_handovers,
                p.rate * 100.0,
                p.stalls,
                p.detected,
                ms(p.detection_p50_ms),
                ms(p.detection_p99_ms),
                ms(p.detection_max_ms),
                p.final_stall_ms
            )?;
        }
        for p in self.profiles.iter().filter(|p| p.broken > 0) {
            writeln!(
                f,
                "BROKEN ({}): {} answers differ from the oracle's; the first: {}",
                p.profile,
                p.broken,
                p.first_broken.as_deref().unwrap_or("?")
            )?;
        }
        Ok(())
    }
}

/// `baton bench stall`: runs, prints, and fails if an answer was not intact.
pub fn main(options: StallBenchOptions, json: bool) -> ExitCode {
    let report = match run(&options) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("baton bench stall: {e}");
            return ExitCode::FAILURE;
        }
    };
    crate::tools::report::finish("baton bench stall", &report, json, report.intact())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_sessions_run_and_their_counts_add_up() {
        let options = StallBenchOptions {
            sessions: 12,
            stall_every: 4,
            seed: 7,
            profiles: vec![Profile::Fast, Profile::Slow],
        };
        let report = run(&options).expect("runs");
        assert!(report.intact(), "{report}");
        assert_eq!(report.profiles.len(), 2);
        for p in &report.profiles {
            assert_eq!(p.sessions, 12, "{p:?}");
            assert_eq!(p.stalls, 3, "{p:?}");
            assert!(p.false_stalls <= p.false_handovers && p.false_handovers <= p.sessions);
            assert!(p.detected <= p.stalls);
            assert_eq!(p.rate, p.false_handovers as f64 / 12.0);
            if let (Some(p50), Some(max)) = (p.detection_p50_ms, p.detection_max_ms) {
                assert!(p50 <= max);
                assert!(max <= 3_000 + 10, "never past the ceiling: {p:?}");
            }
        }
        let text = report.to_string();
        assert!(text.contains("fast") && text.contains("slow"), "{text}");
    }

    #[test]
    fn profiles_draw_the_gaps_they_promise() {
        let mut rng = SplitMix::new(3);
        let draw = |p: Profile, rng: &mut SplitMix| {
            let mut g = p.gaps(rng);
            (0..4000).map(|_| g.next()).collect::<Vec<_>>()
        };
        let fast = draw(Profile::Fast, &mut rng);
        let mut sorted = fast.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        assert!(
            (Duration::from_millis(12)..Duration::from_millis(45)).contains(&median),
            "{median:?}"
        );
        assert!(sorted[sorted.len() - 1] < Duration::from_millis(400));
        let pauses = draw(Profile::Pauses, &mut rng);
        let long = pauses.iter().filter(|g| **g >= Duration::from_millis(300)).count();
        assert!((50..160).contains(&long), "{long} pauses in 4000 gaps");
        assert!(pauses.iter().all(|g| *g < Duration::from_millis(1500)));
        let slow = draw(Profile::Slow, &mut rng);
        assert!(slow
            .iter()
            .all(|g| (Duration::from_millis(150)..Duration::from_millis(2000)).contains(g)));
    }
}
