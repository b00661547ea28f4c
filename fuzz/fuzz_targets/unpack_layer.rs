#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hyperd_fuzz_targets::unpack_layer::run(data));
