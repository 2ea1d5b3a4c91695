//! The bench's report: per stream count, the comparison of both runs, the
//! targets, and the table.

use super::*;

// ----------------------------------------------------------------- report

/// Facts about the machine the figures came from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPUs available to the process.
    pub cpus: usize,
    /// RLIMIT_NOFILE (soft, hard) before the bench raised it.
    pub fd_limit_before: (u64, u64),
    /// RLIMIT_NOFILE (soft, hard) the bench runs with.
    pub fd_limit: (u64, u64),
    /// `net.core.somaxconn` (caps every listen backlog).
    pub somaxconn: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: Option<String>,
    /// `net.ipv4.tcp_tw_reuse`.
    pub tcp_tw_reuse: Option<u64>,
}

/// One stream count: both runs and the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct SizeResult {
    /// N.
    pub streams: usize,
    /// Clients → upstream (unless `--modes` left it out).
    pub direct: Option<RunResult>,
    /// Clients → proxy → upstream (unless `--modes` left it out).
    pub proxied: Option<RunResult>,
    /// Proxied chunks/s over direct chunks/s.
    pub ratio: Option<f64>,
    /// Proxied p50 latency minus direct p50 (ms).
    pub added_p50_ms: Option<f64>,
    /// Proxied p99 latency minus direct p99 (ms).
    pub added_p99_ms: Option<f64>,
}

impl SizeResult {
    pub(super) fn new(streams: usize, direct: Option<RunResult>, proxied: Option<RunResult>) -> Self {
        let (d, p) = (direct.as_ref(), proxied.as_ref());
        let added = |q: fn(&RunResult) -> Option<u64>| Some((q(p?)? as f64 - q(d?)? as f64) / 1000.0);
        SizeResult {
            streams,
            ratio: match (d, p) {
                (Some(d), Some(p)) if d.chunks_per_s > 0.0 => Some(p.chunks_per_s / d.chunks_per_s),
                _ => None,
            },
            added_p50_ms: added(|r| r.latency_p50_us),
            added_p99_ms: added(|r| r.latency_p99_us),
            direct,
            proxied,
        }
    }

    pub(super) fn runs(&self) -> impl Iterator<Item = &RunResult> {
        self.direct.iter().chain(self.proxied.iter())
    }

    pub(super) fn errors(&self) -> usize {
        self.runs().map(|r| r.errors).sum()
    }
}

/// Everything the bench measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The machine.
    pub machine: Machine,
    /// What ran.
    pub options: BenchOptions,
    /// One entry per stream count.
    pub results: Vec<SizeResult>,
    /// The targets, checked against the results.
    pub targets: Vec<Target>,
}

/// One target and whether the run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// What is asked.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met?
    pub met: bool,
}

/// Issue 14's targets: at 100 and 1,000 streams ≤ 10 µs of proxy CPU per
/// chunk; at 1,000 streams ≥ 0.9 × the direct rate and added p99 ≤ 5 ms;
/// 10,000 concurrent streams through the proxy with no errors.
pub(super) fn targets(results: &[SizeResult]) -> Vec<Target> {
    let mut targets = Vec::new();
    for r in results {
        let proxy = r.proxied.as_ref().and_then(|p| p.proxy.as_ref());
        if let (true, Some(p)) = (r.streams == 100 || r.streams == 1_000, proxy) {
            targets.push(Target {
                target: format!("{} streams: proxy CPU per chunk ≤ 10 µs", r.streams),
                measured: format!("{:.1} µs", p.cpu_us_per_chunk),
                met: p.cpu_us_per_chunk <= 10.0,
            });
        }
        if r.streams == 1_000 {
            if let Some(ratio) = r.ratio {
                targets.push(Target {
                    target: "1000 streams: proxied chunks/s ≥ 0.9 × direct".into(),
                    measured: format!("{ratio:.2} ×"),
                    met: ratio >= 0.9,
                });
            }
            if let Some(added) = r.added_p99_ms {
                targets.push(Target {
                    target: "1000 streams: added p99 per chunk ≤ 5 ms".into(),
                    measured: format!("{added:+.3} ms"),
                    met: added <= 5.0,
                });
            }
        }
        if r.streams == 10_000 {
            if let Some(p) = &r.proxied {
                targets.push(Target {
                    target: "10000 concurrent streams through the proxy, no errors".into(),
                    measured: format!(
                        "{} held at once, {} complete, {} errors",
                        p.arrived_before_go, p.ok, p.errors
                    ),
                    met: p.arrived_before_go == p.streams && p.errors == 0,
                });
            }
        }
    }
    targets
}

pub(super) fn ms(us: Option<u64>) -> String {
    us.map_or("-".into(), |us| format!("{:.3}", us as f64 / 1000.0))
}

