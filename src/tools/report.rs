//! Ending a command-line tool: its report as text or as one JSON object, and its exit code.

use std::fmt::Display;
use std::process::ExitCode;

use serde::Serialize;

/// Prints `report` as its text or, with `json`, as one line of JSON; success
/// when it was written and the run was `ok` (a report that cannot be written
/// says why on stderr, prefixed by `tool`).
pub fn finish<R: Serialize + Display>(tool: &str, report: &R, json: bool, ok: bool) -> ExitCode {
    let written = if json {
        match serde_json::to_string(report) {
            Ok(line) => {
                println!("{line}");
                true
            }
            Err(e) => {
                eprintln!("{tool}: cannot write the report: {e}");
                false
            }
        }
    } else {
        println!("{}", report.to_string().trim_end());
        true
    };
    if written && ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
