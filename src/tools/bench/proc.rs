//! Child processes of the current executable and what `/proc` says about a
//! process: shared by `baton bench` and `baton soak`, so both measure the
//! proxy the same way, in a process of its own.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child as ChildProcess, ChildStdout, Command};

/// How long a child may take to print where it listens.
const STARTUP: Duration = Duration::from_secs(20);

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The process could not be started.
    #[error("cannot start `baton {what}`: {source}")]
    Spawn {
        /// Which command.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// It did not say where it listens.
    #[error("`baton {what}` did not print its address: {detail}")]
    Startup {
        /// Which command.
        what: String,
        /// What it printed or why reading failed.
        detail: String,
    },
}

/// A `baton serve` or `baton mock` child that is stopped when dropped.
pub(crate) struct Child {
    child: ChildProcess,
    /// Its pid, for `/proc/<pid>/…`.
    pub(crate) pid: u32,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Kept open: a child printing to a closed pipe would fail.
    _stdout: BufReader<ChildStdout>,
}

impl Child {
    /// Starts `exe args…` and waits for its `… listening on http://ADDR/v1` line.
    pub(crate) async fn start(exe: &Path, args: &[String], stderr: Stdio) -> Result<Child, ChildError> {
        let what = args.first().cloned().unwrap_or_default();
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ChildError::Spawn {
                what: what.clone(),
                source,
            })?;
        let startup = |detail: String| ChildError::Startup {
            what: what.clone(),
            detail,
        };
        let pid = child.id().ok_or_else(|| startup("it exited at once".into()))?;
        let stdout = child.stdout.take().ok_or_else(|| startup("no stdout".into()))?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        match tokio::time::timeout(STARTUP, stdout.read_line(&mut line)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(startup(e.to_string())),
            Err(_) => return Err(startup(format!("nothing within {} s", STARTUP.as_secs()))),
        }
        let addr = listening_address(&line).ok_or_else(|| startup(format!("{:?}", line.trim_end())))?;
        Ok(Child {
            child,
            pid,
            addr,
            _stdout: stdout,
        })
    }

    /// `/proc/<pid>/…` of this child.
    pub(crate) fn proc(&self, what: &str) -> String {
        format!("/proc/{}/{what}", self.pid)
    }

    /// Its resident set now (KiB; 0 when unreadable).
    pub(crate) fn rss_kib(&self) -> u64 {
        status_kib_of(&self.proc("status"), "VmRSS:").unwrap_or(0)
    }

    /// Its open file descriptors now.
    pub(crate) fn open_fds(&self) -> usize {
        std::fs::read_dir(self.proc("fd")).map_or(0, |d| d.count())
    }

    /// Its CPU time and read/write syscalls so far.
    pub(crate) fn counters(&self) -> Option<Counters> {
        Counters::of(self.pid)
    }

    /// SIGTERM, then a kill if it has not exited within a few seconds.
    pub(crate) async fn stop(mut self) {
        #[cfg(unix)]
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The address in a `baton mock`/`baton serve` startup line.
pub(crate) fn listening_address(line: &str) -> Option<SocketAddr> {
    let rest = line.split_once("listening on http://")?.1;
    rest.split_once("/v1")?.0.parse().ok()
}

/// A `kB` field (`VmRSS:` …) of a `/proc/<pid>/status` file.
pub(crate) fn status_kib_of(path: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A process's cumulative CPU time and syscall counts, all its threads
/// (living and exited) together; two readings subtracted give a run's cost.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Counters {
    /// User CPU time (µs): `utime` of `/proc/<pid>/stat`, clock ticks converted.
    pub(crate) user_us: f64,
    /// System CPU time (µs): `stime`, likewise.
    pub(crate) sys_us: f64,
    /// `syscr` of `/proc/<pid>/io`: the kernel counts read(2), readv(2),
    /// pread and sendfile here, never recv/recvfrom/recvmsg; std (so tokio)
    /// reads a TCP socket with recvfrom(2), so socket reads are not in it.
    pub(crate) syscr: u64,
    /// `syscw`: write(2), writev(2), pwrite, sendfile; not send/sendto/sendmsg
    /// (std writes a TCP socket with write(2)/writev(2), so those are in it).
    pub(crate) syscw: u64,
}

impl Counters {
    /// The counters of process `pid` now (`None` off Linux or when unreadable).
    pub(crate) fn of(pid: u32) -> Option<Counters> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
        Counters::parse(&stat, &io, clock_ticks_per_s()?)
    }

    fn parse(stat: &str, io: &str, ticks_per_s: f64) -> Option<Counters> {
        // The command name (field 2) is in parentheses and may hold spaces:
        // fields are counted after its closing one, where field 3 is first.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
        let to_us = |t: u64| t as f64 * 1e6 / ticks_per_s;
        let io_field = |name: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim().parse::<u64>().ok())
        };
        Some(Counters {
            user_us: to_us(ticks(14)?),
            sys_us: to_us(ticks(15)?),
            syscr: io_field("syscr:")?,
            syscw: io_field("syscw:")?,
        })
    }

    /// What happened between `earlier` and `self`.
    pub(crate) fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            user_us: (self.user_us - earlier.user_us).max(0.0),
            sys_us: (self.sys_us - earlier.sys_us).max(0.0),
            syscr: self.syscr.saturating_sub(earlier.syscr),
            syscw: self.syscw.saturating_sub(earlier.syscw),
        }
    }
}

