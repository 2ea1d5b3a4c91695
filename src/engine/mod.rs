//! The engine: the splicer and what runs inside one session (the watchdog
//! around each upstream stream, the events it emits), plus the process-wide
//! live gauges and the active prober.

pub mod event;
pub mod probe;
pub mod splice;
pub mod watchdog;
