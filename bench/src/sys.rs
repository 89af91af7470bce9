//! What the machine and its processes use, read from `/proc`: CPU time per
//! process (and summed over PostgreSQL's processes), resident memory, the
//! open-file limit and the kernel settings that cap socket counts.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// CPU seconds spent by something between two readings.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuDelta {
    pub seconds: f64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Fields of /proc/<pid>/stat after the command name: index 0 is field 3
/// (state) of proc(5).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse::<i64>().unwrap_or(0) as u64)
            .collect(),
    )
}

/// utime + stime of `pid` in seconds (with `children`: plus the CPU of its
/// children that it has waited for). 0 when the process is gone.
pub fn cpu_seconds(pid: u32, children: bool) -> f64 {
    let Some(f) = stat_fields(pid) else {
        return 0.0;
    };
    // proc(5): utime 14, stime 15, cutime 16, cstime 17 -> indexes 11..=14.
    let mut ticks = f[11] + f[12];
    if children {
        ticks += f[13] + f[14];
    }
    ticks as f64 / clock_ticks()
}

fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid).map(|f| f[1] as u32)
}

/// CPU of the whole PostgreSQL cluster: the postmaster (with the backends it
/// has reaped) plus every live child (walsenders, backends, checkpointer).
pub fn postgres_cpu_seconds(data_dir: &Path) -> f64 {
    let Some(pm) = fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return 0.0;
    };
    let mut total = cpu_seconds(pm, true);
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if ppid(pid) == Some(pm) {
                    total += cpu_seconds(pid, false);
                }
            }
        }
    }
    total
}

/// CPU of this process (the load generator) in seconds.
pub fn self_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id(), false)
}

/// CPU of the children this process has waited for (e.g. pg_recvlogical).
pub fn reaped_children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Resident memory of `pid` in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// The most resident memory `pid` has had, in bytes (VmHWM).
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

fn status_bytes(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// A source of CPU seconds to measure over a phase.
pub enum Who {
    Pid(u32),
    /// Several processes summed (e.g. a consumer's backends).
    Pids(Vec<u32>),
    /// The cluster whose data directory this is.
    Postgres(PathBuf),
    LoadGenerator,
    ReapedChildren,
}

impl Who {
    fn read(&self) -> f64 {
        match self {
            Who::Pid(pid) => cpu_seconds(*pid, false),
            Who::Pids(pids) => pids.iter().map(|p| cpu_seconds(*p, false)).sum(),
            Who::Postgres(dir) => postgres_cpu_seconds(dir),
            Who::LoadGenerator => self_cpu_seconds(),
            Who::ReapedChildren => reaped_children_cpu_seconds(),
        }
    }
}

/// CPU readings of several processes at the start of a phase.
pub struct CpuMeter {
    start: Instant,
    parts: Vec<(&'static str, Who, f64)>,
}

impl CpuMeter {
    pub fn start(who: Vec<(&'static str, Who)>) -> Self {
        let parts = who
            .into_iter()
            .map(|(name, w)| {
                let v = w.read();
                (name, w, v)
            })
            .collect();
        CpuMeter {
            start: Instant::now(),
            parts,
        }
    }

    /// Wall time and each part's CPU since the start.
    pub fn stop(&self) -> (Duration, Vec<(&'static str, CpuDelta)>) {
        let wall = self.start.elapsed();
        let parts = self
            .parts
            .iter()
            .map(|(name, w, v0)| {
                (
                    *name,
                    CpuDelta {
                        seconds: (w.read() - v0).max(0.0),
                    },
                )
            })
            .collect();
        (wall, parts)
    }
}

/// Raises this process's open-file limit as far as it goes (children, such
/// as the server, inherit it). Returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(lim.rlim_max);
        // Root may raise the hard limit up to nr_open; others only the soft one.
        let want = libc::rlimit {
            rlim_cur: nr_open.max(lim.rlim_max) as libc::rlim_t,
            rlim_max: nr_open.max(lim.rlim_max) as libc::rlim_t,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            let soft = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    }
}

/// Open files kept free for everything that is not a client socket.
const FD_SLACK: u64 = 1_000;

/// `wanted` sockets, or fewer if the open-file limit (which the server
/// inherits) cannot hold them, saying so loudly: a capped run still gives
/// per-socket figures, but not the headline count.
pub fn cap_sockets(wanted: usize, nofile: u64) -> usize {
    let room = nofile.saturating_sub(FD_SLACK) as usize;
    if wanted <= room {
        return wanted;
    }
    println!(
        "WARNING: the open-file limit is {nofile} and cannot be raised here (no \
         CAP_SYS_RESOURCE, or a container's hard limit): running {room} sockets instead of \
         {wanted}. Raise `ulimit -Hn` (as root, up to fs.nr_open) for the full size."
    );
    room
}

/// Warns (does not fail) when a kernel or process limit caps a run of
/// `sockets` client sockets spread `per_source` per loopback source address.
pub fn warn_about_limits(sockets: usize, per_source: usize, nofile: u64) {
    let read = |p: &str| fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    // Server and load generator are separate processes: each needs one fd per socket.
    if (nofile as usize) < sockets + FD_SLACK as usize {
        println!(
            "WARNING: the open-file limit is {nofile}, below {sockets} sockets plus slack; \
             run as root or raise `ulimit -Hn`"
        );
    }
    if let Some(range) = read("/proc/sys/net/ipv4/ip_local_port_range") {
        let v: Vec<usize> = range
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() == 2 && v[1].saturating_sub(v[0]) + 1 < per_source.min(sockets) {
            println!(
                "WARNING: net.ipv4.ip_local_port_range is {range}: fewer ports than the \
                 {per_source} sockets per source address; widen it with sysctl"
            );
        }
    }
    if let Some(max) = read("/proc/sys/fs/file-max").and_then(|s| s.parse::<usize>().ok()) {
        if max < 2 * sockets + 10_000 {
            println!(
                "WARNING: fs.file-max is {max}: too few files for {sockets} sockets on both ends"
            );
        }
    }
}

/// Connections the kernel dropped because a listener's accept queue was
/// full (`TcpExt: ListenOverflows`, this network namespace, every
/// listener): the client's SYN is retried after 1 s, then 3 s, ...
pub fn listen_overflows() -> u64 {
    fs::read_to_string("/proc/net/netstat")
        .ok()
        .and_then(|s| netstat_value(&s, "TcpExt:", "ListenOverflows"))
        .unwrap_or(0)
}

/// The value of `name` in `/proc/net/netstat`'s lines of `prefix` (a line
/// of names, then a line of values).
fn netstat_value(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let names = lines.next()?.split_whitespace();
    let values = lines.next()?.split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// `cores, memory, CPU model` of this machine, and the load right now.
pub fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cores} cores, {mem_gib:.1} GiB, {model}; {}", load())
}

pub fn load() -> String {
    let l = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<&str> = l.split_whitespace().take(3).collect();
    format!("load average {}", v.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_netstat_counter_is_read_by_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                    TcpExt: 0 8673 8674\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 5\n";
        assert_eq!(
            netstat_value(text, "TcpExt:", "ListenOverflows"),
            Some(8673)
        );
        assert_eq!(netstat_value(text, "IpExt:", "InNoRoutes"), Some(5));
        assert_eq!(netstat_value(text, "TcpExt:", "Nothing"), None);
    }
}