pub(super) fn signed_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:+.3}"))
}

pub(super) fn fixed(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "{} chunks per stream, {} ms apart{}; {} CPUs; fd limit {} (soft) / {} (hard)",
            o.chunks,
            o.interval.as_secs_f64() * 1000.0,
            if o.interval.is_zero() { " (unpaced)" } else { "" },
            self.machine.cpus,
            self.machine.fd_limit.0,
            self.machine.fd_limit.1
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:>7}  {:>9}  {:>15}  {:>16}  {:>5}  {:>12}  {:>12}  {:>18}  {:>20}  {:>16}  {:>6}",
            "streams",
            "offered/s",
            "direct chunks/s",
            "proxied chunks/s",
            "ratio",
            "added p50 ms",
            "added p99 ms",
            "proxy CPU µs/chunk",
            "proxy syscalls/chunk",
            "proxy KiB/stream",
            "errors"
        )?;
        for r in &self.results {
            let proxy = r.proxied.as_ref().and_then(|p| p.proxy.as_ref());
            writeln!(
                f,
                "{:>7}  {:>9}  {:>15}  {:>16}  {:>5}  {:>12}  {:>12}  {:>18}  {:>20}  {:>16}  {:>6}",
                r.streams,
                if o.interval.is_zero() {
                    "-".to_string()
                } else {
                    format!("{:.0}", r.streams as f64 / o.interval.as_secs_f64())
                },
                fixed(r.direct.as_ref().map(|d| d.chunks_per_s), 0),
                fixed(r.proxied.as_ref().map(|p| p.chunks_per_s), 0),
                fixed(r.ratio, 2),
                signed_ms(r.added_p50_ms),
                signed_ms(r.added_p99_ms),
                fixed(proxy.map(|p| p.cpu_us_per_chunk), 1),
                fixed(proxy.map(|p| p.syscalls_per_chunk), 2),
                fixed(proxy.map(|p| p.kib_per_stream), 1),
                r.errors()
            )?;
        }
        writeln!(
            f,
            "proxy: the `baton serve` child alone: CPU utime+stime of /proc/<pid>/stat (10 ms ticks); syscalls syscr+syscw of /proc/<pid>/io (read/write/readv/writev; recvfrom, how sockets are read, is not counted); KiB peak VmRSS minus idle, per stream"
        )?;
        if o.events {
            let read: Vec<String> = self
                .results
                .iter()
                .filter_map(|r| {
                    let bytes = r.proxied.as_ref()?.proxy.as_ref()?.events_bytes?;
                    Some(format!("{} streams: {:.1} KiB", r.streams, bytes as f64 / 1024.0))
                })
                .collect();
            writeln!(
                f,
                "--events: one /events subscriber connected and every session recorded during the proxied runs (it read {})",
                read.join(", ")
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:>7}  {:<7}  {:>6}  {:>9}  {:>8}  {:>7}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}  {:>18}  {:>18}  {:>6}",
            "streams",
            "mode",
            "held",
            "peak open",
            "ramp s",
            "wall s",
            "chunks",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "1st p50 ms",
            "1st p99 ms",
            "bench CPU µs/chunk",
            "bench peak RSS MiB",
            "errors"
        )?;
        for r in &self.results {
            for run in r.runs() {
                writeln!(
                    f,
                    "{:>7}  {:<7}  {:>6}  {:>9}  {:>8.2}  {:>7.2}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}  {:>18.1}  {:>18.1}  {:>6}",
                    run.streams,
                    match run.mode {
                        Mode::Direct => "direct",
                        Mode::Proxied => "proxied",
                    },
                    run.arrived_before_go,
                    run.peak_open,
                    run.ramp_s,
                    run.wall_s,
                    run.chunks,
                    ms(run.latency_p50_us),
                    ms(run.latency_p99_us),
                    ms(run.latency_p999_us),
                    ms(Some(run.latency_max_us)),
                    ms(run.first_chunk_p50_us),
                    ms(run.first_chunk_p99_us),
                    run.cpu_us_per_chunk,
                    run.rss_peak_kib as f64 / 1024.0,
                    run.errors
                )?;
            }
        }
        for r in &self.results {
            for run in r.runs() {
                for sample in &run.error_samples {
                    writeln!(f, "error ({} streams, {:?}): {sample}", run.streams, run.mode)?;
                }
            }
        }
        if !self.targets.is_empty() {
            writeln!(f)?;
            writeln!(f, "targets:")?;
            for t in &self.targets {
                let verdict = if t.met { "met" } else { "MISSED" };
                writeln!(f, "  {:<56}  {:<44}  {verdict}", t.target, t.measured)?;
            }
        }
        Ok(())
    }
}
