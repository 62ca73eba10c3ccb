//! In-memory fan-out: publish one encoded frame to 1, 100 and 10,000 local subscribers of a
//! topic: the fan-out scheduler walks the topic's subscribers in segments (default per-turn
//! budget) and a shared reference to the frame is queued on each subscriber's send queue (what
//! a shard does per publish before the sends are submitted), then the queues are drained as the
//! sends would.

use std::hint::black_box;
use std::rc::Rc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringcast::broker::fanout::{Fanout, Segment};
use ringcast::broker::topic::Topics;
use ringcast::buf::OutBuf;
use ringcast::config::Limits;
use ringcast::proto::frame::{Opcode, encode_frame};
use ringcast::shard::sendq::{QueueRef, SendQueues};

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1u32, 100, 10_000] {
        let mut topics = Topics::new();
        let mut queues = vec![QueueRef::EMPTY; subscribers as usize];
        let mut id = None;
        for conn in 0..subscribers {
            id = Some(topics.subscribe("prices", conn).0);
        }
        let id = id.expect("at least one subscriber");
        let mut pool = SendQueues::new();
        let mut fan = Fanout::new(1024);
        let mut seg = Segment::default();
        let per_turn = Limits::default().fanout_deliveries_per_turn_max as usize;
        let mut frame = Vec::new();
        encode_frame(Opcode::Text, &[b'x'; 64], &mut frame);
        let frame = Rc::new(Bytes::from(frame));
        group.throughput(Throughput::Elements(u64::from(subscribers)));
        group.bench_function(BenchmarkId::new("publish_64B", subscribers), |b| {
            b.iter(|| {
                fan.publish(&mut topics, id, Rc::clone(&frame), None);
                while !fan.is_empty() {
                    let mut budget = per_turn;
                    while fan.next_segment(&mut topics, &mut budget, &mut seg) {
                        for (conn, frame) in seg.deliveries() {
                            pool.push_back(
                                &mut queues[conn as usize],
                                OutBuf::shared(Rc::clone(frame), seg.sharers),
                            );
                        }
                    }
                }
                for q in &mut queues {
                    while let Some(buf) = pool.pop_front(q) {
                        black_box(buf.as_slice().len());
                    }
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
