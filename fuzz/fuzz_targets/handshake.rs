#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringcast::proto::handshake::fuzz_handshake(data);
});
