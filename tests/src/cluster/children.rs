//! Keeps every process the test kit starts from outliving the test binary.
//!
//! Three layers, because each one alone has a gap:
//! - `PR_SET_PDEATHSIG(SIGKILL)`: the kernel kills a child when the *thread* that spawned it exits,
//!   which covers a test binary that is killed outright (no destructors, no atexit);
//! - a process group per child: a pod's `sh -c` may fork grandchildren that PDEATHSIG does not
//!   reach, and killing the group takes them too, like a container runtime tearing down a cgroup;
//! - an `atexit` handler: libtest leaves through `exit()` even when tests panic, so this is where the
//!   control plane gets a graceful SIGTERM, the pod runner's podman containers (which no signal to
//!   a process of ours reaches) are removed, and the temporary directories are removed.
//!
//! Directories are named `<prefix><pid>-<random>`, so that a later run can remove those a test
//! binary left behind when it was killed outright, and kill what still runs in them.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How long the control plane gets to shut down on SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// Prefixes of the directories this module owns under the temporary directory.
const DIR_PREFIXES: &[&str] = &["mixdown-cp-", "mixdown-pods-"];

struct Tracked {
    /// Process ids, each the leader of its own process group.
    groups: BTreeSet<i32>,
    /// Names of podman containers.
    containers: BTreeSet<String>,
    dirs: BTreeSet<PathBuf>,
}

static TRACKED: Mutex<Tracked> = Mutex::new(Tracked {
    groups: BTreeSet::new(),
    containers: BTreeSet::new(),
    dirs: BTreeSet::new(),
});
static AT_EXIT: Once = Once::new();

/// A panic while holding the lock must not stop the cleanup at exit.
fn tracked() -> MutexGuard<'static, Tracked> {
    TRACKED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn register_at_exit() {
    AT_EXIT.call_once(|| {
        // SAFETY: `cleanup` is an `extern "C" fn()` that does not unwind.
        unsafe { libc::atexit(cleanup) };
    });
}

/// Runs in the child between fork and exec: ask the kernel to kill it when the spawning thread
/// ends. Only async-signal-safe calls are allowed here.
pub(crate) fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a plain integer signal number.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Tracks a process group (by its leader's pid) until [`untrack_group`]; killed at exit.
pub(crate) fn track_group(pid: u32) {
    register_at_exit();
    if let Ok(pid) = i32::try_from(pid) {
        tracked().groups.insert(pid);
    }
}

pub(crate) fn untrack_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        tracked().groups.remove(&pid);
    }
}

/// Tracks a podman container by name until [`untrack_container`]; removed at exit.
pub(crate) fn track_container(name: &str) {
    register_at_exit();
    tracked().containers.insert(name.to_string());
}

pub(crate) fn untrack_container(name: &str) {
    tracked().containers.remove(name);
}

/// Sends `signal` to the whole process group led by `pid`.
pub(crate) fn signal_group(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions; ESRCH (already gone) is fine.
        unsafe { libc::kill(-pid, signal) };
    }
}

/// Creates `<temp_dir>/<prefix><pid>-<random>`, removed at exit if [`remove_dir`] did not already.
pub(crate) fn temp_dir(prefix: &str) -> Result<PathBuf> {
    debug_assert!(
        DIR_PREFIXES.contains(&prefix),
        "the sweep must know {prefix}"
    );
    register_at_exit();
    sweep_stale_dirs();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{prefix}{}-", std::process::id()))
        .tempdir_in(std::env::temp_dir())
        .context("creating a temporary directory")?
        .keep();
    tracked().dirs.insert(dir.clone());
    Ok(dir)
}

/// Removes a directory from [`temp_dir`] now, instead of at exit.
pub(crate) fn remove_dir(dir: &Path) {
    tracked().dirs.remove(dir);
    let _ = fs::remove_dir_all(dir);
}

/// Removes directories whose owning test binary is gone, and kills what still runs in them:
/// a binary killed outright takes its children along (PDEATHSIG) but not their children, such as
/// a Pod's background processes. Cheap (one readdir, and a /proc scan only when something is
/// stale), so done on every creation.
fn sweep_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let stale: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return false;
            };
            let Some(rest) = DIR_PREFIXES.iter().find_map(|p| name.strip_prefix(p)) else {
                return false;
            };
            rest.split('-')
                .next()
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(|entry| entry.path())
        .collect();
    if stale.is_empty() {
        return;
    }
    for pid in processes_working_in(&stale) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for dir in stale {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Processes whose working directory is inside one of `dirs`.
fn processes_working_in(dirs: &[PathBuf]) -> Vec<i32> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| dirs.iter().any(|dir| cwd.starts_with(dir)))
        })
        .collect()
}

/// Reaps `pid` if it is our child and has exited; true when it is gone (or not ours to wait for).
fn reaped(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: status is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    r == pid || r == -1
}

fn wait_all(pids: &mut Vec<i32>, deadline: Instant) {
    while !pids.is_empty() && Instant::now() < deadline {
        pids.retain(|&pid| !reaped(pid));
        if !pids.is_empty() {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Stops every tracked process group and removes every tracked directory.
fn cleanup_all() {
    let (groups, containers, dirs) = {
        let mut t = tracked();
        (
            std::mem::take(&mut t.groups),
            std::mem::take(&mut t.containers),
            std::mem::take(&mut t.dirs),
        )
    };
    // Killing a `podman run` client leaves its container running: remove them by name.
    crate::pods::podman::remove_blocking(&containers.into_iter().collect::<Vec<_>>());
    let mut alive: Vec<i32> = groups.iter().copied().collect();
    for &pid in &alive {
        // SAFETY: see signal_group.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
    }
    wait_all(&mut alive, Instant::now() + GRACE);
    // The group may hold grandchildren even when its leader is gone.
    for &pid in &groups {
        // SAFETY: see signal_group.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    wait_all(&mut alive, Instant::now() + Duration::from_millis(500));
    for dir in dirs {
        // A process killed a moment ago may still have created a file; one retry is enough.
        if fs::remove_dir_all(&dir).is_err() {
            thread::sleep(Duration::from_millis(50));
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

extern "C" fn cleanup() {
    // Never unwind across the C boundary.
    let _ = std::panic::catch_unwind(cleanup_all);
}
