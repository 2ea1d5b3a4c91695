//! Printing a command-line tool's report: as text, or as one JSON object.

use std::fmt::Display;

use serde::Serialize;

/// Prints `report` as its text or, with `json`, as one line of JSON; `false`
/// (after saying why on stderr, prefixed by `tool`) when it cannot be written.
pub fn print<R: Serialize + Display>(tool: &str, report: &R, json: bool) -> bool {
    if !json {
        println!("{}", report.to_string().trim_end());
        return true;
    }
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
}
