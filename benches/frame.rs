//! Throughput of the RFC 6455 frame core in memory: decode + unmask of a masked client frame, and
//! encoding of a server frame, at 16 B, 1 KiB and 64 KiB payloads.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringcast::proto::decoder::{Decoder, DecoderLimits, Event};
use ringcast::proto::frame::{self, Opcode};

const SIZES: [usize; 3] = [16, 1024, 64 * 1024];

const LIMITS: DecoderLimits = DecoderLimits {
    frame_bytes_max: 1 << 20,
    message_bytes_max: 1 << 20,
    message_fragments_max: 64,
};

fn decode_masked_binary(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_masked_binary");
    for size in SIZES {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        frame::encode_client_frame(
            Opcode::Binary,
            &payload,
            [0x37, 0xfa, 0x21, 0x3d],
            &mut wire,
        );
        let mut decoder = Decoder::new();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            // Unmasking in place toggles the payload between masked and clear, and the header is
            // untouched, so the same buffer is a valid client frame on every iteration.
            b.iter(|| {
                let (consumed, event) = decoder.handle_bytes(&mut wire, &LIMITS).unwrap();
                let Some(Event::Binary(data)) = event else {
                    panic!("expected a binary event");
                };
                black_box((consumed, data.len()));
            });
        });
    }
    group.finish();
}

fn encode_binary(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_frame_binary");
    for size in SIZES {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut out = Vec::with_capacity(size + frame::MAX_HEADER_BYTES);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            b.iter(|| {
                out.clear();
                frame::encode_frame(Opcode::Binary, black_box(payload), &mut out);
                black_box(out.len());
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decode_masked_binary, encode_binary);
criterion_main!(benches);
