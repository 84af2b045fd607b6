//! Any path: a route or an OCI error, never a panic; a route's path parses back to it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spin_registry_proxy::endpoint::Endpoint;

fuzz_target!(|path: &str| {
    if let Ok(route) = Endpoint::parse(path) {
        assert_eq!(
            Endpoint::parse(&route.path()),
            Ok(route.clone()),
            "{path:?}"
        );
        if let Some(name) = route.name() {
            assert!(spin_registry_proxy::endpoint::valid_name(name), "{path:?}");
        }
    }
});
