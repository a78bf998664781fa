//! Failed sign-ins per client address: after `Limits::sign_in_failures` wrong tokens within
//! `Intervals::sign_in_window`, that address is refused (429, with `Retry-After`) until the
//! oldest failure leaves the window, so a token cannot be guessed at network speed. Wrong
//! bearer tokens count as failed sign-ins too.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most addresses remembered; beyond it the oldest-failing are forgotten (memory stays
/// bounded under a spray from many addresses).
const MAX_ADDRESSES: usize = 10_000;

/// Recent failures by address.
pub struct SignInGuard {
    window: Duration,
    max_failures: usize,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl SignInGuard {
    /// `max_failures` wrong tokens per `window` and address.
    pub fn new(max_failures: u32, window: Duration) -> SignInGuard {
        SignInGuard {
            window,
            max_failures: max_failures as usize,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` while `ip` has used up its failures in the window.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut all = self.failures.lock().expect("lock");
        let Some(recent) = all.get_mut(&ip) else {
            return Ok(());
        };
        while recent.front().is_some_and(|t| now - *t >= self.window) {
            recent.pop_front();
        }
        if recent.is_empty() {
            all.remove(&ip);
            return Ok(());
        }
        if recent.len() >= self.max_failures {
            let oldest = *recent.front().expect("not empty");
            return Err(self.window.saturating_sub(now - oldest));
        }
        Ok(())
    }

    /// Records a wrong token from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut all = self.failures.lock().expect("lock");
        if all.len() >= MAX_ADDRESSES && !all.contains_key(&ip) {
            let window = self.window;
            all.retain(|_, t| t.back().is_some_and(|last| now - *last < window));
            if all.len() >= MAX_ADDRESSES {
                let stalest = all
                    .iter()
                    .min_by_key(|(_, t)| t.back().copied())
                    .map(|(ip, _)| *ip);
                if let Some(s) = stalest {
                    all.remove(&s);
                }
            }
        }
        let recent = all.entry(ip).or_default();
        recent.push_back(now);
        while recent.len() > self.max_failures {
            recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_passes() {
        let guard = SignInGuard::new(3, Duration::from_millis(300));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(guard.check(a).is_ok());
            guard.failed(a);
        }
        let wait = guard
            .check(a)
            .expect_err("three failures use up the window");
        assert!(
            wait <= Duration::from_millis(300) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(guard.check(b).is_ok(), "another address is not affected");
        std::thread::sleep(Duration::from_millis(320));
        assert!(guard.check(a).is_ok(), "the window passed");
    }

    #[test]
    fn memory_stays_bounded_under_many_addresses() {
        let guard = SignInGuard::new(3, Duration::from_secs(60));
        for i in 0..(MAX_ADDRESSES as u32 + 500) {
            guard.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(guard.failures.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}
