//! CPU and memory of a process, sampled from `/proc` once a second (read with `procfs`): the
//! server under test (`--server-pid`) and the generator itself. CPU is `utime + stime` from
//! `/proc/PID/stat` (clock ticks) over wall time, in percent of one core; RSS is `VmRSS` from
//! `/proc/PID/status`.

use std::time::Instant;

use procfs::process::Process;

use super::report::{ProcessSample, ProcessUsage};

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

    /// `utime + stime` in clock ticks.
    fn read_ticks(&self) -> Option<u64> {
        let stat = Process::new(self.pid as i32).ok()?.stat().ok()?;
        Some(stat.utime + stat.stime)
    }

    /// Resident set size in KiB.
    fn read_rss_kb(&self) -> Option<u64> {
        Process::new(self.pid as i32).ok()?.status().ok()?.vmrss
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
                    ticks.saturating_sub(before) as f64 / procfs::ticks_per_second() as f64 / wall
                        * 100.0
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
