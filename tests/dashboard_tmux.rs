//! The real binary in a real terminal: `baton demo` under tmux, read with
//! `capture-pane`. Ignored by a bare `cargo test` (it needs tmux); `.ci/run`
//! installs tmux and runs it with `--ignored`.

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
