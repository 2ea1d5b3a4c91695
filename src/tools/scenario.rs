//! The demo scenario, written once as data: its oracle upstreams, its routes
//! and its ladders. The headless and live demo build their in-process world
//! from it ([`crate::tools::demo::DemoWorld::start`]), `baton soak` renders
//! its `baton serve` config and its `baton mock` arguments from it, and
//! `demos/baton.toml` is [`render_config`] with the fixed demo ports
//! (a test compares the two).

use std::fmt::Write as _;

use crate::continuation::ContinuationMode;
use crate::policy::overlap::OverlapMode;

/// Which faults an upstream plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Faults {
    /// The flaky primary: a random fault mix per conversation (seeded by the
    /// run), with outages where the runner asks for them.
    Flaky,
    /// One fault script for every request (`baton mock --fault`).
    Fixed(&'static str),
    /// The script comes from each request's model name (`baton mock --faults-by-model`).
    ByModel,
}

/// One oracle upstream.
#[derive(Clone, Copy, Debug)]
pub struct Upstream {
    /// Its name, used by [`Route::upstream`].
    pub name: &'static str,
    /// Its faults.
    pub faults: Faults,
    /// Words of the prefix it repeats when continuing.
    pub repeat_words: usize,
    /// Whether it starts a continuation with the prefix's trailing whitespace again.
    pub extra_space: bool,
    /// Its own time between chunks, when not the run's (ms).
    pub interval_ms: Option<u64>,
}

/// How a route's breaker behaves in the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breaker {
    /// The defaults.
    Default,
    /// The flaky primary's: opens on a run of failures only an outage makes
    /// likely, and probes again soon, so the demo shows it open and close.
    Flaky,
    /// Never opens: each of its models is a scenario of its own that may always fail.
    Never,
}

/// Consecutive failures that open the [`Breaker::Flaky`] breaker.
pub const FLAKY_CONSECUTIVE_FAILURES: u32 = 8;

/// One route.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// Its name.
    pub name: &'static str,
    /// The [`Upstream`] it calls.
    pub upstream: &'static str,
    /// The model it asks for (`{model}`: the client's).
    pub model: &'static str,
    /// How it continues a cut answer.
    pub continuation: ContinuationMode,
    /// How it treats a repeat at the seam.
    pub overlap: OverlapMode,
    /// First-token deadline (ms).
    pub ttft_ms: u64,
    /// Stall deadline (ms).
    pub stall_ms: u64,
    /// Whole-answer deadline (ms).
    pub total_ms: u64,
    /// Its breaker.
    pub breaker: Breaker,
}

/// One ladder: routes in order.
#[derive(Clone, Copy, Debug)]
pub struct Ladder {
    /// Its name, the model clients ask for.
    pub name: &'static str,
    /// Its routes, first tried first.
    pub routes: &'static [&'static str],
}

/// The upstreams, in the order of their fixed demo ports (9001, 9002, …).
pub const UPSTREAMS: &[Upstream] = &[
    Upstream {
        name: "primary",
        faults: Faults::Flaky,
        repeat_words: 0,
        extra_space: false,
        interval_ms: None,
    },
    Upstream {
        name: "echo",
        faults: Faults::Fixed("noprefill"),
        repeat_words: 2,
        extra_space: false,
        interval_ms: None,
    },
    Upstream {
        name: "steady",
        faults: Faults::Fixed("none"),
        repeat_words: 1,
        extra_space: true,
        interval_ms: None,
    },
    // The reasoning model thinks slower than the others answer, so its thinking outlasts its first-token deadline.
    Upstream {
        name: "thinker",
        faults: Faults::ByModel,
        repeat_words: 0,
        extra_space: false,
        interval_ms: Some(10),
    },
];

const FAST: (u64, u64) = (1500, 400);
const PATIENT: (u64, u64) = (5000, 2000);
/// Thinking is tokens: 40 to 70 thoughts at 10 ms outlast the 300 ms first-token deadline.
const THINKING: (u64, u64) = (300, 400);
const TOTAL_MS: u64 = 60_000;

