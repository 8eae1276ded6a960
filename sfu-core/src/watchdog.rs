//! The worker watchdog: a media worker that stops takes the whole process down, so that the
//! supervisor (systemd `Restart=on-failure`, Kubernetes, Docker) restarts it. A node with a
//! dead worker keeps accepting sessions for the others but fails every session placed on that
//! worker, and nothing inside the process can restart the thread.

use std::time::Duration;

/// How often the watchdog looks at the workers.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Exit status of a process stopped by the watchdog: `EX_SOFTWARE` (internal software error)
/// from sysexits.h. Anything non-zero makes systemd's `Restart=on-failure` restart it.
pub const EXIT_CODE: i32 = 70;

/// Media workers whose threads have ended while the node was meant to be running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "media worker(s) {} stopped; exiting so that the supervisor restarts the process",
    list(.workers)
)]
pub struct WorkersStopped {
    pub workers: Vec<usize>,
}

fn list(workers: &[usize]) -> String {
    workers
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The workers that are not up, from the node's per-worker liveness (index = worker id).
pub fn stopped_workers(up: &[bool]) -> Vec<usize> {
    up.iter()
        .enumerate()
        .filter_map(|(worker, up)| (!up).then_some(worker))
        .collect()
}

/// Polls `workers_up` (the node's health through the node API) every `period` and resolves
/// with the stopped workers once there are any.
pub async fn watch<F, Fut>(workers_up: F, period: Duration) -> WorkersStopped
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<bool>>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let workers = stopped_workers(&workers_up().await);
        if !workers.is_empty() {
            return WorkersStopped { workers };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn stopped_workers_are_named_by_index() {
        assert_eq!(stopped_workers(&[]), Vec::<usize>::new());
        assert_eq!(stopped_workers(&[true, true]), Vec::<usize>::new());
        assert_eq!(stopped_workers(&[true, false, true, false]), vec![1, 3]);
        let e = WorkersStopped {
            workers: vec![1, 3],
        };
        assert!(e.to_string().contains("worker(s) 1, 3 stopped"), "{e}");
    }

    /// The watch keeps polling while every worker runs and resolves on the first poll that
    /// sees a stopped one, naming it.
    #[tokio::test]
    async fn the_watch_resolves_when_a_worker_stops() {
        let polls = AtomicUsize::new(0);
        let stopped = watch(
            || {
                let n = polls.fetch_add(1, Ordering::Relaxed);
                std::future::ready(vec![true, n < 3, true])
            },
            Duration::from_millis(1),
        )
        .await;
        assert_eq!(stopped.workers, vec![1]);
        assert_eq!(polls.load(Ordering::Relaxed), 4);
    }
}
