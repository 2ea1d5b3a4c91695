//! Reading recordings: files or directories of JSONL, grouped into sessions.
//!
//! * A truncated last line (no newline at the end and not parseable: the
//!   process was killed mid-write) is skipped with a warning.
//! * A line with an unknown format version `v`, or one that is not a
//!   recording line, is an error that names the file and the line; the
//!   sessions of that file are marked corrupt.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use uuid::Uuid;

use super::{FORMAT_VERSION, GAP_EVENT};
use crate::engine::event::{EngineEvent, EventKind};

/// A `recording_gap` line: events of the session may be missing after `t_ms`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    /// Where in the session.
    pub t_ms: u64,
    /// Events the recorder lost at that point (of any session).
    pub dropped: u64,
    /// Why.
    pub reason: String,
}

/// One recorded session (of one file).
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedSession {
    /// Its id.
    pub id: Uuid,
    /// The file its lines came from.
    pub path: PathBuf,
    /// Its events, in order.
    pub events: Vec<EngineEvent>,
    /// Where the recorder lost events.
    pub gaps: Vec<Gap>,
    /// The oldest format version among its lines.
    pub version: u32,
    /// A line of its file could not be read.
    pub corrupt: bool,
}

impl RecordedSession {
    /// The file it came from.
    pub fn file(&self) -> &Path {
        &self.path
    }

    /// The ladder name, from its start.
    pub fn ladder(&self) -> &str {
        self.events
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::SessionStarted { ladder, .. } => Some(ladder.as_str()),
                _ => None,
            })
            .unwrap_or("?")
    }

    /// The client API it came through, when its start says (the proxy's sessions).
    pub fn door(&self) -> Option<crate::door::Door> {
        self.events.iter().find_map(|e| match &e.kind {
            EventKind::SessionStarted { request, .. } => request.as_ref().and_then(|r| r.door),
            _ => None,
        })
    }

    /// Whether its last event (`finished` or `failed`) was recorded.
    pub fn ended(&self) -> bool {
        self.events
            .last()
            .is_some_and(|e| matches!(e.kind, EventKind::Finished { .. } | EventKind::Failed { .. }))
    }

    /// The first 8 hex digits of its id.
    pub fn short_id(&self) -> String {
        let mut s = self.id.simple().to_string();
        s.truncate(8);
        s
    }
}

/// Everything read from some paths.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    /// The sessions, in order of first appearance.
    pub sessions: Vec<RecordedSession>,
    /// Recording files read.
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Things skipped that do not make the recording wrong (a truncated last line).
    pub warnings: Vec<String>,
    /// Things that do (unreadable files, corrupt lines, unknown versions), each naming the file and line.
    pub errors: Vec<String>,
}

/// Reads every `*.jsonl` file under each path (a file, or a directory walked recursively in name order).
pub fn read(paths: &[PathBuf]) -> Recording {
    let (files, mut out) = list(paths);
    for file in files {
        out.merge(read_file(&file));
    }
    out
}

/// The recording files under `paths` (no sessions yet: read them one by one with
/// [`read_file`] to keep memory flat), and the problems finding them.
pub fn list(paths: &[PathBuf]) -> (Vec<PathBuf>, Recording) {
    let mut out = Recording::default();
    let mut all = Vec::new();
    for path in paths {
        let mut files = Vec::new();
        if let Err(e) = collect(path, &mut files) {
            out.errors.push(format!("{}: {e}", path.display()));
            continue;
        }
        if files.is_empty() && path.is_dir() {
            out.warnings
                .push(format!("{}: no recording files (*.jsonl) here", path.display()));
        }
        all.extend(files);
    }
    (all, out)
}

/// Reads one recording file.
pub fn read_file(file: &Path) -> Recording {
    match std::fs::read(file) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => read_text(file, &text),
            Err(e) => Recording {
                files: 1,
                bytes: e.as_bytes().len() as u64,
                errors: vec![format!(
                    "{}: not UTF-8 text (byte {}): not a baton recording",
                    file.display(),
                    e.utf8_error().valid_up_to()
                )],
                ..Recording::default()
            },
        },
        Err(e) => Recording {
            errors: vec![format!("{}: cannot read: {e}", file.display())],
            ..Recording::default()
        },
    }
}

