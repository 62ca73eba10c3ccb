#!/usr/bin/env python3
"""Regenerate the committed fuzz seeds: fuzz/seeds/<target>/<name> (raw bytes).

Each file is what the fuzz target gets: a few leading bytes that the crate's entry point
turns into limits (see the `fuzz_*` functions in src/proto/), then the bytes on the wire.

frame_decoder (proto::decoder::fuzz_decoder): [limit byte, split seed] + client-to-server
    wire bytes (masked frames, RFC 6455 section 5). Limit byte 0xEF: frames up to 241
    bytes, messages up to 449 bytes, 5 fragments.
handshake (proto::handshake::fuzz_handshake) and http_request (proto::http::fuzz_http_request):
    [head byte, header-count byte, body byte] + HTTP/1.1 bytes. 0xFF 0x20 0x10: heads up to
    1036 bytes, 32 headers, bodies up to 256 bytes.
If an entry point changes how it reads its input, change the prefixes here and rerun.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(opcode, payload=b"", fin=True, mask=MASK):
    """one client frame: masked, minimal length encoding"""
    b1 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b1, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b1, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b1, 0x80 | 127, n)
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


def close(code=None, reason=b""):
    return frame(0x8, b"" if code is None else struct.pack("!H", code) + reason)


def post(target, body, headers=b""):
    """a POST with a correct Content-Length"""
    return (b"POST " + target + b" HTTP/1.1\r\nHost: 127.0.0.1:6001\r\n" + headers
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


FRAME_PREFIX = bytes([0xEF, 0x5A])          # roomy limits, some split seed
FRAME_TIGHT = bytes([0x10, 0x03])           # frames <= 1 byte, messages <= 33, 2 fragments
HTTP_PREFIX = bytes([0xFF, 0x20, 0x10])     # 1036-byte heads, 32 headers, 256-byte bodies
HTTP_TIGHT = bytes([0x08, 0x03, 0x00])      # 48-byte heads, 3 headers, no body


SEEDS = {
    "frame_decoder": {
        # RFC 6455 5.7: a single-frame masked text message "Hello"
        "text_masked_hello": frame(0x1, b"Hello"),
        "text_utf8": frame(0x1, "κόσμε €".encode()),
        "binary_126": frame(0x2, bytes(range(130))),                  # 16-bit length
        # 64-bit length (65536), only the first 64 payload bytes: a partial frame
        "binary_64bit_partial": frame(0x2, b"\xab" * 65536)[: 2 + 8 + 4 + 64],
        # a fragmented text message: "Hel" + "lo", with a ping in between
        "fragmented_text": frame(0x1, b"Hel", fin=False) + frame(0x9, b"ping") + frame(0x0, b"lo"),
        "fragmented_binary_3": frame(0x2, b"\x01\x02", fin=False) + frame(0x0, b"\x03", fin=False)
        + frame(0x0, b"\x04\x05"),
        "ping_pong": frame(0x9, b"are you there") + frame(0xA, b"unsolicited pong"),
        "close_1000": close(1000, b"bye"),
        "close_empty": close(),
        "close_1001": close(1001),
        "text_then_close": frame(0x1, b"last words") + close(1000),
        "empty_text": frame(0x1, b""),
        "tight_limits_text": FRAME_TIGHT + frame(0x1, b"too long for the limits"),
    },
    "handshake": {
        # RFC 6455 1.3 / 4.1 example request
        "upgrade_rfc": b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
        "upgrade_echo": b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:9001\r\nUpgrade: websocket\r\n"
        b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        b"User-Agent: AutobahnTestSuite/25.10.1\r\n\r\n",
        "upgrade_pusher": b"GET /app/app-key?protocol=7&client=js&version=8.4.0&flash=false HTTP/1.1\r\n"
        b"Host: localhost\r\nupgrade: WebSocket\r\nconnection: upgrade\r\n"
        b"sec-websocket-key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nsec-websocket-version: 13\r\n\r\n",
    },
    "http_request": {
        "post_events": post(b"/apps/1/events?auth_key=key&auth_timestamp=1700000000&auth_version=1.0"
                            b"&body_md5=0123456789abcdef0123456789abcdef&auth_signature=00ff",
                            b'{"name":"my-event","channel":"my-channel","data":"{\\"a\\":1}"}',
                            b"Content-Type: application/json\r\n"),
        "get_channels": b"GET /apps/1/channels?filter_by_prefix=presence- HTTP/1.1\r\nHost: localhost\r\n"
        b"Accept: */*\r\n\r\n",
        "get_health": b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "post_small": post(b"/echo", b"hello"),
        "pipelined": b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" + post(b"/b", b"{}"),
        "tight_limits": HTTP_TIGHT + b"GET /health HTTP/1.1\r\nHost: localhost\r\nA: 1\r\nB: 2\r\n\r\n",
    },
}

if __name__ == "__main__":
    for target, seeds in SEEDS.items():
        d = os.path.join(HERE, target)
        os.makedirs(d, exist_ok=True)
        prefix = FRAME_PREFIX if target == "frame_decoder" else HTTP_PREFIX
        for name, data in seeds.items():
            if not name.startswith("tight_limits"):
                data = prefix + data
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        print("%s: %d seeds" % (target, len(seeds)))
