//! The `baton` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use baton::config::Config;
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::script::Pacing;
use baton::oracle::server::{run, MockConfig};
use baton::oracle::Style;
use baton::tools::demo::{run_headless_recorded, DemoOptions};

/// The variable `baton watch` reads the operator key from unless told another.
const DEFAULT_OPERATOR_KEY_ENV: &str = "BATON_OPERATOR_KEY";

/// baton: mid-stream handover for LLM token streams.
///
/// When a model's streamed answer stalls, is cut off, or turns to garbage,
/// baton hands the conversation, with the text already sent, to the next
/// model on a ladder, which continues from exactly that point.
#[derive(Parser, Debug)]
#[command(name = "baton", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run sessions through the splicer against embedded oracle upstreams with
    /// injected faults, and check every answer byte for byte.
    ///
    /// Starts three oracle upstreams on 127.0.0.1 (a primary failing in a random
    /// mix of faults, a fallback that rejects prefill and repeats words, a
    /// healthy instruct fallback) and prints a summary. Exits non-zero if any
    /// session's final text differs from the oracle's answer.
    Demo {
        /// No dashboard: run --sessions sessions at once and print a summary (also what runs without a terminal).
        #[arg(long)]
        headless: bool,
        /// Number of concurrent sessions.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        sessions: u32,
        /// Seed of the primary's fault mix (same seed, same faults).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the summary as one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Record every session to this directory, one JSONL file per session (see `baton replay`).
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
    },
    /// Summarize recorded sessions, or re-drive them through the current splicer.
    ///
    /// Reads recording files (`*.jsonl`, as `baton demo --record` and `baton serve`
    /// with `record_dir` write them) or directories of them. Without a flag it
    /// plays the recording in the dashboard with its original timing when stdout is
    /// a terminal, and prints the summary otherwise.
    /// `--verify` exits 1 on any divergence, 2 if some sessions could not be
    /// verified (events were dropped while recording).
    Replay {
        /// Re-drive every session under virtual time with scripted upstreams built from
        /// the recording, and compare what the client receives now, and the handover
        /// decisions, with what was recorded.
        #[arg(long, conflicts_with = "summary")]
        verify: bool,
        /// Per session: route chain, failures, handovers, gap, bytes, tokens; totals at the end.
        #[arg(long)]
        summary: bool,
        /// Print one JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// Recording files or directories.
        #[arg(required = true, value_name = "FILE|DIR")]
        paths: Vec<PathBuf>,
    },
    /// Run the OpenAI-compatible proxy: point any client's base URL at it.
    ///
    /// Clients ask for a ladder by name as the `model`. Handovers are
    /// announced in streams as SSE comments (`: baton handover …`).
    Serve {
        /// The config file (TOML): [server], [[route]] and [[ladder]] sections.
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
    /// Open the dashboard on a running `baton serve` (its /events feed).
    ///
    /// Reconnects every second if the proxy goes away, showing the status in the header.
    Watch {
        /// The proxy's base URL.
        #[arg(default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Environment variable holding the proxy's operator key (`server.operator_key_env`),
        /// sent as a bearer to /events; default BATON_OPERATOR_KEY, sent only if set.
        #[arg(long, value_name = "NAME", alias = "api-key-env")]
        key_env: Option<String>,
    },
    /// Validate a config file and print the resolved ladders (no secrets).
    Check {
        /// The config file.
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
    /// Serve the mock oracle as an OpenAI-compatible SSE upstream on 127.0.0.1.
    ///
    /// Its answer is a pure function of the conversation; given a prefix of it
    /// (as a final assistant message, or followed by a "continue" user
    /// message) it streams the rest.
    Mock {
        /// Port to listen on (0: any free port; the address is printed).
        #[arg(long, default_value_t = 9001)]
        port: u16,
        /// Fault script: none, stall@K, drop@K, malformed@K, error@K, 429, 429:SECS,
        /// 500, 503, reset, hang, slow:MS, nodone, noprefill, policy, ctx:TOKENS, loop@K;
        /// suffix xN limits it to the first N requests.
        #[arg(long, default_value = "none", conflicts_with_all = ["random_faults", "faults_by_model"])]
        fault: FaultScript,
        /// Instead of one fault, a random mix chosen per conversation with this seed.
        #[arg(long, conflicts_with = "faults_by_model")]
        random_faults: Option<u64>,
        /// Take each request's fault script from its model name, after the last `+`
        /// (`s07+stall@5`; xN counts that model's requests): one server for a whole suite.
        #[arg(long)]
        faults_by_model: bool,
        /// Repeat this many of the prefix's last words when continuing.
        #[arg(long, default_value_t = 0)]
        repeat_words: usize,
        /// Start each continuation with the prefix's trailing whitespace again,
        /// as a provider that strips it from a prefill does.
        #[arg(long)]
        extra_space: bool,
        /// With --random-faults: outages of 503s to every request, as
        /// OFFSET,PERIOD,DOWN in ms (the first OFFSET after start, one per
        /// PERIOD, each DOWN long); outside them half the conversations get the mix.
        #[arg(
            long,
            value_name = "OFFSET,PERIOD,DOWN",
            value_delimiter = ',',
            num_args = 1,
            requires = "random_faults"
        )]
        outage_ms: Option<Vec<u64>>,
        /// Milliseconds between chunks.
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        /// Milliseconds before the first chunk.
        #[arg(long, default_value_t = 20)]
        first_token_ms: u64,
    },
    /// Measure streaming throughput, added latency per chunk and memory per
    /// stream, directly against a stamped mock upstream and through the proxy.
    ///
    /// For each stream count, N concurrent streams run directly, then through a
    /// `baton serve` child process; prints chunks/s, the proxy's added latency
    /// (p50/p99) and, for the proxy process alone, CPU µs and read/write
    /// syscalls per forwarded chunk and memory per stream. Exits non-zero if
    /// any stream failed.
    ///
    /// `baton bench stall` instead measures the stall policy (see `baton bench stall --help`).
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        what: Option<BenchWhat>,
        /// Stream counts to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
        sizes: Vec<usize>,
        /// Which runs to do for each size, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "direct,proxied")]
        modes: Vec<baton::tools::bench::Mode>,
        /// Content chunks per stream.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
        chunks: u32,
        /// Milliseconds between a stream's chunks (0: back to back).
        #[arg(long, default_value_t = 10.0)]
        interval_ms: f64,
        /// Clients connecting at once while the streams ramp up.
        #[arg(long, default_value_t = 1000)]
        connect_concurrency: usize,
        /// Keep one `/events` subscriber on the proxy and record every session
        /// (the proxy's cost with a dashboard and the recorder on).
        #[arg(long)]
        events: bool,
        /// Share the proxy's state through this Redis (`[state] redis_url`,
        /// e.g. redis://127.0.0.1:6379/0): its cost with shared state on.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// Print the report as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Soak the proxy: many sessions through a `baton serve` child against
    /// `baton mock` children with a random fault mix.
    ///
    /// Checks every answer byte for byte against the oracle and reports intact
    /// sessions, lost and doubled bytes, the server's RSS at start, warm-up,
    /// middle and end, its open descriptors after the load drained, and
    /// sessions per second. Exits non-zero if a session was not intact or the
    /// server kept descriptors.
    Soak {
        /// Sessions to run.
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        sessions: u64,
        /// Sessions open at once.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=20_000))]
        concurrency: u64,
        /// Seed of the primary's fault mix (same seed, same faults).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The upstreams' milliseconds between chunks.
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        /// Print the report as one JSON object on stdout.
        /// Share the server's state through this Redis (`[state] redis_url`,
        /// e.g. redis://127.0.0.1:6379/0): the cost per session with it on.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The demo scenario (the demo's, the soak's and demos/'s): print its
    /// `baton serve` config on the fixed demo ports, or one upstream's `baton mock` arguments.
    Scenario {
        /// Print the config (`demos/baton.toml` is this output).
        #[arg(long, conflicts_with = "mock_args")]
        print_config: bool,
        /// Print the `baton mock` arguments of this upstream, one a line, with its demo port.
        #[arg(long, value_name = "UPSTREAM")]
        mock_args: Option<String>,
        /// Seed of the primary's fault mix.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// The default stall policy on healthy jittery streams, in virtual time: false
    /// handovers (a stall declared on a healthy stream) and how fast real stalls are declared.
    ///
    /// Per profile (fast: lognormal gaps around 15–40 ms; pauses: with one gap in 40 a
    /// 0.3–1.5 s pause; rare-pauses: one in 400; slow: a steady 300–900 ms cadence),
    /// runs the sessions one after another on one route, so its gap history evolves as
    /// under traffic, and after every --stall-every of them one that stalls for good.
    /// Prints sessions, false handovers, their rate, and the detection time's median,
    /// p99 and maximum. Exits non-zero if an answer differs from the oracle's.
    Stall {
        /// Healthy sessions per profile.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// After every this many healthy sessions, one that stalls (0: none).
        #[arg(long, default_value_t = 10)]
        stall_every: usize,
        /// Seed of the jitter and the stall positions.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Profiles to run, comma-separated (fast, pauses, rare-pauses, slow).
        #[arg(long, value_delimiter = ',', default_value = "fast,pauses,rare-pauses,slow")]
        profiles: Vec<String>,
        /// Print the report as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// The variable that picks `baton serve`'s runtime: `current` (one thread) or a
/// worker count for the multi-thread runtime; unset, one worker per core.
const SERVE_RUNTIME_ENV: &str = "BATON_SERVE_WORKER_THREADS";

/// What [`SERVE_RUNTIME_ENV`] asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavour {
    /// Tokio's default: multi-thread, one worker per core.
    Default,
    /// One current-thread runtime: no cross-thread wake-ups.
    Current,
    /// Multi-thread with this many workers.
    Workers(usize),
}

impl Flavour {
    /// One line for `baton check`.
    fn describe(self) -> String {
        match self {
            Flavour::Default => format!("multi-thread, one worker per core ({SERVE_RUNTIME_ENV} unset)"),
            Flavour::Current => format!("current-thread, one thread ({SERVE_RUNTIME_ENV}=current)"),
            Flavour::Workers(n) => format!("multi-thread, {n} worker(s) ({SERVE_RUNTIME_ENV}={n})"),
        }
    }
}

/// Reads [`SERVE_RUNTIME_ENV`]; a bad value is an error naming the variable.
fn serve_flavour(value: Option<&str>) -> Result<Flavour, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(Flavour::Default),
        Some("current") => Ok(Flavour::Current),
        Some(n) => match n.parse::<usize>() {
            Ok(n @ 1..=1024) => Ok(Flavour::Workers(n)),
            _ => Err(format!(
                "{SERVE_RUNTIME_ENV}={n:?}: expected \"current\" or a worker count from 1 to 1024"
            )),
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only `serve` takes the knob: the bench and soak pass their environment to
    // their `baton serve` child, and their own harness must not change with it.
    let flavour = match &cli.command {
        Command::Serve { .. } => match serve_flavour(std::env::var(SERVE_RUNTIME_ENV).ok().as_deref()) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("baton serve: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => Flavour::Default,
    };
    let mut builder = match flavour {
        Flavour::Current => tokio::runtime::Builder::new_current_thread(),
        Flavour::Default | Flavour::Workers(_) => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Flavour::Workers(n) = flavour {
        builder.worker_threads(n);
    }
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(run_cli(cli)),
        Err(e) => {
            eprintln!("baton: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_cli(cli: Cli) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Demo {
            headless,
            sessions,
            seed,
            json,
            record,
        } => demo(headless, sessions as usize, seed, json, record).await,
        Command::Replay {
            verify,
            summary,
            json,
            paths,
        } => {
            use baton::record::replay::{run, Mode};
            let mode = match (verify, summary) {
                (true, _) => Mode::Verify,
                (_, true) => Mode::Summary,
                _ => Mode::View,
            };
            if mode == Mode::View && !json && std::io::stdout().is_terminal() {
                return replay_dashboard(&paths).await;
            }
            run(&paths, mode, json)
        }
        Command::Serve { config } => serve(&config).await,
        Command::Watch { url, key_env } => {
            let named = key_env.is_some();
            let var = key_env.unwrap_or_else(|| DEFAULT_OPERATOR_KEY_ENV.to_string());
            let key = match std::env::var(&var) {
                Ok(key) if !key.is_empty() => Some(key),
                // The default variable is optional: a keyless local server needs none.
                _ if !named => None,
                _ => {
                    eprintln!("baton watch: environment variable {var} is not set");
                    return ExitCode::FAILURE;
                }
            };
            dashboard(baton::dashboard::from_url(&url, key), &format!("watching {url}")).await
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(config) => {
                print!("{}", config.describe());
                // The runtime knob is the environment's, not the file's; check it here too
                // so a bad value fails before `baton serve` is started with it.
                match serve_flavour(std::env::var(SERVE_RUNTIME_ENV).ok().as_deref()) {
                    Ok(flavour) => {
                        println!("runtime: {}", flavour.describe());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("baton check: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("baton check: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Mock {
            port,
            fault,
            random_faults,
            faults_by_model,
            repeat_words,
            extra_space,
            outage_ms,
            interval_ms,
            first_token_ms,
        } => {
            let plan = match (random_faults, faults_by_model, outage_ms.as_deref()) {
                (_, true, _) => FaultPlan::ByModel,
                (Some(seed), false, Some(&[offset, period, down])) => FaultPlan::Outage {
                    seed,
                    epoch: tokio::time::Instant::now(),
                    offset: Duration::from_millis(offset),
                    period: Duration::from_millis(period.max(1)),
                    down: Duration::from_millis(down),
                },
                (_, false, Some(_)) => {
                    eprintln!("baton mock: --outage-ms takes three numbers: OFFSET,PERIOD,DOWN");
                    return ExitCode::FAILURE;
                }
                (Some(seed), false, None) => FaultPlan::Random { seed },
                (None, false, None) => FaultPlan::Fixed(fault),
            };
            let config = MockConfig {
                plan,
                style: Style {
                    repeat_words,
                    extra_space,
                },
                pacing: Pacing {
                    first_token: Duration::from_millis(first_token_ms),
                    interval: Duration::from_millis(interval_ms),
                },
            };
            mock(port, config).await
        }
        Command::Scenario {
            print_config,
            mock_args,
            seed,
        } => scenario(print_config, mock_args.as_deref(), seed),
        Command::Bench {
            what:
                Some(BenchWhat::Stall {
                    sessions,
                    stall_every,
                    seed,
                    profiles,
                    json,
                }),
            ..
        } => {
            use baton::tools::stall_bench::{Profile, StallBenchOptions};
            let mut chosen = Vec::new();
            for name in &profiles {
                match Profile::ALL.iter().find(|p| p.name() == name) {
                    Some(p) => chosen.push(*p),
                    None => {
                        eprintln!("baton bench stall: no profile {name:?} (fast, pauses, rare-pauses, slow)");
                        return ExitCode::FAILURE;
                    }
                }
            }
            let options = StallBenchOptions {
                sessions,
                stall_every,
                seed,
                profiles: chosen,
            };
            baton::tools::stall_bench::main(options, json)
        }
        Command::Bench {
            what: None,
            sizes,
            modes,
            chunks,
            interval_ms,
            connect_concurrency,
            events,
            redis,
            json,
        } => {
            let options = baton::tools::bench::BenchOptions {
                sizes,
                modes,
                chunks,
                interval: Duration::from_secs_f64(interval_ms.max(0.0) / 1000.0),
                connect_concurrency,
                events,
                redis_url: redis,
                ..Default::default()
            };
            baton::tools::bench::main(options, json).await
        }
        Command::Soak {
            sessions,
            concurrency,
            seed,
            interval_ms,
            redis,
            json,
        } => {
            let options = baton::tools::soak::SoakOptions {
                sessions: sessions as usize,
                concurrency: concurrency as usize,
                seed,
                interval_ms,
                redis_url: redis,
                ..Default::default()
            };
            baton::tools::soak::main(options, json).await
        }
    }
}

async fn demo(headless: bool, sessions: usize, seed: u64, json: bool, record: Option<PathBuf>) -> ExitCode {
    if let Some(dir) = &record {
        if let Err(e) = baton::record::dir::prepare(dir) {
            eprintln!("baton demo: {e}");
            return ExitCode::FAILURE;
        }
    }
    if !headless {
        if std::io::stdout().is_terminal() {
            return demo_dashboard(seed, record).await;
        }
        eprintln!("baton: stdout is not a terminal; running the headless demo.");
    }
    let record = record.map(baton::record::RecordOptions::new);
    let report = match run_headless_recorded(DemoOptions { sessions, seed }, record).await {
        Ok((report, recorded)) => {
            if let Some(stats) = recorded {
                eprintln!("baton demo: recorded {stats}");
            }
            report
        }
        Err(e) => {
            eprintln!("baton demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("baton demo: could not write the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("baton demo (seed {seed}): a faulty primary, two fallbacks, a reasoning model faulty in its thinking, every answer checked against the oracle\n{report}");
    }
    if report.intact == report.sessions {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn scenario(print_config: bool, upstream: Option<&str>, seed: u64) -> ExitCode {
    use baton::tools::scenario;
    match (print_config, upstream) {
        (true, _) => print!("{}", scenario::demos_config()),
        (false, Some(name)) => {
            let (Some(u), Some(port)) = (
                scenario::UPSTREAMS.iter().find(|u| u.name == name),
                scenario::demo_port(name),
            ) else {
                let names: Vec<&str> = scenario::UPSTREAMS.iter().map(|u| u.name).collect();
                eprintln!("baton scenario: no upstream {name:?} (there are {})", names.join(", "));
                return ExitCode::FAILURE;
            };
            println!("--port\n{port}");
            for arg in scenario::mock_args(u, seed, Some(scenario::DEMOS_OUTAGES)) {
                println!("{arg}");
            }
        }
        (false, None) => {
            for u in scenario::UPSTREAMS {
                println!("{}", u.name);
            }
        }
    }
    ExitCode::SUCCESS
}

async fn mock(port: u16, config: MockConfig) -> ExitCode {
    // Before the address is printed: whoever reads it may signal at once.
    let signals = Signals::listen();
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("baton mock: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("baton mock listening on http://{addr}/v1"),
        Err(e) => {
            eprintln!("baton mock: {e}");
            return ExitCode::FAILURE;
        }
    }
    run(listener, config, signals.shutdown()).await;
    ExitCode::SUCCESS
}

async fn serve(path: &std::path::Path) -> ExitCode {
    // Before the address is printed: whoever reads it may signal at once.
    let signals = Signals::listen();
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("baton serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before listening: a server that cannot record must not look healthy.
    if let Some(dir) = &config.record_dir {
        if let Err(e) = baton::record::dir::prepare(dir) {
            eprintln!("baton serve: {e}");
            return ExitCode::FAILURE;
        }
    }
    let listener = match baton::proxy::bind(config.listen, config.limits.listen_backlog) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("baton serve: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map_or(config.listen, |a| a);
    println!(
        "baton serve listening on http://{addr}/v1 (ladders: {})",
        ladder_names(&config)
    );
    match baton::proxy::serve(listener, &config, signals.shutdown()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton serve: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ladder_names(config: &Config) -> String {
    config
        .ladders
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The process's SIGINT and SIGTERM, taken over from their default (which ends
/// the process) as soon as this exists: the first asks for a graceful
/// shutdown, a second one ends the process at once.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Listens for both signals from now on.
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// The next signal; its exit status were it to end the process (128 + its number).
    async fn next(&mut self) -> i32 {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            if self.term.is_none() && self.int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return 130;
            }
            tokio::select! {
                () = recv(&mut self.term) => 143,
                () = recv(&mut self.int) => 130,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            130
        }
    }

    /// Resolves on the first signal; from then on, a second one exits the process at once.
    async fn shutdown(mut self) {
        self.next().await;
        eprintln!("baton: shutting down; streams in flight may finish (a second signal exits at once)");
        tokio::spawn(async move {
            let status = self.next().await;
            eprintln!("baton: second signal: exiting now");
            std::process::exit(status);
        });
    }
}

/// The demo scenario, continuously, under the live dashboard.
async fn demo_dashboard(seed: u64, record: Option<PathBuf>) -> ExitCode {
    let world = match baton::tools::demo::DemoWorld::start(seed, baton::tools::demo::Outages::LIVE).await {
        Ok(world) => world,
        Err(e) => {
            eprintln!("baton demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let recorder = match record {
        Some(dir) => match baton::record::Recorder::attach(&world.events, baton::record::RecordOptions::new(&dir)) {
            Ok(recorder) => Some(recorder),
            Err(e) => {
                eprintln!("baton demo: cannot record to {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let feed = baton::dashboard::from_broadcast(world.events.subscribe());
    let sessions = tokio::spawn(baton::tools::demo::run_continuous(world, 4.0, seed));
    let code = dashboard(feed, "in-process demo: faulty primary, 2 fallbacks, faulty thinker").await;
    sessions.abort();
    if let Some(recorder) = recorder {
        eprintln!("baton demo: recorded {}", recorder.finish().await);
    }
    code
}

async fn dashboard(feed: baton::dashboard::FeedStream, source: &str) -> ExitCode {
    if !std::io::stdout().is_terminal() {
        eprintln!("baton: the dashboard needs a terminal (stdout is not one)");
        return ExitCode::FAILURE;
    }
    match baton::dashboard::run(baton::dashboard::Source::Live(feed), source).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton: dashboard error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `baton replay FILE|DIR` in a terminal: the recording in the dashboard, with its original timing.
async fn replay_dashboard(paths: &[PathBuf]) -> ExitCode {
    let recording = baton::record::reader::read(paths);
    for warning in &recording.warnings {
        eprintln!("baton replay: warning: {warning}");
    }
    if !recording.errors.is_empty() {
        for error in &recording.errors {
            eprintln!("baton replay: {error}");
        }
        return ExitCode::FAILURE;
    }
    if recording.sessions.is_empty() {
        eprintln!(
            "baton replay: no recorded sessions in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::FAILURE;
    }
    let title = format!("replay of {} sessions", recording.sessions.len());
    let player = baton::dashboard::replay::Player::new(&recording);
    match baton::dashboard::run(baton::dashboard::Source::Replay(Box::new(player)), &title).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton: dashboard error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{serve_flavour, Flavour};

    #[test]
    fn the_serve_runtime_variable_is_read_and_bounded() {
        assert_eq!(serve_flavour(None), Ok(Flavour::Default));
        assert_eq!(serve_flavour(Some("")), Ok(Flavour::Default));
        assert_eq!(serve_flavour(Some("current")), Ok(Flavour::Current));
        assert_eq!(serve_flavour(Some(" 2 ")), Ok(Flavour::Workers(2)));
        for bad in ["0", "1025", "two", "-1"] {
            let e = serve_flavour(Some(bad)).expect_err(bad);
            assert!(e.contains("BATON_SERVE_WORKER_THREADS"), "{e}");
        }
    }
}
