//! Process limits: both the server and the load generator hold one socket per viewer, so 10 000
//! viewers need more open files than the usual soft limit of 1024.

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to the hard limit.
///
/// Returns the (soft, hard) limits now in force.
///
/// # Errors
/// When the limits cannot be read or set.
#[cfg(unix)]
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard one is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft limit on open files to the hard limit.
///
/// # Errors
/// Never on this platform.
#[cfg(not(unix))]
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    Ok((0, 0))
}

/// The soft limit on open files now in force, `None` where it cannot be read.
#[cfg(unix)]
pub fn nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

/// The soft limit on open files: unknown on this platform.
#[cfg(not(unix))]
pub fn nofile_limit() -> Option<u64> {
    None
}

/// Resident set size of a process in KiB, from `/proc/<pid>/status` (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/<pid>/stat` (Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) / hz)
}

#[cfg(test)]
mod tests {
    #[test]
    fn limits_and_own_stats_are_readable() {
        let (soft, hard) = super::raise_nofile_limit().unwrap();
        assert_eq!(soft, hard);
        let me = std::process::id();
        assert!(super::rss_kib(me).unwrap() > 0);
        assert!(super::cpu_seconds(me).unwrap() >= 0.0);
    }
}
