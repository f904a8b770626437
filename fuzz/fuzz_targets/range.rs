#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fresco_fuzz::byte_range(data));
