//! A shard's fan-out scheduler: which subscribers get which published frames next.
//!
//! Publishes of one topic are walked together, subscriber by subscriber, in segments bounded
//! by a per-turn delivery budget, so one hot topic cannot starve the shard and every
//! subscriber gets all the frames due to it at once (its one send per turn carries them all:
//! the kernel's cost per send, not per message, is what fan-out pays).
//!
//! The walk is continuous: a publish of the topic being walked joins the walk where it is
//! (`start` = the walk's position), goes to the end of the subscriber vector, wraps, and ends
//! when the walk comes back to where it joined. A walk covers the slots that existed when it
//! began; once someone subscribes, publishes stop joining it (they start the next walk, which
//! covers the newcomer), so every lap ends however fast subscribers arrive. A publish joining
//! the walk waits one lap at most, not a lap of waiting plus a lap of walking. Every subscriber
//! slot is visited once per publish, and frames reach each subscriber in publish order (jobs
//! are kept in join order, and a segment only covers slots where the same jobs apply).
//!
//! While a walk lives the topic keeps removed subscribers as tombstones (slots never move, so
//! no slot is skipped or visited twice); the vector is compacted when the walk ends. A walk
//! that finds tombstones when it wraps stops taking new publishes (they wait in `pending`), so
//! it ends within one more lap and tombstones stay bounded by two laps of churn. Publishes of
//! other topics wait in `pending` too, which also closes the walk to newcomers, so no topic
//! starves another.
//!
//! Sans-IO: the shard asks for segments and queues the sends.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use super::topic::{TOMBSTONE, TopicId, Topics};

/// One publish waiting for its topic's walk.
struct Job {
    topic: TopicId,
    frame: Rc<Bytes>,
    exclude: Option<u32>,
}

/// A publish being walked.
struct Active {
    frame: Rc<Bytes>,
    /// The publishing connection, which does not get its own message.
    exclude: Option<u32>,
    /// The slot where it joined the walk: it covers `[start, end)`, then `[0, start)`.
    start: usize,
    /// Past the wrap: it covers `[0, start)` now.
    lapped: bool,
}

struct Walk {
    topic: TopicId,
    /// The subscriber slots walked: the vector's length when the walk began. Subscribers
    /// appended later wait for the next walk, so a lap always ends however fast they come.
    end: usize,
    /// The next subscriber slot to visit.
    pos: usize,
    /// In join (= publish) order: lapped jobs first, by increasing `start`.
    jobs: VecDeque<Active>,
    /// Takes no more publishes (tombstones are waiting for compaction).
    closing: bool,
}

/// A stretch of one topic's subscribers that all get the same frames, in order.
#[derive(Default)]
pub struct Segment {
    pub topic: Option<TopicId>,
    /// Connection indices (or [`TOMBSTONE`]).
    pub subscribers: Vec<u32>,
    /// Frames in publish order, each with the connection that does not get it.
    pub frames: Vec<(Rc<Bytes>, Option<u32>)>,
    /// The topic's live local subscribers (they share each frame).
    pub sharers: u32,
    /// Connections whose slot in `topic` moved when a walk ended and compacted it.
    pub moved: Vec<(TopicId, u32, u32)>,
}

impl Segment {
    /// Each (connection, frame) to queue, in order: per subscriber, its frames in publish
    /// order, skipping tombstones and each frame's publisher.
    pub fn deliveries(&self) -> impl Iterator<Item = (u32, &Rc<Bytes>)> + '_ {
        self.subscribers
            .iter()
            .filter(|&&c| c != TOMBSTONE)
            .flat_map(move |&c| {
                self.frames
                    .iter()
                    .filter(move |(_, exclude)| *exclude != Some(c))
                    .map(move |(frame, _)| (c, frame))
            })
    }

    fn clear(&mut self) {
        self.topic = None;
        self.subscribers.clear();
        self.frames.clear();
        self.sharers = 0;
    }
}

pub struct Fanout {
    pending: VecDeque<Job>,
    walk: Option<Walk>,
    /// Most publishes walked together (bounds a segment's frames).
    run_max: usize,
}

