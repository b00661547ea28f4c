#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hyperd_fuzz_targets::http_api::run(data));
