#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hyperd_fuzz_targets::virtio_blk::run(data));
