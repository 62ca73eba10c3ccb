//! Per-IP admission for one shard: concurrent connections and new connections per second from
//! one address. Off unless configured (behind a proxy every client shares one address).
//!
//! Bounded: an address has an entry only while it holds connections or was seen in the current
//! one-second window, so the map never holds more than the shard's connections plus one
//! second's accepts.

use std::collections::HashMap;
use std::net::IpAddr;

use super::timer::{Tick, ms_to_ticks, tick_reached};

#[derive(Debug, Clone, Copy)]
struct Entry {
    live: u32,
    window_start: Tick,
    window_count: u32,
}

pub struct PerIp {
    live_max: u32,
    per_second_max: u32,
    by_ip: HashMap<IpAddr, Entry>,
    of_conn: HashMap<u32, IpAddr>,
}

impl PerIp {
    /// `live_max` / `per_second_max` of 0 turn that check off.
    pub fn new(live_max: u32, per_second_max: u32) -> Self {
        Self {
            live_max,
            per_second_max,
            by_ip: HashMap::new(),
            of_conn: HashMap::new(),
        }
    }

    /// Counts a new connection from `ip` if both limits allow it; false means refuse (429).
    pub fn admit(&mut self, ip: IpAddr, now: Tick) -> bool {
        let second = ms_to_ticks(1000);
        let e = self.by_ip.entry(ip).or_insert(Entry {
            live: 0,
            window_start: now,
            window_count: 0,
        });
        if tick_reached(e.window_start.wrapping_add(second), now) {
            e.window_start = now;
            e.window_count = 0;
        }
        if self.per_second_max > 0 && e.window_count >= self.per_second_max {
            return false;
        }
        if self.live_max > 0 && e.live >= self.live_max {
            return false;
        }
        e.window_count += 1;
        e.live += 1;
        true
    }

    /// Remembers which address connection `index` came from (after a successful `admit`).
    pub fn bind(&mut self, index: u32, ip: IpAddr) {
        self.of_conn.insert(index, ip);
    }

    /// Connection `index` is gone.
    pub fn unbind(&mut self, index: u32) {
        if let Some(e) = self
            .of_conn
            .remove(&index)
            .and_then(|ip| self.by_ip.get_mut(&ip))
        {
            e.live = e.live.saturating_sub(1);
        }
    }

    /// Drops entries with no connection whose window has passed.
    pub fn sweep(&mut self, now: Tick) {
        let second = ms_to_ticks(1000);
        self.by_ip
            .retain(|_, e| e.live > 0 || !tick_reached(e.window_start.wrapping_add(second), now));
    }

    pub fn tracked_addresses(&self) -> usize {
        self.by_ip.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn concurrent_limit_refuses_the_next_connection_until_one_leaves() {
        let mut p = PerIp::new(2, 0);
        assert!(p.admit(A, 1));
        p.bind(1, A);
        assert!(p.admit(A, 1));
        p.bind(2, A);
        assert!(!p.admit(A, 1));
        assert!(p.admit(B, 1));
        p.unbind(1);
        assert!(p.admit(A, 1));
    }

    #[test]
    fn rate_limit_resets_after_a_second() {
        let mut p = PerIp::new(0, 3);
        for _ in 0..3 {
            assert!(p.admit(A, 10));
        }
        assert!(!p.admit(A, 10));
        assert!(p.admit(A, 10 + ms_to_ticks(1000)));
    }

    #[test]
    fn sweep_forgets_idle_addresses_but_keeps_live_ones() {
        let mut p = PerIp::new(5, 5);
        assert!(p.admit(A, 1));
        p.bind(7, A);
        assert!(p.admit(B, 1));
        p.sweep(1 + ms_to_ticks(1000));
        assert_eq!(p.tracked_addresses(), 2);
        p.unbind(7);
        p.sweep(1 + ms_to_ticks(1000));
        assert_eq!(p.tracked_addresses(), 1);
    }
}
