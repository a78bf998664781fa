//! The lease rescuer: a worker that stops heartbeating (killed, partitioned, out of memory)
//! holds its run's lease until the lease expires; the rescuer then marks that attempt lost and
//! requeues the run, so no run waits forever on a dead worker. `serve` runs it beside the
//! services.

use super::*;

impl Coordinator {
    /// Requeues runs whose lease expired, every `intervals.rescue`, forever; wakes idle worker
    /// sessions when it requeued any.
    pub async fn rescuer(self) {
        let mut tick = tokio::time::interval(self.cfg.intervals.rescue);
        loop {
            tick.tick().await;
            match self.store.reap_expired().await {
                Ok(n) if n > 0 => {
                    tracing::warn!("{n} attempt(s) lost (lease expired)");
                    self.work.notify_waiters();
                }
                Ok(_) => {}
                Err(e) => tracing::error!("rescuer: {e}"),
            }
        }
    }
}