/// `sysconf(_SC_CLK_TCK)`: the unit of `/proc/<pid>/stat`'s times.
#[cfg(unix)]
fn clock_ticks_per_s() -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then_some(ticks as f64)
}

#[cfg(not(unix))]
fn clock_ticks_per_s() -> Option<f64> {
    None
}

/// Samples the `VmRSS` of one `/proc/<pid>/status` every 10 ms on a thread of
/// its own, keeping the largest.
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    /// Starts sampling `status` (a `/proc/<pid>/status` path).
    pub(crate) fn start(status: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let read = || status_kib_of(&status, "VmRSS:").unwrap_or(0);
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(read());
                std::thread::sleep(Duration::from_millis(10));
            }
            peak.max(read())
        });
        RssSampler { stop, thread }
    }

    /// Stops sampling; the largest `VmRSS` seen (KiB).
    pub(crate) fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_lines_give_the_address() {
        assert_eq!(
            listening_address("baton mock listening on http://127.0.0.1:4100/v1\n"),
            Some(SocketAddr::from(([127, 0, 0, 1], 4100)))
        );
        assert_eq!(
            listening_address("baton serve listening on http://127.0.0.1:9/v1 (ladders: a, b)"),
            Some(SocketAddr::from(([127, 0, 0, 1], 9)))
        );
        assert_eq!(listening_address("error: no"), None);
    }

    #[test]
    fn stat_and_io_give_cpu_and_syscalls() {
        // A command name with a space and a parenthesis, as a process may choose.
        let stat = "4242 (bat on) R 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        let io = "rchar: 10\nwchar: 20\nsyscr: 1234\nsyscw: 567\nread_bytes: 0\n";
        let c = Counters::parse(stat, io, 100.0).expect("parsed");
        assert_eq!(c.user_us, 2_500_000.0);
        assert_eq!(c.sys_us, 750_000.0);
        assert_eq!((c.syscr, c.syscw), (1234, 567));
        let later = Counters {
            user_us: 3_000_000.0,
            syscr: 1300,
            ..c
        };
        let d = later.since(&c);
        assert_eq!((d.user_us, d.sys_us, d.syscr, d.syscw), (500_000.0, 0.0, 66, 0));
        assert_eq!(Counters::parse("no parenthesis", io, 100.0), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_counters() {
        let c = Counters::of(std::process::id()).expect("readable /proc/self");
        assert!(c.syscr > 0 && c.user_us + c.sys_us >= 0.0);
    }
}
