#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringcast::proto::decoder::fuzz_decoder(data);
});
