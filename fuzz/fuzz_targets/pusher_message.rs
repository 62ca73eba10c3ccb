#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringcast::pusher::fuzz_client_message(data);
});
