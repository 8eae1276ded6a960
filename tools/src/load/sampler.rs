//! CPU and memory of a process, sampled from `/proc` once a second: the server under test
//! (`--server-pid`) and the generator itself. CPU is `utime + stime` from `/proc/PID/stat`
//! (clock ticks of `USER_HZ`, 100 on every Linux ABI) over wall time, in percent of one core;
//! RSS is `VmRSS` from `/proc/PID/status`.

use std::time::Instant;

use super::report::{ProcessSample, ProcessUsage};

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, fixed by the kernel ABI).
const USER_HZ: f64 = 100.0;

/// `utime + stime` in clock ticks, from the text of `/proc/PID/stat`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (3), ppid (4), ... utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size in KiB, from the text of `/proc/PID/status`.
pub fn parse_status_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Samples one process.
#[derive(Debug)]
pub struct ProcessSampler {
    pid: u32,
    last: Option<(Instant, u64)>,
    samples: Vec<ProcessSample>,
    /// The process could not be read (gone, or not ours to read).
    pub unreadable: bool,
}

impl ProcessSampler {
    pub fn new(pid: u32) -> Self {
        let mut s = Self {
            pid,
            last: None,
            samples: Vec::new(),
            unreadable: false,
        };
        // Baseline for the first interval.
        if let Some(ticks) = s.read_ticks() {
            s.last = Some((Instant::now(), ticks));
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn read_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        parse_stat_cpu_ticks(&stat)
    }

    fn read_rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        parse_status_rss_kb(&status)
    }

    /// Takes a sample at `t_s` seconds into the run.
    pub fn sample(&mut self, t_s: f64) {
        let now = Instant::now();
        let (Some(ticks), Some(rss_kb)) = (self.read_ticks(), self.read_rss_kb()) else {
            self.unreadable = true;
            return;
        };
        let cpu_pct = match self.last {
            Some((at, before)) => {
                let wall = now.duration_since(at).as_secs_f64();
                if wall > 0.0 {
                    ticks.saturating_sub(before) as f64 / USER_HZ / wall * 100.0
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, ticks));
        self.samples.push(ProcessSample {
            t_s,
            cpu_pct,
            rss_mb: rss_kb as f64 / 1024.0,
        });
    }

    /// The samples so far, summarised.
    pub fn usage(&self) -> ProcessUsage {
        usage(self.pid, &self.samples)
    }
}

/// Mean and maximum of a series of samples.
pub fn usage(pid: u32, samples: &[ProcessSample]) -> ProcessUsage {
    let n = samples.len().max(1) as f64;
    ProcessUsage {
        pid,
        cpu_pct_mean: samples.iter().map(|s| s.cpu_pct).sum::<f64>() / n,
        cpu_pct_max: samples.iter().map(|s| s.cpu_pct).fold(0.0, f64::max),
        rss_mb_max: samples.iter().map(|s| s.rss_mb).fold(0.0, f64::max),
        samples: samples.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_process_names() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 3 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_parsing_reads_vmrss() {
        let status = "Name:\tcontrol\nVmPeak:\t  200000 kB\nVmRSS:\t   51234 kB\nThreads:\t5\n";
        assert_eq!(parse_status_rss_kb(status), Some(51234));
        assert_eq!(parse_status_rss_kb("Name: x\n"), None);
    }

    #[test]
    fn own_process_can_be_sampled() {
        let mut s = ProcessSampler::new(std::process::id());
        // Burn a little CPU so the sample is non-trivial.
        let mut x = 0_u64;
        let start = Instant::now();
        while start.elapsed().as_millis() < 30 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        s.sample(1.0);
        assert!(!s.unreadable);
        let u = s.usage();
        assert_eq!(u.samples.len(), 1);
        assert!(u.rss_mb_max > 1.0, "{u:?}");
        assert!(u.cpu_pct_max >= 0.0);
    }

    #[test]
    fn usage_summarises() {
        let samples = [
            ProcessSample {
                t_s: 1.0,
                cpu_pct: 50.0,
                rss_mb: 10.0,
            },
            ProcessSample {
                t_s: 2.0,
                cpu_pct: 150.0,
                rss_mb: 12.0,
            },
        ];
        let u = usage(7, &samples);
        assert_eq!(
            (u.cpu_pct_mean, u.cpu_pct_max, u.rss_mb_max),
            (100.0, 150.0, 12.0)
        );
        assert_eq!(usage(7, &[]).cpu_pct_mean, 0.0);
    }
}
