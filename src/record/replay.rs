//! `baton replay`: the command around the reader, the summary and the verifier.
//!
//! Exit status: 0 when everything read and (with `--verify`) every session
//! matched; 1 on any divergence, unreadable or corrupt recording, or a
//! recording from an incompatible version; 2 when nothing diverged but some
//! sessions could not be verified (the recorder had dropped their events).

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::human_bytes;
use super::reader::{self, Recording};
use super::summary::{self, Summary};
use super::verify::{self, Outcome, Verdict};

/// What `baton replay` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No flag: play it in the dashboard (not built yet: prints the summary).
    View,
    /// `--summary`.
    Summary,
    /// `--verify`.
    Verify,
}

/// Runs `baton replay` over `paths`; prints to stdout, problems to stderr.
///
/// Files are read one at a time (a session's events are dropped once it is
/// summarized or verified), so memory stays flat over large directories.
pub fn run(paths: &[PathBuf], mode: Mode, json: bool) -> ExitCode {
    let (files, found) = reader::list(paths);
    let mut read_failed = problems(&found);
    let sessions = match mode {
        Mode::View | Mode::Summary => {
            let mut summaries = Vec::new();
            let (mut read, mut bytes) = (0, 0);
            for file in &files {
                let recording = reader::read_file(file);
                read_failed |= problems(&recording);
                read += recording.files;
                bytes += recording.bytes;
                for s in &recording.sessions {
                    let summary = summary::session(s);
                    if !json {
                        print_line(&summary.to_string());
                    }
                    summaries.push(summary);
                }
            }
            let totals = summary::totals(&summaries, read, bytes);
            let n = summaries.len();
            if json {
                match serde_json::to_string(&Summary {
                    sessions: summaries,
                    totals,
                }) {
                    Ok(line) => print_line(&line),
                    Err(e) => eprintln!("baton replay: {e}"),
                }
            } else if n > 0 {
                print_line(&format!("\n{totals}"));
            }
            if mode == Mode::View && n > 0 {
                eprintln!("baton replay: stdout is not a terminal, so this is the summary instead of the dashboard (`baton replay --verify` re-drives it).");
            }
            n
        }
        Mode::Verify => {
            let verified = verify::in_virtual_time(|rt| {
                let mut totals = VerifyTotals::default();
                let mut verdicts = Vec::new();
                let mut failed = false;
                for file in &files {
                    let recording = reader::read_file(file);
                    failed |= problems(&recording);
                    totals.files += recording.files;
                    totals.bytes += recording.bytes;
                    for s in &recording.sessions {
                        let verdict = rt.block_on(verify::verify_session(s));
                        totals.add(&verdict);
                        if json {
                            verdicts.push(verdict);
                        } else {
                            print_line(&verdict_line(&verdict));
                        }
                    }
                }
                (totals, verdicts, failed)
            });
            let (totals, verdicts, failed) = match verified {
                Ok(verified) => verified,
                Err(e) => {
                    eprintln!("baton replay: cannot re-drive: {e}");
                    return ExitCode::FAILURE;
                }
            };
            read_failed |= failed;
            if json {
                #[derive(Serialize)]
                struct Report<'a> {
                    verdicts: &'a [Verdict],
                    totals: &'a VerifyTotals,
                }
                match serde_json::to_string(&Report {
                    verdicts: &verdicts,
                    totals: &totals,
                }) {
                    Ok(line) => print_line(&line),
                    Err(e) => eprintln!("baton replay: {e}"),
                }
            } else if totals.sessions > 0 {
                print_line(&totals.to_string());
            }
            if totals.sessions > 0 {
                return if read_failed || totals.diverged > 0 || totals.incompatible > 0 || totals.corrupt > 0 {
                    ExitCode::FAILURE
                } else if totals.unverifiable > 0 {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            0
        }
    };
    if sessions == 0 {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        eprintln!("baton replay: no recorded sessions in {}", names.join(", "));
        return ExitCode::FAILURE;
    }
    if read_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Reports `recording`'s warnings and errors on stderr; whether there were errors.
fn problems(recording: &Recording) -> bool {
    for w in &recording.warnings {
        eprintln!("baton replay: warning: {w}");
    }
    for e in &recording.errors {
        eprintln!("baton replay: {e}");
    }
    !recording.errors.is_empty()
}

/// Prints one line to stdout; once stdout is closed (`| head`), prints nothing more.
fn print_line(line: &str) {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    static CLOSED: AtomicBool = AtomicBool::new(false);
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// The line(s) for one verdict.
pub fn verdict_line(v: &Verdict) -> String {
    let mut id = v.session.simple().to_string();
    id.truncate(8);
    let head = |status: &str| format!("{status:<5} {id}  {:<14}", v.ladder);
    let file = v.file.display();
    match &v.outcome {
        Outcome::Ok { partial } => {
            let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
            format!(
                "{}  {}, {}, {} bytes{}  {file}",
                head("ok"),
                plural(v.attempts, "attempt"),
                plural(v.handovers, "handover"),
                v.bytes,
                if *partial {
                    " (partial: the recording stops before the session's end)"
                } else {
                    ""
                }
            )
        }
        Outcome::Diverged(d) => format!(
            "{}  {}  {file}\n      recorded: {}\n      now:      {}",
            head("FAIL"),
            d.what,
            d.recorded,
            d.now
        ),
        Outcome::Unverifiable { reason } => format!("{}  cannot be verified: {reason}  {file}", head("skip")),
        Outcome::Incompatible { reason } => format!(
            "{}  recorded by an incompatible version: {reason}  {file}",
            head("FAIL")
        ),
        Outcome::Corrupt { reason } => format!("{}  {reason}  {file}", head("FAIL")),
    }
}

/// The verifier's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyTotals {
    /// Sessions.
    pub sessions: usize,
    /// Matched.
    pub ok: usize,
    /// Of those, only a recorded prefix.
    pub partial: usize,
    /// Differed.
    pub diverged: usize,
    /// Missing events.
    pub unverifiable: usize,
    /// Incompatible version.
    pub incompatible: usize,
    /// Unreadable lines.
    pub corrupt: usize,
    /// Files read.
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
}

impl VerifyTotals {
    /// Counts one more verdict.
    pub fn add(&mut self, v: &Verdict) {
        self.sessions += 1;
        match &v.outcome {
            Outcome::Ok { partial } => {
                self.ok += 1;
                self.partial += usize::from(*partial);
            }
            Outcome::Diverged(_) => self.diverged += 1,
            Outcome::Unverifiable { .. } => self.unverifiable += 1,
            Outcome::Incompatible { .. } => self.incompatible += 1,
            Outcome::Corrupt { .. } => self.corrupt += 1,
        }
    }
}

impl std::fmt::Display for VerifyTotals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "verified {} session{} from {} file{} ({}): {} ok",
            self.sessions,
            if self.sessions == 1 { "" } else { "s" },
            self.files,
            if self.files == 1 { "" } else { "s" },
            human_bytes(self.bytes),
            self.ok
        )?;
        if self.partial > 0 {
            write!(f, " ({} partial)", self.partial)?;
        }
        write!(f, ", {} diverged", self.diverged)?;
        if self.unverifiable > 0 {
            write!(f, ", {} could not be verified (events missing)", self.unverifiable)?;
        }
        if self.incompatible > 0 {
            write!(f, ", {} from an incompatible version", self.incompatible)?;
        }
        if self.corrupt > 0 {
            write!(f, ", {} corrupt", self.corrupt)?;
        }
        Ok(())
    }
}
