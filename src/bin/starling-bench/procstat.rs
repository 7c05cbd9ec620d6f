//! Process figures from /proc (Linux): resident memory and CPU time of the server under test
//! (by pid) and of the generator itself, plus raising RLIMIT_NOFILE.

use std::time::Instant;

/// Which process to read.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    SelfProc,
    Pid(u32),
}

impl Target {
    fn dir(&self) -> String {
        match self {
            Target::SelfProc => "/proc/self".into(),
            Target::Pid(p) => format!("/proc/{p}"),
        }
    }
}

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// VmRSS, bytes.
    pub rss: u64,
    /// VmHWM (peak RSS since start), bytes.
    pub hwm: u64,
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    pub threads: u64,
}

pub fn sample(t: Target) -> std::io::Result<Sample> {
    let dir = t.dir();
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let kb = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (utime, stime, threads) = parse_stat(&stat).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "unparsable /proc stat")
    })?;
    Ok(Sample {
        at: Instant::now(),
        rss: kb("VmRSS:") * 1024,
        hwm: kb("VmHWM:") * 1024,
        cpu_ticks: utime + stime,
        threads,
    })
}

/// (utime, stime, num_threads) from /proc/PID/stat. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last ')'.
fn parse_stat(stat: &str) -> Option<(u64, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15, num_threads 20.
    let get = |field: usize| f.get(field - 3).and_then(|v| v.parse::<u64>().ok());
    Some((get(14)?, get(15)?, get(20)?))
}

/// Whole-machine CPU counters from /proc/stat, clock ticks summed over all cores:
/// (busy, of which interrupt + softirq). Loopback TCP is largely processed in softirq,
/// which the kernel does not always charge to the sending or receiving process.
pub fn machine_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let irq = v.get(5).copied().unwrap_or(0) + v.get(6).copied().unwrap_or(0);
    Some((total - idle, irq))
}

/// A TcpExt counter from /proc/net/netstat (system-wide), e.g. "ListenOverflows".
pub fn tcp_ext(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let i = names.split_whitespace().position(|n| n == name)?;
        return values.split_whitespace().nth(i)?.parse().ok();
    }
    None
}

/// Clock ticks per second for /proc CPU times (`getconf CLK_TCK`, 100 on Linux).
pub fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// CPU time and wall time between two samples of the same process.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub cpu_s: f64,
    pub wall_s: f64,
}

impl CpuUse {
    pub fn between(a: &Sample, b: &Sample, tck: u64) -> CpuUse {
        CpuUse {
            cpu_s: b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / tck as f64,
            wall_s: b.at.duration_since(a.at).as_secs_f64(),
        }
    }
    /// Percent of one core (200% = two cores busy).
    pub fn percent(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.cpu_s / self.wall_s * 100.0
        } else {
            f64::NAN
        }
    }
}

/// Raise the RLIMIT_NOFILE soft limit to the hard limit. Returns (old soft, new soft).
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub fn raise_nofile() -> Result<(u64, u64), String> {
    // No libc crate: declare the two glibc/musl functions directly. On these targets
    // rlim_t is 64-bit and RLIMIT_NOFILE is 7.
    #[repr(C)]
    struct RLimit {
        cur: u64,
        max: u64,
    }
    extern "C" {
        fn getrlimit(resource: i32, rlim: *mut RLimit) -> i32;
        fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
    }
    const RLIMIT_NOFILE: i32 = 7;
    let mut r = RLimit { cur: 0, max: 0 };
    // SAFETY: `r` is a valid, writable struct with the C layout of `struct rlimit`.
    if unsafe { getrlimit(RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    let old = r.cur;
    if r.cur >= r.max {
        return Ok((old, old));
    }
    let new = RLimit {
        cur: r.max,
        max: r.max,
    };
    // SAFETY: `new` is a valid `struct rlimit`; setrlimit only reads it.
    if unsafe { setrlimit(RLIMIT_NOFILE, &new) } != 0 {
        return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
    }
    Ok((old, new.cur))
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
pub fn raise_nofile() -> Result<(u64, u64), String> {
    Err("raising RLIMIT_NOFILE is not supported on this platform; use ulimit -n".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let s = "1234 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 111 222 0 0 20 0 7 0 99 0 0";
        assert_eq!(parse_stat(s), Some((111, 222, 7)));
    }

    #[test]
    fn machine_counters() {
        let (busy, irq) = machine_cpu().unwrap();
        assert!(irq <= busy && busy > 0);
        assert!(tcp_ext("ListenOverflows").is_some());
    }

    #[test]
    fn self_sample() {
        let s = sample(Target::SelfProc).unwrap();
        assert!(s.rss > 0 && s.threads >= 1);
    }
}
