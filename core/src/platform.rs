//! What the node needs from the machine, checked before any executor
//! starts: io_uring (glommio runs on nothing else), a locked-memory limit
//! glommio accepts, and the CPUs this process may run on.
//!
//! In a container these are the usual surprises: Docker 25+'s default
//! seccomp profile blocks `io_uring_setup` (EPERM), a low `ulimit -l`
//! (RLIMIT_MEMLOCK) makes glommio refuse to start, and `--cpuset-cpus`
//! leaves the process fewer CPUs than the machine has online. Each check
//! fails with a message naming what to set, on stderr, whose first line
//! starts with a stable prefix ([`IO_URING_UNAVAILABLE`] for io_uring)
//! that scripts and the container tests match.

use std::fmt;

/// First words of the start-up error when io_uring cannot be used.
pub const IO_URING_UNAVAILABLE: &str = "io_uring is unavailable:";

/// First words of the start-up error when RLIMIT_MEMLOCK is too low.
pub const MEMLOCK_TOO_LOW: &str = "the locked-memory limit is too low:";

/// The least RLIMIT_MEMLOCK glommio starts an executor with (its own
/// check, `MIN_MEMLOCK_LIMIT` in glommio's reactor).
pub const GLOMMIO_MIN_MEMLOCK_BYTES: u64 = 512 << 10;

/// What one core pins with io_uring: its registered I/O buffers, plus
/// about this much for its three rings (128 entries each).
pub const RING_BYTES_PER_CORE: u64 = 256 << 10;

/// Why the node cannot start on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformError(pub String);

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PlatformError {}

/// The remedies, the same for every io_uring failure.
const IO_URING_REMEDY: &str = "\
  TinkerDB's cores run on glommio, which needs io_uring.
  - Docker 25+ blocks io_uring_setup in its default seccomp profile: start the
    container with `--security-opt seccomp=docker/seccomp.json` (the profile in
    this repository: Docker's default plus io_uring) or
    `--security-opt seccomp=unconfined`; in Kubernetes, a seccompProfile of type
    Localhost with that profile, or Unconfined.
  - The sysctl kernel.io_uring_disabled must be 0 (1 allows only the group in
    kernel.io_uring_group, 2 disables io_uring).
  - The kernel must be Linux 5.8 or newer (gVisor and some sandboxes lack io_uring).";

/// Explains an `io_uring_setup` failure with `errno`.
pub fn io_uring_message(errno: i32) -> String {
    let what = match errno {
        libc::EPERM | libc::EACCES => {
            "io_uring_setup was refused (EPERM): a seccomp profile (Docker's default) \
             or kernel.io_uring_disabled forbids it"
                .to_owned()
        }
        libc::ENOSYS => "io_uring_setup does not exist here (ENOSYS): the kernel is too old \
             or a sandbox hides it"
            .to_owned(),
        libc::ENOMEM => "io_uring_setup failed for lack of locked memory (ENOMEM): raise \
             RLIMIT_MEMLOCK (`--ulimit memlock=-1`, systemd `LimitMEMLOCK=infinity`)"
            .to_owned(),
        other => format!(
            "io_uring_setup failed: {}",
            std::io::Error::from_raw_os_error(other)
        ),
    };
    format!("{IO_URING_UNAVAILABLE} {what}.\n{IO_URING_REMEDY}")
}

/// Explains a locked-memory limit below what `cores` cores need, or
/// `None` if `limit` (bytes; `None` for unlimited) is enough.
pub fn memlock_problem(
    limit: Option<u64>,
    cores: usize,
    io_memory_per_core: usize,
) -> Option<Problem> {
    let limit = limit?;
    let wanted = cores as u64 * (io_memory_per_core as u64 + RING_BYTES_PER_CORE);
    let remedy = "set `--ulimit memlock=-1` (docker run; `ulimits: memlock: -1` in \
                  compose), `LimitMEMLOCK=infinity` (systemd unit), or `ulimit -l unlimited`";
    if limit < GLOMMIO_MIN_MEMLOCK_BYTES {
        return Some(Problem::Fatal(format!(
            "{MEMLOCK_TOO_LOW} RLIMIT_MEMLOCK is {limit} bytes; glommio needs at least \
             {GLOMMIO_MIN_MEMLOCK_BYTES} (512 KiB) to start, and {cores} cores want {wanted}.\n  \
             {remedy}."
        )));
    }
    (limit < wanted).then(|| {
        Problem::Warning(format!(
            "RLIMIT_MEMLOCK is {limit} bytes, below the {wanted} that {cores} cores register \
             with io_uring ({io_memory_per_core} bytes of buffers and about \
             {RING_BYTES_PER_CORE} of rings each): cores that cannot register their buffers \
             run slower; {remedy}"
        ))
    })
}

/// A check's outcome when not fine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The node cannot start.
    Fatal(String),
    /// It starts, but worse than it could.
    Warning(String),
}

/// Checks io_uring and RLIMIT_MEMLOCK for `cores` cores. Logs a warning
/// for what only slows the node; fails for what stops it.
pub fn check(cores: usize, io_memory_per_core: usize) -> Result<(), PlatformError> {
    // The memory limit first: with too little, io_uring_setup itself may
    // fail with ENOMEM (kernels before 5.12 charge rings to it).
    match memlock_problem(memlock_limit(), cores, io_memory_per_core) {
        Some(Problem::Fatal(message)) => return Err(PlatformError(message)),
        Some(Problem::Warning(message)) => tracing::warn!("{message}"),
        None => {}
    }
    probe_io_uring().map_err(|errno| PlatformError(io_uring_message(errno)))
}

