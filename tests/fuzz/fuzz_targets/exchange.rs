//! Whole exchanges: random configuration, a hostile client, random upstream answers and
//! failures; every response rule and invariant of `simulate::check` must hold.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = spin_registry_proxy::simulate::exchange(data) {
        panic!("{e}");
    }
});