impl Recording {
    /// Adds `other` (another file's) to this one.
    pub fn merge(&mut self, other: Recording) {
        self.sessions.extend(other.sessions);
        self.files += other.files;
        self.bytes += other.bytes;
        self.warnings.extend(other.warnings);
        self.errors.extend(other.errors);
    }
}

/// Reads one recording file's text (`file` names it in messages).
pub fn read_text(file: &Path, text: &str) -> Recording {
    let mut out = Builder::default();
    out.rec.files = 1;
    out.rec.bytes = text.len() as u64;
    out.file(file, text);
    out.rec
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect(&entry, files)?;
        } else if entry.extension().is_some_and(|e| e == "jsonl") {
            files.push(entry);
        }
    }
    Ok(())
}

#[derive(Default)]
struct Builder {
    rec: Recording,
    index: HashMap<Uuid, usize>,
}

/// One line, understood.
enum Line {
    Event(Box<EngineEvent>, u32),
    Gap(Uuid, Gap, u32),
}

impl Builder {
    fn session(&mut self, id: Uuid, file: &Path) -> &mut RecordedSession {
        let i = *self.index.entry(id).or_insert_with(|| {
            self.rec.sessions.push(RecordedSession {
                id,
                path: file.to_path_buf(),
                events: Vec::new(),
                gaps: Vec::new(),
                version: FORMAT_VERSION,
                corrupt: false,
            });
            self.rec.sessions.len() - 1
        });
        &mut self.rec.sessions[i]
    }

    fn file(&mut self, file: &Path, text: &str) {
        // Sessions are per file: the same session in two files (a copy, or a session
        // written again after an idle flush) is two recordings.
        self.index.clear();
        let name = file.display();
        let ends_cleanly = text.is_empty() || text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        let mut seen: Vec<Uuid> = Vec::new();
        let mut corrupt_file = false;
        for (i, raw) in lines.iter().enumerate() {
            let number = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let last = number == lines.len();
            match parse(raw) {
                Ok(Line::Event(event, v)) => {
                    let id = event.session;
                    if !seen.contains(&id) {
                        seen.push(id);
                    }
                    let s = self.session(id, file);
                    s.version = s.version.min(v);
                    s.events.push(*event);
                }
                Ok(Line::Gap(id, gap, v)) => {
                    if !seen.contains(&id) {
                        seen.push(id);
                    }
                    let s = self.session(id, file);
                    s.version = s.version.min(v);
                    s.gaps.push(gap);
                }
                Err(Problem::Cut(_)) | Err(Problem::Corrupt(_)) if last && !ends_cleanly => {
                    self.rec.warnings.push(format!(
                        "{name}:{number}: the last line is cut short (the recorder was stopped mid-write); skipped"
                    ));
                }
                Err(problem) => {
                    let (message, session) = match problem {
                        Problem::Version(v, session) => (
                            if v > u64::from(FORMAT_VERSION) {
                                format!("recording format v{v} is newer than this baton reads (v{FORMAT_VERSION}); use a newer baton")
                            } else {
                                format!("unknown recording format v{v} (this baton reads v{FORMAT_VERSION})")
                            },
                            session,
                        ),
                        Problem::NoVersion => ("not a baton recording line (no format version `v`)".to_string(), None),
                        Problem::Cut(e) => (format!("corrupt line: {e}"), None),
                        Problem::Corrupt(e) => (format!("corrupt line: {e}"), None),
                        Problem::BadEvent(e, session) => (format!("corrupt line: {e}"), session),
                    };
                    self.rec.errors.push(format!("{name}:{number}: {message}"));
                    match session {
                        Some(id) => {
                            if !seen.contains(&id) {
                                seen.push(id);
                            }
                            self.session(id, file).corrupt = true;
                        }
                        None => corrupt_file = true,
                    }
                }
            }
        }
        if corrupt_file {
            for id in seen {
                self.session(id, file).corrupt = true;
            }
        }
    }
}