/// The soft RLIMIT_MEMLOCK in bytes, `None` if unlimited (or unknown).
pub fn memlock_limit() -> Option<u64> {
    let limit = getrlimit_memlock()?;
    (limit != libc::RLIM_INFINITY).then_some(limit)
}

#[allow(unsafe_code)]
fn getrlimit_memlock() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` that lives across the
    // call; getrlimit only writes it.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (status == 0).then_some(limit.rlim_cur)
}

/// `struct io_uring_params`: 120 bytes the kernel reads (all zero: no
/// flags) and fills in; 8-byte aligned like the C struct (it holds u64s).
#[repr(C, align(8))]
struct IoUringParams([u32; 30]);

/// Sets up (and closes) a one-entry io_uring, as glommio will; the errno
/// if the kernel refuses.
#[allow(unsafe_code)]
pub fn probe_io_uring() -> Result<(), i32> {
    let mut params = IoUringParams([0; 30]);
    // SAFETY: io_uring_setup(2) takes an entry count and a pointer to a
    // `struct io_uring_params` (120 bytes) that it reads and writes;
    // `params` is that many zeroed, aligned, writable bytes living across
    // the call. On success it returns a new descriptor that nothing else
    // owns, closed here at once (the rings it maps are freed with it).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            1u32,
            &mut params as *mut IoUringParams,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOSYS));
    }
    // SAFETY: `fd` is the descriptor io_uring_setup just returned, owned
    // by nobody else; it is closed once.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// The CPUs this process may run on (its affinity mask, which
/// `docker --cpuset-cpus`, `taskset` and systemd's `CPUAffinity` set),
/// ascending; `None` if it cannot be read.
pub fn allowed_cpus() -> Option<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(list)
}

/// Parses a kernel CPU list (`0-3,8,10-11`).
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|part| !part.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
                if first > last {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    (!cpus.is_empty()).then_some(cpus)
}

/// CPUs' worth of time the cgroup (v2 `cpu.max`) allows, rounded up
/// (`docker --cpus 2.5` gives 3); `None` without a quota.
pub fn cpu_quota() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/cpu.max").ok()?;
    parse_cpu_max(&text)
}

/// Parses cgroup v2 `cpu.max` (`QUOTA PERIOD`, or `max PERIOD`).
pub fn parse_cpu_max(text: &str) -> Option<usize> {
    let mut fields = text.split_whitespace();
    let quota: u64 = fields.next()?.parse().ok()?;
    let period: u64 = fields.next()?.parse().ok()?;
    (period > 0 && quota > 0).then(|| quota.div_ceil(period) as usize)
}

/// The process's resident memory in bytes (`VmRSS`; 0 if unknown).
pub fn resident_bytes() -> u64 {
    resident_bytes_in("/proc/self/status")
}

/// Resident memory of process `pid` in bytes (`VmRSS`; 0 if unknown), as
/// [`resident_bytes`] reads it for this one (tests watch a node's).
pub fn process_resident_bytes(pid: u32) -> u64 {
    resident_bytes_in(&format!("/proc/{pid}/status"))
}

fn resident_bytes_in(status_path: &str) -> u64 {
    std::fs::read_to_string(status_path)
        .ok()
        .and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            line.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// The process's user and system CPU time so far, in seconds.
#[allow(unsafe_code)]
pub fn cpu_seconds() -> (f64, f64) {
    // SAFETY: `rusage` is plain data, valid when zeroed; getrusage only
    // writes into the struct it is given, which lives for the call.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (seconds(usage.ru_utime), seconds(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3\n"), Some(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_list("1,3,5-6"), Some(vec![1, 3, 5, 6]));
        assert_eq!(parse_cpu_list("7"), Some(vec![7]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a-b"), None);
        let own = allowed_cpus().expect("Linux has /proc/self/status");
        assert!(!own.is_empty());
    }

    #[test]
    fn cpu_quotas() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("250000 100000"), Some(3));
        assert_eq!(parse_cpu_max("50000 100000"), Some(1));
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn memlock_limits() {
        let per_core = 1 << 20;
        assert_eq!(memlock_problem(None, 64, per_core), None);
        assert_eq!(memlock_problem(Some(1 << 30), 4, per_core), None);
        match memlock_problem(Some(64 << 10), 1, per_core) {
            Some(Problem::Fatal(message)) => {
                assert!(message.starts_with(MEMLOCK_TOO_LOW), "{message}");
                assert!(message.contains("--ulimit memlock=-1"), "{message}");
                assert!(message.contains("LimitMEMLOCK=infinity"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            memlock_problem(Some(8 << 20), 16, per_core),
            Some(Problem::Warning(_))
        ));
    }

    #[test]
    fn io_uring_messages_say_what_to_set() {
        let message = io_uring_message(libc::EPERM);
        let first = message.lines().next().unwrap();
        assert!(first.starts_with(IO_URING_UNAVAILABLE), "{first}");
        assert!(first.contains("EPERM"), "{first}");
        assert!(message.contains("--security-opt seccomp=docker/seccomp.json"));
        assert!(message.contains("seccomp=unconfined"));
        assert!(io_uring_message(libc::ENOSYS).starts_with(IO_URING_UNAVAILABLE));
        assert!(io_uring_message(libc::EINVAL).starts_with(IO_URING_UNAVAILABLE));
    }

    #[test]
    fn io_uring_probe_passes_where_the_node_runs() {
        // The test machine runs glommio, so io_uring is there.
        assert_eq!(probe_io_uring(), Ok(()));
    }
}
