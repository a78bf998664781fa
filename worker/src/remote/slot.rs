//! A worker's slots and what they share. Each slot (a device, or one of several CPU slots)
//! runs one session with the coordinator and at most one job at a time; the slots share the
//! worker's registration, its shutdown and its idle clock, so `--idle-exit` counts from the
//! moment the last slot went idle.

use super::*;
use std::sync::atomic::AtomicUsize;

/// One device slot as the worker advertises it, and the device its jobs run on.
#[derive(Debug, Clone)]
pub struct Slot {
    /// What the coordinator sees: name (`cuda:0`, `cpu:1`), kind and memory.
    pub info: pb::DeviceInfo,
    /// Where a job holding this slot runs (the CPU for simulated GPUs).
    pub device: tch::Device,
}

/// The device a job given `names` (its assignment's devices) runs on: the first one's, or
/// the first slot's when the coordinator named none (an older coordinator).
pub(super) fn job_device(slots: &[Slot], names: &[String]) -> tch::Device {
    names
        .first()
        .and_then(|n| slots.iter().find(|s| &s.info.name == n))
        .unwrap_or(&slots[0])
        .device
}

/// The attempt a slot is running.
pub(super) struct Running {
    pub(super) fence: pb::Fence,
    pub(super) cancel: CancelToken,
    pub(super) step: Arc<AtomicI64>,
    pub(super) total: Arc<AtomicI64>,
}

/// What every slot of the worker shares.
pub(super) struct Host {
    /// `(worker id, heartbeat period)` once registered.
    pub(super) registration: tokio::sync::Mutex<Option<(i64, Duration)>>,
    pub(super) shutting_down: AtomicBool,
    /// Slots running a job now.
    busy: AtomicUsize,
    /// When the last busy slot went idle (or the worker started).
    idle_since: Mutex<Instant>,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            registration: tokio::sync::Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }
}

/// One slot's state.
pub(super) struct Shared {
    pub(super) host: Arc<Host>,
    pub(super) running: Mutex<Option<Running>>,
    /// Sends a heartbeat now: a finished run's slot says it is idle at once, so the
    /// coordinator hands it the next run without waiting for the heartbeat period.
    pub(super) beat_now: tokio::sync::Notify,
    /// Assignments received in the current session (heartbeats carry it; see the proto).
    pub(super) assignments_seen: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub(super) fn new(host: Arc<Host>) -> Shared {
        Shared {
            host,
            running: Mutex::new(None),
            beat_now: tokio::sync::Notify::new(),
            assignments_seen: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(super) fn shutting_down(&self) -> bool {
        self.host.shutting_down.load(Ordering::SeqCst)
    }

    /// Shutting down with no run left to finish on this slot.
    pub(super) fn idle_and_stopping(&self) -> bool {
        self.shutting_down() && self.running.lock().expect("lock").is_none()
    }

    /// Cancels this slot's job, if any, so it checkpoints and its run is released.
    fn release(&self, why: &str) {
        if let Some(r) = self.running.lock().expect("lock").as_ref() {
            eprintln!(
                "{why}: run {} attempt {} writes a checkpoint and is released",
                r.fence.run_id, r.fence.attempt
            );
            r.cancel.cancel();
        }
    }

    /// With `--idle-exit`: whether every slot has been without a run for that long; if so
    /// the worker starts shutting down.
    pub(super) fn idle_expired(&self, idle_exit: Option<Duration>) -> bool {
        let Some(limit) = idle_exit else {
            return false;
        };
        if self.host.busy.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let idle = self.host.idle_since.lock().expect("lock").elapsed();
        idle >= limit && {
            if !self.host.shutting_down.swap(true, Ordering::SeqCst) {
                eprintln!("idle for {} s (--idle-exit): stopping", idle.as_secs());
            }
            true
        }
    }

    /// A job started on this slot.
    pub(super) fn started(&self, running: Running) {
        self.host.busy.fetch_add(1, Ordering::SeqCst);
        *self.running.lock().expect("lock") = Some(running);
    }

    /// This slot's job ended: the slot is free, and says so at once.
    pub(super) fn ended(&self) {
        *self.running.lock().expect("lock") = None;
        if self.host.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.host.idle_since.lock().expect("lock") = Instant::now();
        }
        self.beat_now.notify_one();
    }
}

/// Starts shutting down every slot: running jobs checkpoint and their runs are released to
/// be resumed elsewhere. Returns false when already shutting down.
pub(super) fn stop_all(slots: &[Arc<Shared>], why: &str) -> bool {
    let Some(first) = slots.first() else {
        return false;
    };
    if first.host.shutting_down.swap(true, Ordering::SeqCst) {
        return false;
    }
    eprintln!("{why}: stopping");
    for s in slots {
        s.release(why);
    }
    true
}
