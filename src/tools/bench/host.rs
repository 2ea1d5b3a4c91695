//! This process and machine: its memory and CPU time, the open-file limit,
//! and the kernel's network limits.

use super::*;

// ------------------------------------------------------------------ memory

pub(super) fn status_kib(field: &str) -> Option<u64> {
    status_kib_of("/proc/self/status", field)
}

/// Resets VmHWM of a process to its current RSS (Linux ≥ 4.0; `clear_refs`
/// is a `/proc/<pid>/clear_refs` path). Whether it worked.
pub(super) fn reset_peak(clear_refs: &str) -> bool {
    std::fs::write(clear_refs, "5").is_ok()
}

/// Gives freed heap back to the kernel, so one run's leftovers do not hide the next run's growth.
pub(super) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// CPU time used by the process so far: (user, system) seconds.
#[cfg(unix)]
pub(super) fn cpu_times() -> (f64, f64) {
    // SAFETY: an all-zero rusage is valid, and getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid for writes.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

#[cfg(not(unix))]
pub(super) fn cpu_times() -> (f64, f64) {
    (0.0, 0.0)
}

// ---------------------------------------------------------- machine setup

pub(super) fn proc_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
pub(super) fn fd_limit() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return (0, 0);
    }
    (limit.rlim_cur as u64, limit.rlim_max as u64)
}

/// Raises RLIMIT_NOFILE to `wanted` (soft and hard; raising the hard limit
/// needs root), else the soft limit to the hard one. Returns (before, after).
#[cfg(unix)]
pub(super) fn raise_fd_limit(wanted: u64) -> ((u64, u64), (u64, u64)) {
    let before = fd_limit();
    let wanted = proc_u64("/proc/sys/fs/nr_open").map_or(wanted, |max| wanted.min(max));
    let set = |soft: u64, hard: u64| {
        let limit = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: a valid rlimit passed by reference.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 }
    };
    if before.0 < wanted && !set(wanted, wanted.max(before.1)) {
        set(before.1.min(wanted).max(before.0), before.1);
    }
    (before, fd_limit())
}

#[cfg(not(unix))]
pub(super) fn raise_fd_limit(_wanted: u64) -> ((u64, u64), (u64, u64)) {
    ((0, 0), (0, 0))
}

pub(super) fn machine(fd_limit_before: (u64, u64), fd_limit: (u64, u64)) -> Machine {
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        fd_limit_before,
        fd_limit,
        somaxconn: proc_u64("/proc/sys/net/core/somaxconn"),
        port_range: std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join("-")),
        tcp_tw_reuse: proc_u64("/proc/sys/net/ipv4/tcp_tw_reuse"),
    }
}
