#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fresco_fuzz::vary_fields(data));
