//! Handshake bench: parse, validate and answer one browser upgrade request, in memory.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringcast::proto::handshake::{validate, write_accept};
use ringcast::proto::http::{HEADER_COUNT_CEILING, HttpLimits, parse_head};

/// What Chrome sends to open a WebSocket: 10 header fields, about 500 bytes.
const CHROME_UPGRADE: &[u8] = b"GET /app/key?protocol=7&client=js&version=8.4.0 HTTP/1.1\r\n\
Host: ws.example.com\r\n\
Connection: Upgrade\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
Chrome/131.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://www.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

fn handshake(c: &mut Criterion) {
    let limits = HttpLimits::default();
    let mut out = Vec::with_capacity(256);
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Bytes(CHROME_UPGRADE.len() as u64));
    group.bench_function("chrome_upgrade", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; HEADER_COUNT_CEILING];
            let head = parse_head(black_box(CHROME_UPGRADE), &mut headers, &limits)
                .expect("the sample is well-formed")
                .expect("the sample is complete");
            let accept = validate(&head).expect("the sample is a valid upgrade");
            out.clear();
            write_accept(&accept, &mut out);
            black_box(&out);
        });
    });
    group.finish();
}

criterion_group!(benches, handshake);
criterion_main!(benches);