const fn route(
    name: &'static str,
    upstream: &'static str,
    model: &'static str,
    (ttft_ms, stall_ms): (u64, u64),
    breaker: Breaker,
) -> Route {
    Route {
        name,
        upstream,
        model,
        continuation: ContinuationMode::Prefill,
        overlap: OverlapMode::Auto,
        ttft_ms,
        stall_ms,
        total_ms: TOTAL_MS,
        breaker,
    }
}

const fn instruct_echoing(r: Route) -> Route {
    // It echoes a word on every continuation, and says so: one word after a
    // space is otherwise as likely a genuine repeat, and kept.
    Route {
        continuation: ContinuationMode::Instruct,
        overlap: OverlapMode::Always,
        ..r
    }
}

/// The routes.
pub const ROUTES: &[Route] = &[
    route("primary", "primary", "oracle-large", FAST, Breaker::Flaky),
    route("echo", "echo", "oracle-echo", PATIENT, Breaker::Default),
    instruct_echoing(route("steady", "steady", "oracle-small", PATIENT, Breaker::Default)),
    route("thinker", "thinker", "{model}", THINKING, Breaker::Never),
    instruct_echoing(route(
        "steady-think",
        "steady",
        "oracle-think-small",
        PATIENT,
        Breaker::Default,
    )),
];

/// The ladders: two orders of the fallbacks, so both take part, then the reasoning ladder.
pub const LADDERS: &[Ladder] = &[
    Ladder {
        name: "echo-first",
        routes: &["primary", "echo", "steady"],
    },
    Ladder {
        name: "steady-first",
        routes: &["primary", "steady", "echo"],
    },
    Ladder {
        name: "thinking",
        routes: &["thinker", "steady-think", "steady"],
    },
];

/// The route named `name`.
pub fn route_named(name: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.name == name)
}

/// The fixed demo port of upstream `name` (9001 for the first).
pub fn demo_port(name: &str) -> Option<u16> {
    let i = UPSTREAMS.iter().position(|u| u.name == name)?;
    u16::try_from(9001 + i).ok()
}

/// The primary's outages, for `baton mock --outage-ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutageMs {
    /// The first begins this long after the mock starts.
    pub offset: u64,
    /// One per period.
    pub period: u64,
    /// Each lasts this long.
    pub down: u64,
}

/// The `baton mock` arguments of `upstream` (without port or pacing).
pub fn mock_args(upstream: &Upstream, seed: u64, outages: Option<OutageMs>) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    match upstream.faults {
        Faults::Flaky => {
            args.extend(["--random-faults".into(), seed.to_string()]);
            if let Some(o) = outages {
                args.extend(["--outage-ms".into(), format!("{},{},{}", o.offset, o.period, o.down)]);
            }
        }
        Faults::Fixed("none") => {}
        Faults::Fixed(script) => args.extend(["--fault".into(), script.into()]),
        Faults::ByModel => args.push("--faults-by-model".into()),
    }
    if upstream.repeat_words > 0 {
        args.extend(["--repeat-words".into(), upstream.repeat_words.to_string()]);
    }
    if upstream.extra_space {
        args.push("--extra-space".into());
    }
    if let Some(ms) = upstream.interval_ms {
        args.extend(["--interval-ms".into(), ms.to_string()]);
    }
    args
}

/// What [`render_config`] writes beyond the scenario itself.
#[derive(Clone, Copy)]
pub struct Render<'a> {
    /// `[server] listen`.
    pub listen: &'a str,
    /// The `host:port` of each upstream, by name.
    pub addr: &'a dyn Fn(&str) -> String,
    /// The flaky breaker's shortest cool-down (ms); `None`: no breaker ever
    /// opens (the soak is about every fault, every time, not about skipping the primary).
    pub flaky_cool_down_ms: Option<u64>,
    /// The file's first comment lines.
    pub header: &'a str,
}