enum Problem {
    /// Not JSON: maybe cut short.
    Cut(serde_json::Error),
    /// JSON, but not an object.
    Corrupt(String),
    NoVersion,
    Version(u64, Option<Uuid>),
    BadEvent(String, Option<Uuid>),
}

fn parse(raw: &str) -> Result<Line, Problem> {
    let value: Value = serde_json::from_str(raw).map_err(Problem::Cut)?;
    let Value::Object(map) = &value else {
        return Err(Problem::Corrupt("not a JSON object".into()));
    };
    let session = map
        .get("session")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    let v = map.get("v").and_then(Value::as_u64).ok_or(Problem::NoVersion)?;
    if v == 0 || v > u64::from(FORMAT_VERSION) {
        return Err(Problem::Version(v, session));
    }
    let v = v as u32;
    if map.get("event").and_then(Value::as_str) == Some(GAP_EVENT) {
        let Some(id) = session else {
            return Err(Problem::BadEvent("a recording_gap line without a session".into(), None));
        };
        let gap = Gap {
            t_ms: map.get("t_ms").and_then(Value::as_u64).unwrap_or(0),
            dropped: map.get("dropped").and_then(Value::as_u64).unwrap_or(0),
            reason: map
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("events are missing")
                .to_string(),
        };
        return Ok(Line::Gap(id, gap, v));
    }
    match serde_json::from_value::<EngineEvent>(value) {
        Ok(event) => Ok(Line::Event(Box::new(event), v)),
        Err(e) => Err(Problem::BadEvent(e.to_string(), session)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00000000-0000-0000-0000-00000000000a";

    fn started(t: u64) -> String {
        format!(r#"{{"v":1,"session":"{A}","t_ms":{t},"event":"session_started","ladder":"l","messages":1}}"#)
    }

    #[test]
    fn a_cut_last_line_is_a_warning_and_a_corrupt_line_an_error() {
        let text = format!("{}\n{}", started(0), &started(1)[..30]);
        let r = read_text(Path::new("cut.jsonl"), &text);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].starts_with("cut.jsonl:2: the last line is cut short"),
            "{:?}",
            r.warnings
        );
        assert_eq!(r.sessions.len(), 1);
        assert!(!r.sessions[0].corrupt);

        let text = format!("{}\n{{\"v\":1,\"sess\n{}\n", started(0), started(2));
        let r = read_text(Path::new("bad.jsonl"), &text);
        assert_eq!(r.errors.len(), 1);
        assert!(r.errors[0].starts_with("bad.jsonl:2: corrupt line"), "{:?}", r.errors);
        assert!(r.sessions[0].corrupt);
    }

    #[test]
    fn unknown_versions_and_events_name_the_line() {
        let text = format!(
            "{}\n{}\n{}\n",
            started(0),
            started(1).replace("\"v\":1", "\"v\":7"),
            started(2).replace("session_started", "teleported")
        );
        let r = read_text(Path::new("x.jsonl"), &text);
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert!(
            r.errors[0].starts_with("x.jsonl:2: recording format v7 is newer"),
            "{:?}",
            r.errors
        );
        assert!(
            r.errors[1].starts_with("x.jsonl:3: corrupt line") && r.errors[1].contains("teleported"),
            "{:?}",
            r.errors
        );
        assert!(r.sessions[0].corrupt);
    }

    #[test]
    fn gap_lines_are_kept_apart() {
        let gap = super::super::gap_line(Uuid::parse_str(A).expect("uuid"), 5, 3, "lost");
        let r = read_text(Path::new("g.jsonl"), &format!("{}\n{gap}\n", started(0)));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.sessions[0].events.len(), 1);
        assert_eq!(
            r.sessions[0].gaps,
            vec![Gap {
                t_ms: 5,
                dropped: 3,
                reason: "lost".into()
            }]
        );
    }
}
