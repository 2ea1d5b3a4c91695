//! The real binary in a real terminal: `baton demo` under tmux, read with
//! `capture-pane`. Ignored by a bare `cargo test` (it needs tmux); `.ci/run`
//! installs tmux and runs it with `--ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::process::Command;
use std::time::{Duration, Instant};

struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "baton"]).unwrap_or_default()
    }

    /// Polls the screen until `test` holds, for at most `limit`.
    fn wait_for(&self, limit: Duration, test: impl Fn(&str) -> bool) -> Result<String, String> {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if test(&screen) {
                return Ok(screen);
            }
            if started.elapsed() > limit {
                return Err(screen);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
#[ignore = "needs tmux; .ci/run installs it and runs this test"]
fn the_demo_dashboard_runs_in_a_real_terminal_and_quits_cleanly() {
    assert!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "this test needs tmux (bash .ci/run installs it)"
    );
    let tmux = Tmux {
        socket: format!("baton-test-{}", std::process::id()),
    };
    // The shell stays a while after baton exits, so the screen can be read.
    let command = format!("{} demo; echo BATON-EXITED-$?; sleep 120", env!("CARGO_BIN_EXE_baton"));
    tmux.run(&["new-session", "-d", "-s", "baton", "-x", "140", "-y", "42", &command])
        .expect("start tmux");

    let screen = tmux
        .wait_for(Duration::from_secs(60), |s| {
            s.contains("Routes") && s.contains("Handover log") && s.contains("Transcript")
        })
        .unwrap_or_else(|s| panic!("the panels did not appear:\n{s}"));
    assert!(screen.contains("LIVE"), "{screen}");

    // A handover reaches the log: a row naming the primary as the route handed over from.
    let screen = tmux
        .wait_for(Duration::from_secs(90), |s| {
            s.lines()
                .skip_while(|l| !l.contains("Handover log"))
                .any(|l| l.contains("primary → "))
        })
        .unwrap_or_else(|s| panic!("no handover in the log:\n{s}"));
    assert!(screen.contains("handovers "), "{screen}");

    // The demo's reasoning route is cut inside its thinking: the log says so.
    tmux.wait_for(Duration::from_secs(90), |s| {
        s.lines()
            .skip_while(|l| !l.contains("Handover log"))
            .any(|l| l.contains("thinker → ") && l.contains("· during reasoning"))
    })
    .unwrap_or_else(|s| panic!("no handover during reasoning in the log:\n{s}"));

    tmux.run(&["send-keys", "-t", "baton", "?"]).expect("send ?");
    tmux.wait_for(Duration::from_secs(20), |s| s.contains("Help · any key closes"))
        .unwrap_or_else(|s| panic!("no help overlay:\n{s}"));
    tmux.run(&["send-keys", "-t", "baton", "Escape"]).expect("close help");
    tmux.run(&["send-keys", "-t", "baton", "q"]).expect("send q");
    let screen = tmux
        .wait_for(Duration::from_secs(30), |s| s.contains("BATON-EXITED-0"))
        .unwrap_or_else(|s| panic!("q did not exit cleanly:\n{s}"));
    assert!(
        !screen.contains("Handover log"),
        "the terminal was not restored:\n{screen}"
    );
}

/// `baton watch` on a `baton serve` child that has an operator key: refused
/// (with the reason in the header) until the key is in `BATON_OPERATOR_KEY`,
/// then connected, and the key is never on the screen.
#[test]
#[ignore = "needs tmux; .ci/run installs it and runs this test"]
fn watch_sends_the_operator_key_from_the_environment() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    assert!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "this test needs tmux (bash .ci/run installs it)"
    );
    const KEY: &str = "op-key-watch-9c2e71";
    let dir = std::env::temp_dir().join(format!("baton-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("baton.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\noperator_key_env = \"WATCH_TEST_OPERATOR_KEY\"\n\
         [[route]]\nname = \"oracle\"\nprovider = \"mock\"\nmodel = \"oracle\"\n\
         [[ladder]]\nname = \"chat\"\nroutes = [\"oracle\"]\n",
    )
    .expect("config");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "-c"])
        .arg(&config)
        .env("WATCH_TEST_OPERATOR_KEY", KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn baton serve");
    let mut line = String::new();
    if let Some(stdout) = serve.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    let result = std::panic::catch_unwind(|| {
        let base = line
            .split_whitespace()
            .find_map(|w| w.strip_suffix("/v1"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        // One tmux server per run: a new session on a server whose last
        // session was just killed races the server's exit.
        let tmux_for = |run: &str| Tmux {
            socket: format!("baton-watch-test-{}-{run}", std::process::id()),
        };
        let watch = |tmux: &Tmux, env: &str| {
            let command = format!("{} watch {base}; sleep 120", env!("CARGO_BIN_EXE_baton"));
            let mut args = vec!["new-session", "-d", "-s", "baton", "-x", "160", "-y", "30"];
            if !env.is_empty() {
                args.extend(["-e", env]);
            }
            args.push(&command);
            tmux.run(&args).expect("start tmux");
        };
        let without = tmux_for("without-key");
        watch(&without, "");
        without
            .wait_for(Duration::from_secs(60), |s| s.contains("401"))
            .unwrap_or_else(|s| panic!("no refusal in the header:\n{s}"));
        drop(without);
        let env = format!("BATON_OPERATOR_KEY={KEY}");
        let tmux = tmux_for("with-key");
        watch(&tmux, &env);
        let screen = tmux
            .wait_for(Duration::from_secs(60), |s| s.contains("connected to"))
            .unwrap_or_else(|s| panic!("not connected:\n{s}"));
        assert!(!screen.contains(KEY), "{screen}");
    });
    let _ = serve.kill();
    let _ = serve.wait();
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
