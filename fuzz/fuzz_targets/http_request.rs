#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringcast::proto::http::fuzz_http_request(data);
});
