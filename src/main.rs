//! The `baton` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use baton::config::Config;
use baton::demo::{run_headless, DemoOptions};
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::script::Pacing;
use baton::oracle::server::{run, MockConfig};
use baton::oracle::Style;

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
        /// Print the summary only (the live dashboard is not built yet, so this is also what runs without it).
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
        /// 500, 503, reset, hang, slow:MS, nodone, noprefill, policy; suffix xN
        /// limits it to the first N requests.
        #[arg(long, default_value = "none", conflicts_with = "random_faults")]
        fault: FaultScript,
        /// Instead of one fault, a random mix chosen per conversation with this seed.
        #[arg(long)]
        random_faults: Option<u64>,
        /// Repeat this many of the prefix's last words when continuing.
        #[arg(long, default_value_t = 0)]
        repeat_words: usize,
        /// Milliseconds between chunks.
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        /// Milliseconds before the first chunk.
        #[arg(long, default_value_t = 20)]
        first_token_ms: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Demo {
            headless,
            sessions,
            seed,
            json,
        } => demo(headless, sessions as usize, seed, json).await,
        Command::Serve { config } => serve(&config).await,
        Command::Check { config } => match Config::load(&config) {
            Ok(config) => {
                print!("{}", config.describe());
                ExitCode::SUCCESS
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
            repeat_words,
            interval_ms,
            first_token_ms,
        } => {
            let plan = match random_faults {
                Some(seed) => FaultPlan::Random { seed },
                None => FaultPlan::Fixed(fault),
            };
            let config = MockConfig {
                plan,
                style: Style {
                    repeat_words,
                    extra_space: false,
                },
                pacing: Pacing {
                    first_token: Duration::from_millis(first_token_ms),
                    interval: Duration::from_millis(interval_ms),
                },
            };
            mock(port, config).await
        }
    }
}

async fn demo(headless: bool, sessions: usize, seed: u64, json: bool) -> ExitCode {
    if !headless {
        if std::io::stdout().is_terminal() {
            eprintln!("baton: the live dashboard is not built yet; running the headless demo.");
        } else {
            eprintln!("baton: stdout is not a terminal; running the headless demo.");
        }
    }
    let report = match run_headless(DemoOptions { sessions, seed }).await {
        Ok(report) => report,
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
        println!("baton demo (seed {seed}): a faulty primary, two fallbacks, every answer checked against the oracle\n{report}");
    }
    if report.intact == report.sessions {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn mock(port: u16, config: MockConfig) -> ExitCode {
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
    run(listener, config, shutdown_signal()).await;
    ExitCode::SUCCESS
}

async fn serve(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("baton serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
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
    match baton::proxy::serve(listener, &config, shutdown_signal()).await {
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

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    eprintln!("baton: shutting down; streams in flight may finish");
}
