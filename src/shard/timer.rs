//! A hashed timing wheel per shard: deadlines for every connection without a heap object per
//! connection. Each connection keeps its own deadline; the wheel holds at most a few 8-byte
//! entries `(slot index, tick)` per connection, and stale entries are dropped lazily when popped.

/// Milliseconds per tick. Coarse on purpose: timeouts are seconds long, and a coarse tick means
/// fewer wake-ups; tests use timeouts of a few hundred milliseconds.
pub const TICK_MS: u64 = 16;
/// Slots in the wheel: 4096 x 16 ms spans 65 s, so the default timeouts fire in one lap.
const SLOTS: usize = 4096;

/// A point in time, in ticks since the shard started (u32 ticks of 16 ms last 2.2 years).
pub type Tick = u32;

/// Converts milliseconds to a tick count, rounding up, at least 1.
pub fn ms_to_ticks(ms: u32) -> Tick {
    (u64::from(ms).div_ceil(TICK_MS)).max(1) as Tick
}

pub struct TimerWheel {
    slots: Vec<Vec<(u32, Tick)>>,
    /// The last tick whose slot was drained.
    done: Tick,
}

impl Default for TimerWheel {
    fn default() -> Self {
        Self::new()
    }
}

impl TimerWheel {
    pub fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            done: 0,
        }
    }

    /// Queues `index` to be looked at when tick `at` comes (or on the next advance if `at` has
    /// passed). Returns the tick the entry was filed under, which callers must remember to
    /// recognise the entry when it fires.
    pub fn insert(&mut self, index: u32, at: Tick) -> Tick {
        let at = if tick_reached(at, self.done) {
            self.done.wrapping_add(1)
        } else {
            at
        };
        self.slots[at as usize % SLOTS].push((index, at));
        at
    }

    /// Drains every slot up to and including `now`, appending `(index, tick)` pairs whose tick has
    /// come to `due`. Entries for a later lap stay. The caller checks each against the
    /// connection's current deadline (entries may be stale) and re-inserts what is still pending.
    pub fn advance(&mut self, now: Tick, due: &mut Vec<(u32, Tick)>) {
        // Bound the work to one lap even after a long stall.
        let laps_behind = now.wrapping_sub(self.done) as usize;
        let steps = laps_behind.min(SLOTS);
        for step in 1..=steps {
            let tick = if laps_behind > SLOTS {
                now.wrapping_sub((SLOTS - step) as u32)
            } else {
                self.done.wrapping_add(step as u32)
            };
            let slot = &mut self.slots[tick as usize % SLOTS];
            let mut i = 0;
            while i < slot.len() {
                if tick_reached(slot[i].1, now) {
                    due.push(slot.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        self.done = now;
    }

    /// Entries currently held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// True when `deadline` is at or before `now`, with wrap-around.
pub fn tick_reached(deadline: Tick, now: Tick) -> bool {
    (now.wrapping_sub(deadline) as i32) >= 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_fires_at_its_tick_not_before() {
        let mut w = TimerWheel::new();
        w.insert(7, 10);
        let mut due = Vec::new();
        w.advance(9, &mut due);
        assert!(due.is_empty());
        w.advance(10, &mut due);
        assert_eq!(due, vec![(7, 10)]);
        assert!(w.is_empty());
    }

    #[test]
    fn entry_beyond_one_lap_waits_for_its_lap() {
        let mut w = TimerWheel::new();
        let at = SLOTS as Tick + 5;
        w.insert(1, at);
        let mut due = Vec::new();
        w.advance(5, &mut due);
        assert!(due.is_empty());
        w.advance(at, &mut due);
        assert_eq!(due, vec![(1, at)]);
    }

    #[test]
    fn past_deadline_fires_on_next_advance_under_the_tick_insert_returned() {
        let mut w = TimerWheel::new();
        let mut due = Vec::new();
        w.advance(100, &mut due);
        assert_eq!(w.insert(3, 50), 101);
        assert_eq!(w.insert(4, 100), 101);
        w.advance(101, &mut due);
        assert_eq!(due, vec![(3, 101), (4, 101)]);
    }

    #[test]
    fn long_stall_still_fires_everything_due() {
        let mut w = TimerWheel::new();
        for i in 0..100 {
            w.insert(i, i * 97 + 1);
        }
        let mut due = Vec::new();
        w.advance(1_000_000, &mut due);
        assert_eq!(due.len(), 100);
    }

    #[test]
    fn ticks_round_up() {
        assert_eq!(ms_to_ticks(0), 1);
        assert_eq!(ms_to_ticks(16), 1);
        assert_eq!(ms_to_ticks(17), 2);
        assert!(tick_reached(5, 5));
        assert!(!tick_reached(6, 5));
        assert!(tick_reached(u32::MAX, 2));
    }
}