/// The scenario as a `baton serve` config.
pub fn render_config(r: &Render<'_>) -> String {
    let mut out = String::new();
    out.push_str(r.header);
    let _ = write!(out, "\n[server]\nlisten = \"{}\"\nshutdown_grace_ms = 1000\n", r.listen);
    for route in ROUTES {
        let _ = write!(
            out,
            "\n[[route]]\nname = \"{}\"\nprovider = \"openai\"\nbase_url = \"http://{}/v1\"\nmodel = \"{}\"\n",
            route.name,
            (r.addr)(route.upstream),
            route.model
        );
        if route.continuation != ContinuationMode::Prefill {
            let _ = writeln!(out, "continuation = \"{}\"", route.continuation.as_str());
        }
        if route.overlap != OverlapMode::Auto {
            let _ = writeln!(out, "overlap = \"{}\"", route.overlap.as_str());
        }
        let _ = write!(
            out,
            "ttft_ms = {}\nstall_ms = {}\ntotal_ms = {}\n",
            route.ttft_ms, route.stall_ms, route.total_ms
        );
        match (route.breaker, r.flaky_cool_down_ms) {
            (_, None) | (Breaker::Never, _) => {
                out.push_str("breaker_consecutive_failures = 1000000000\nbreaker_failure_rate = 1.0\n")
            }
            (Breaker::Flaky, Some(ms)) => {
                let _ = write!(
                    out,
                    "breaker_consecutive_failures = {FLAKY_CONSECUTIVE_FAILURES}\nbreaker_failure_rate = 1.0\nbreaker_cooldown_ms = {ms}\nbreaker_max_cooldown_ms = {}\n",
                    ms * 4
                );
            }
            (Breaker::Default, Some(_)) => {}
        }
    }
    for ladder in LADDERS {
        let routes: Vec<String> = ladder.routes.iter().map(|r| format!("\"{r}\"")).collect();
        let _ = write!(
            out,
            "\n[[ladder]]\nname = \"{}\"\nroutes = [{}]\n",
            ladder.name,
            routes.join(", ")
        );
    }
    out
}

/// The live demo's outages, as `demos/` runs them.
pub const DEMOS_OUTAGES: OutageMs = OutageMs {
    offset: 12_000,
    period: 40_000,
    down: 8_000,
};

/// The primary breaker's cool-down in `demos/` (the live demo's).
pub const DEMOS_COOL_DOWN_MS: u64 = 2000;

/// `demos/baton.toml`: the scenario on the fixed demo ports, the proxy on 8080.
pub fn demos_config() -> String {
    let addr = |name: &str| format!("127.0.0.1:{}", demo_port(name).unwrap_or(0));
    render_config(&Render {
        listen: "127.0.0.1:8080",
        addr: &addr,
        flaky_cool_down_ms: Some(DEMOS_COOL_DOWN_MS),
        header: "# baton serve --config demos/baton.toml\n\
                 # The demo scenario (src/tools/scenario.rs; `baton scenario --print-config` writes this file):\n\
                 # its `baton mock` upstreams are started by demos/proxy-demo.sh (`baton scenario --mock-args`).\n",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_ladder_refers_to_what_exists() {
        for r in ROUTES {
            assert!(UPSTREAMS.iter().any(|u| u.name == r.upstream), "{}", r.name);
        }
        for l in LADDERS {
            for r in l.routes {
                assert!(route_named(r).is_some(), "{} in {}", r, l.name);
            }
        }
    }

    #[test]
    fn fixed_scripts_parse_and_hold_for_every_request() {
        use crate::oracle::fault::{Fault, FaultScript};
        for u in UPSTREAMS {
            if let Faults::Fixed(script) = u.faults {
                let parsed: FaultScript = script.parse().unwrap();
                assert_eq!(parsed.for_request(5), parsed.for_request(0), "{script}");
            }
        }
        let echo: FaultScript = "noprefill".parse().unwrap();
        assert_eq!(echo, FaultScript::always(Fault::RejectPrefill));
    }

    #[test]
    fn demos_config_parses() {
        let config = crate::config::Config::parse("demos/baton.toml", &demos_config(), &|_| None);
        assert!(config.is_ok(), "{config:?}");
    }

    #[test]
    fn mock_args_say_everything_the_upstream_is() {
        let steady = UPSTREAMS
            .iter()
            .find(|u| u.name == "steady")
            .map(|u| mock_args(u, 1, None));
        assert_eq!(
            steady,
            Some(vec!["--repeat-words".into(), "1".into(), "--extra-space".into()])
        );
        let primary = mock_args(&UPSTREAMS[0], 7, Some(DEMOS_OUTAGES));
        assert_eq!(primary, ["--random-faults", "7", "--outage-ms", "12000,40000,8000"]);
    }
}