impl Fanout {
    pub fn new(run_max: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            walk: None,
            run_max: run_max.max(1),
        }
    }

    /// No publish waits or is being walked.
    pub fn is_empty(&self) -> bool {
        self.walk.is_none() && self.pending.is_empty()
    }

    /// Queues `frame` for the local subscribers of `topic` (which keeps existing until the
    /// frame has been walked).
    pub fn publish(
        &mut self,
        topics: &mut Topics,
        topic: TopicId,
        frame: Rc<Bytes>,
        exclude: Option<u32>,
    ) {
        topics.begin_fanout(topic);
        // A publish joins only while nobody subscribed since the walk began: it must reach
        // every subscriber present now, and the walk visits only the first `end` slots.
        if let Some(w) = &mut self.walk
            && w.topic == topic
            && !w.closing
            && self.pending.is_empty()
            && w.jobs.len() < self.run_max
            && topics.topic(topic).subscribers.len() == w.end
        {
            w.jobs.push_back(Active {
                frame,
                exclude,
                start: w.pos,
                lapped: false,
            });
        } else {
            self.pending.push_back(Job {
                topic,
                frame,
                exclude,
            });
        }
    }

    /// Fills `seg` with the next stretch of deliveries, spending at most `budget` of them
    /// (at least one subscriber's worth). False when there is nothing to do or no budget left;
    /// `seg.moved` may be filled either way.
    pub fn next_segment(
        &mut self,
        topics: &mut Topics,
        budget: &mut usize,
        seg: &mut Segment,
    ) -> bool {
        seg.clear();
        loop {
            let w = match &mut self.walk {
                Some(w) => w,
                None => {
                    let Some(front) = self.pending.front() else {
                        return false;
                    };
                    let topic = front.topic;
                    topics.begin_walk(topic);
                    let mut jobs = VecDeque::new();
                    while jobs.len() < self.run_max
                        && let Some(j) = self.pending.front()
                        && j.topic == topic
                    {
                        let j = self.pending.pop_front().unwrap_or_else(|| unreachable!());
                        jobs.push_back(Active {
                            frame: j.frame,
                            exclude: j.exclude,
                            start: 0,
                            lapped: false,
                        });
                    }
                    self.walk.insert(Walk {
                        topic,
                        end: topics.topic(topic).subscribers.len(),
                        pos: 0,
                        jobs,
                        closing: false,
                    })
                }
            };
            let topic = w.topic;
            while let Some(a) = w.jobs.front()
                && a.lapped
                && a.start <= w.pos
            {
                w.jobs.pop_front();
                topics.end_fanout(topic);
            }
            if w.jobs.is_empty() {
                self.walk = None;
                let moved = topics.end_walk(topic);
                seg.moved
                    .extend(moved.into_iter().map(|(c, s)| (topic, c, s)));
                continue;
            }
            if w.pos >= w.end {
                w.jobs.retain_mut(|a| {
                    if a.start == 0 {
                        topics.end_fanout(topic);
                        false
                    } else {
                        a.lapped = true;
                        true
                    }
                });
                w.pos = 0;
                w.closing = topics.has_tombstones(topic);
                continue;
            }
            if *budget == 0 {
                return false;
            }
            let t = topics.topic(topic);
            let front = &w.jobs[0];
            let end = if front.lapped { front.start } else { w.end };
            let active = w.jobs.len();
            let take = (*budget / active).max(1).min(end - w.pos);
            *budget = budget.saturating_sub(take * active);
            seg.topic = Some(topic);
            seg.subscribers
                .extend_from_slice(&t.subscribers[w.pos..w.pos + take]);
            seg.frames
                .extend(w.jobs.iter().map(|a| (Rc::clone(&a.frame), a.exclude)));
            seg.sharers = t.live;
            w.pos += take;
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use super::*;
    use crate::test_rng::Rng;

    /// Messages carry their sequence number as the frame.
    fn frame(seq: u64) -> Rc<Bytes> {
        Rc::new(Bytes::copy_from_slice(&seq.to_le_bytes()))
    }

    fn seq_of(f: &Bytes) -> u64 {
        u64::from_le_bytes(f[..8].try_into().unwrap())
    }

    /// Topic "a" with subscribers 0..n in slots 0..n.
    fn topic_with(n: u32) -> (Topics, TopicId) {
        let mut topics = Topics::new();
        for c in 0..n {
            topics.subscribe("a", c);
        }
        let id = topics.lookup("a").unwrap();
        (topics, id)
    }

    /// A model of the shard: connections subscribe, leave, publish; the fan-out runs with
    /// random budgets. Checks, for every connection: no message twice, publish order kept,
    /// nothing after it left, never its own message, and every message published while it was
    /// subscribed if it stayed subscribed until the fan-out drained.
    fn run_model(seed: u64, steps: usize, topics_n: usize, initial: u32, publish_weight: usize) {
        let mut rng = Rng(seed);
        let mut topics = Topics::new();
        let mut fan = Fanout::new(4 + rng.below(8));
        let mut seg = Segment::default();
        // conn -> (topic name, slot)
        let mut subs: BTreeMap<u32, (String, u32)> = BTreeMap::new();
        let mut got: HashMap<u32, Vec<u64>> = HashMap::new();
        // seq -> (topic, subscribers at publish time, excluded)
        let mut published: Vec<(String, BTreeSet<u32>, Option<u32>)> = Vec::new();
        let mut left: BTreeSet<u32> = BTreeSet::new();
        let mut max_len = 0usize;
        let mut peak_live = 0usize;
        let apply_moved = |subs: &mut BTreeMap<u32, (String, u32)>,
                           topics: &Topics,
                           moved: &[(TopicId, u32, u32)]| {
            for &(t, c, s) in moved {
                let name = topics.topic(t).name.to_string();
                let e = subs.get_mut(&c).expect("moved connection is subscribed");
                assert_eq!(e.0, name);
                e.1 = s;
            }
        };
        let mut run = |fan: &mut Fanout,
                       topics: &mut Topics,
                       subs: &mut BTreeMap<u32, (String, u32)>,
                       got: &mut HashMap<u32, Vec<u64>>,
                       left: &BTreeSet<u32>,
                       budget: usize| {
            let mut budget = budget;
            loop {
                let more = fan.next_segment(topics, &mut budget, &mut seg);
                apply_moved(subs, topics, &seg.moved);
                seg.moved.clear();
                if !more {
                    break;
                }
                let t = seg.topic.unwrap();
                for (c, f) in seg.deliveries() {
                    assert!(!left.contains(&c), "delivery to a connection that left");
                    assert_eq!(subs[&c].0, topics.topic(t).name.as_ref());
                    got.entry(c).or_default().push(seq_of(f));
                }
            }
        };
        for c in 0..initial {
            let name = format!("t{}", c as usize % topics_n);
            let (_, slot, _) = topics.subscribe(&name, c);
            subs.insert(c, (name, slot));
        }
        let mut next_conn = initial;
        for _ in 0..steps {
            match rng.below(10 + publish_weight) {
                0..=2 => {
                    let name = format!("t{}", rng.below(topics_n));
                    let c = next_conn;
                    next_conn += 1;
                    let (_, slot, _) = topics.subscribe(&name, c);
                    subs.insert(c, (name, slot));
                }
                3..=5 if !subs.is_empty() => {
                    let k = rng.below(subs.len());
                    let c = *subs.keys().nth(k).unwrap();
                    let (name, slot) = subs.remove(&c).unwrap();
                    let id = topics.lookup(&name).unwrap();
                    let u = topics.unsubscribe(id, slot, c);
                    if let Some((m, s)) = u.moved {
                        subs.get_mut(&m).unwrap().1 = s;
                    }
                    left.insert(c);
                }
                6..=9 => {
                    let budget = 1 + rng.below(4 * initial as usize + 12);
                    run(&mut fan, &mut topics, &mut subs, &mut got, &left, budget);
                }
                _ => {
                    let name = format!("t{}", rng.below(topics_n));
                    let Some(id) = topics.lookup(&name) else {
                        continue;
                    };
                    if topics.topic(id).live == 0 {
                        continue;
                    }
                    let members: BTreeSet<u32> = subs
                        .iter()
                        .filter(|(_, (n, _))| *n == name)
                        .map(|(&c, _)| c)
                        .collect();
                    let exclude = if rng.below(3) == 0 {
                        members.iter().next().copied()
                    } else {
                        None
                    };
                    let seq = published.len() as u64;
                    published.push((name, members, exclude));
                    fan.publish(&mut topics, id, frame(seq), exclude);
                }
            }
            for (_, t) in topics.topics.iter() {
                max_len = max_len.max(t.subscribers.len());
                peak_live = peak_live.max(t.live as usize);
            }
        }
        run(
            &mut fan,
            &mut topics,
            &mut subs,
            &mut got,
            &left,
            usize::MAX,
        );
        assert!(fan.is_empty());
        for (_, t) in topics.topics.iter() {
            assert_eq!(
                t.subscribers.len(),
                t.live as usize,
                "compacted once drained"
            );
            assert_eq!(t.busy, 0);
            assert!(!t.walking);
        }
        for (c, seqs) in &got {
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "connection {c}: order or duplicate: {seqs:?}"
            );
        }
        for (seq, (_, members, exclude)) in published.iter().enumerate() {
            for c in members {
                if left.contains(c) || Some(*c) == *exclude {
                    continue;
                }
                let seqs = got.get(c).map(Vec::as_slice).unwrap_or(&[]);
                assert!(
                    seqs.binary_search(&(seq as u64)).is_ok(),
                    "connection {c} missed message {seq}"
                );
            }
            if let Some(ex) = exclude {
                let seqs = got.get(ex).map(Vec::as_slice).unwrap_or(&[]);
                assert!(
                    seqs.binary_search(&(seq as u64)).is_err(),
                    "publisher got its own"
                );
            }
        }
        // Tombstones are bounded by a couple of laps of churn, not by the run's length.
        assert!(
            max_len <= 4 * peak_live + 64,
            "vector grew to {max_len} with at most {peak_live} live"
        );
    }

    #[test]
    fn random_interleavings_deliver_everything_once_in_order() {
        for seed in 1..400u64 {
            run_model(
                seed * 0x9e37_79b9_7f4a_7c15,
                600,
                1 + seed as usize % 3,
                0,
                3,
            );
        }
    }

    #[test]
    fn constant_publishing_with_churn_keeps_the_walk_compacting() {
        for seed in 1..20u64 {
            run_model(seed * 0x2545_f491_4f6c_dd1d, 20_000, 1, 200, 6);
        }
    }

    #[test]
    fn a_publish_joins_the_walk_in_progress() {
        let (mut topics, id) = topic_with(10);
        let mut fan = Fanout::new(16);
        let mut seg = Segment::default();
        fan.publish(&mut topics, id, frame(0), None);
        let mut budget = 4;
        assert!(fan.next_segment(&mut topics, &mut budget, &mut seg));
        assert_eq!(seg.subscribers, vec![0, 1, 2, 3]);
        fan.publish(&mut topics, id, frame(1), None);
        let mut budget = 4;
        assert!(fan.next_segment(&mut topics, &mut budget, &mut seg));
        assert_eq!(seg.subscribers, vec![4, 5], "both frames, budget split");
        assert_eq!(seg.frames.len(), 2);
        let mut budget = 100;
        let mut visits = Vec::new();
        while fan.next_segment(&mut topics, &mut budget, &mut seg) {
            visits.push((seg.subscribers.clone(), seg.frames.len()));
        }
        assert_eq!(
            visits,
            vec![(vec![6, 7, 8, 9], 2), (vec![0, 1, 2, 3], 1)],
            "the second publish wraps to the slots it missed, alone"
        );
        assert!(fan.is_empty());
    }

    #[test]
    fn a_walk_with_tombstones_takes_no_publish_after_its_wrap() {
        let (mut topics, id) = topic_with(6);
        let mut fan = Fanout::new(16);
        let mut seg = Segment::default();
        fan.publish(&mut topics, id, frame(0), None);
        let mut budget = 3;
        assert!(fan.next_segment(&mut topics, &mut budget, &mut seg));
        assert_eq!(
            topics.unsubscribe(id, 4, 4).moved,
            None,
            "tombstone while walking"
        );
        fan.publish(&mut topics, id, frame(1), None);
        let mut budget = 6;
        assert!(fan.next_segment(&mut topics, &mut budget, &mut seg));
        assert_eq!(seg.subscribers, vec![3, TOMBSTONE, 5]);
        // The wrap finds a tombstone: the walk closes, so publish 2 starts a new walk.
        let mut budget = 1;
        assert!(fan.next_segment(&mut topics, &mut budget, &mut seg));
        assert_eq!((seg.subscribers.clone(), seg.frames.len()), (vec![0], 1));
        fan.publish(&mut topics, id, frame(2), None);
        let mut budget = 100;
        let mut visits = Vec::new();
        while fan.next_segment(&mut topics, &mut budget, &mut seg) || !seg.moved.is_empty() {
            let frames: Vec<u64> = seg.frames.iter().map(|(f, _)| seq_of(f)).collect();
            visits.push((seg.subscribers.clone(), frames, seg.moved.len()));
            seg.moved.clear();
        }
        assert_eq!(
            visits,
            vec![(vec![1, 2], vec![1], 0), (vec![0, 1, 2, 3, 5], vec![2], 5)],
            "compacted between the walks"
        );
    }

    #[test]
    fn a_subscriber_arriving_mid_walk_gets_the_publishes_made_after_it() {
        let (mut topics, id) = topic_with(2);
        let mut fan = Fanout::new(16);
        let mut seg = Segment::default();
        fan.publish(&mut topics, id, frame(0), None);
        let mut budget = 1;
        assert!(fan.next_segment(&mut topics, &mut budget, &mut seg));
        topics.subscribe("a", 2);
        fan.publish(&mut topics, id, frame(1), None);
        let mut got: Vec<(u32, u64)> = Vec::new();
        let mut budget = 100;
        while fan.next_segment(&mut topics, &mut budget, &mut seg) {
            got.extend(seg.deliveries().map(|(c, f)| (c, seq_of(f))));
        }
        assert_eq!(got, vec![(1, 0), (0, 1), (1, 1), (2, 1)]);
    }
}
