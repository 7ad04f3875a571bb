//! Small pieces that benchmark programs under `src/bin/` share: a process's memory and CPU
//! figures from `/proc`, medians, and how to describe the machine and an image.
//!
//! What it is not: a timing framework. Benchmarks print figures and ratios against references
//! measured in the same run (see STYLE.md, "Benchmarks").

use anyhow::{Context, Result};

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, 100 per second on Linux.
const PROC_TICKS_PER_SECOND: f64 = 100.0;

/// Peak resident set size of process `pid` so far (`VmHWM`), in bytes. Read it before the
/// process is stopped.
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

/// Current resident set size of process `pid` (`VmRSS`), in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib = line
        .split_whitespace()
        .next()
        .context("empty /proc status field")?;
    Ok(kib.parse()?)
}

/// User plus system CPU time of process `pid` so far, its exited threads included.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    // utime and stime are fields 14 and 15 of proc_pid_stat(5).
    stat_seconds(pid, 14, 15)
}

/// Minor page faults of process `pid` so far (`minflt`): pages it touched for the first time
/// since the kernel gave them to it, each zeroed by the kernel on its CPU time.
pub fn minor_faults(pid: u32) -> Result<u64> {
    // minflt is field 10 of proc_pid_stat(5).
    stat_field(&proc_stat(pid)?, 10)
}

/// User plus system CPU time of the calling thread so far.
pub fn thread_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")
        .context("cannot read /proc/thread-self/stat")?;
    seconds_of_stat(&stat, 14, 15)
}

/// User plus system CPU time of this process's children that have been waited for.
pub fn children_cpu_seconds() -> Result<f64> {
    // cutime and cstime are fields 16 and 17 of proc_pid_stat(5).
    stat_seconds(std::process::id(), 16, 17)
}

/// The sum of two clock-tick fields of `/proc/<pid>/stat`, numbered as in proc_pid_stat(5).
fn stat_seconds(pid: u32, first: usize, second: usize) -> Result<f64> {
    seconds_of_stat(&proc_stat(pid)?, first, second)
}

/// The text of `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))
}

/// The sum of two clock-tick fields of a `stat` file's text, numbered as in proc_pid_stat(5).
fn seconds_of_stat(stat: &str, first: usize, second: usize) -> Result<f64> {
    let ticks = stat_field(stat, first)? + stat_field(stat, second)?;
    Ok(ticks as f64 / PROC_TICKS_PER_SECOND)
}

/// One numeric field of a `stat` file's text, numbered as in proc_pid_stat(5).
fn stat_field(stat: &str, field: usize) -> Result<u64> {
    // Fields after the parenthesised command name, which may itself hold spaces; the first of
    // them is field 3, the state.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    Ok(after_name
        .split_whitespace()
        .nth(field - 3)
        .context("short /proc stat")?
        .parse()?)
}

/// The median of `values`; `None` when there are none.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

/// The first line a command prints (a tool's `--version`), trimmed.
pub fn first_line_of(command: &mut std::process::Command) -> Result<String> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().next().unwrap_or("").trim().to_owned())
}

/// CPUs, CPU model and kernel, for the head of a benchmark's report.
pub fn machine_description() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {}", kernel.trim())
}

/// The sizes of `blobs` in MB (10^6 bytes), one decimal, comma-separated: how benchmarks
/// describe an image's layers.
pub fn sizes_mb(blobs: &[crate::image::Blob]) -> String {
    let sizes: Vec<String> = blobs
        .iter()
        .map(|blob| format!("{:.1}", blob.size as f64 / 1e6))
        .collect();
    sizes.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median([]), None);
        assert_eq!(median([3.0]), Some(3.0));
        assert_eq!(median([5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn this_process_has_memory_and_cpu_figures() -> Result<()> {
        let pid = std::process::id();
        // The current size first: the peak read afterwards includes it.
        let rss = rss_bytes(pid)?;
        assert!(rss > 0);
        assert!(peak_rss_bytes(pid)? >= rss);
        assert!(cpu_seconds(pid)? >= 0.0);
        Ok(())
    }
}
