#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringcast::http_api::fuzz_api_request(data);
});
