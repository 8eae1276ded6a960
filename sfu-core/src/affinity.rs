//! Pinning a worker thread to one CPU (`sched_setaffinity`), and lowering the priority of
//! helper threads so they never win a core from a media worker.
#![allow(unsafe_code)]

use std::io;

/// CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 = calling thread; the size matches the set we pass.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the set's capacity.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pin the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    restrict_current_thread(&[cpu])
}

/// Let the calling thread (and the threads it creates from now on) run only on `cpus`.
pub fn restrict_current_thread(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cpu index out of range",
            ));
        }
        // SAFETY: CPU_SET writes within the set for cpu < CPU_SETSIZE (checked above).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 = calling thread; the size matches the set.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Split the CPUs this process may use between `workers` media workers and everything else:
/// worker `i` gets `worker[i]`; `spare` are the CPUs no worker is pinned to, for the threads
/// that are not workers (set-up, events, signaling). `spare` is empty when the workers take
/// every CPU (the default: one worker per core); those threads then share the workers' cores
/// at a lower priority.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuPlan {
    pub worker: Vec<usize>,
    pub spare: Vec<usize>,
}

impl CpuPlan {
    /// The plan for `workers` workers over `allowed` CPUs (ascending; empty = do not pin).
    pub fn new(allowed: &[usize], workers: usize) -> CpuPlan {
        if allowed.is_empty() {
            return CpuPlan::default();
        }
        let worker: Vec<usize> = (0..workers).map(|i| allowed[i % allowed.len()]).collect();
        let spare = allowed
            .iter()
            .copied()
            .filter(|cpu| !worker.contains(cpu))
            .collect();
        CpuPlan { worker, spare }
    }

    /// Confine the calling thread to the spare CPUs, if there are any.
    pub fn confine_to_spare(&self, what: &str) {
        if self.spare.is_empty() {
            return;
        }
        if let Err(e) = restrict_current_thread(&self.spare) {
            tracing::warn!(thread = what, cpus = ?self.spare, error = %e, "could not confine a thread to the spare CPUs");
        }
    }
}

/// Lower the calling thread's scheduling priority to `nice` (0..=19; higher yields more). On
/// Linux `setpriority(PRIO_PROCESS, tid)` applies to one thread.
pub fn lower_current_thread_priority(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: plain system call on our own thread id; no memory is passed.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice.clamp(0, 19)) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::CpuPlan;

    #[test]
    fn spare_cpus_are_those_no_worker_has() {
        let plan = CpuPlan::new(&[0, 1, 2, 3], 3);
        assert_eq!(plan.worker, vec![0, 1, 2]);
        assert_eq!(plan.spare, vec![3]);
        // One worker per core (the default) leaves nothing spare; more workers than cores wrap.
        assert!(CpuPlan::new(&[0, 1], 2).spare.is_empty());
        assert_eq!(CpuPlan::new(&[4, 6], 3).worker, vec![4, 6, 4]);
        // Not pinning: no plan at all.
        assert_eq!(CpuPlan::new(&[], 2), CpuPlan::default());
    }
}
