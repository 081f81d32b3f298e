#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtlet_fuzz::targets::user_data_merge(data));
