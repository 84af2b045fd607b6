//! Any Link value: rewritten without a panic; a target mapped for the client never names the
//! upstream and stays on the public origin or relative.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spin_registry_proxy::link;
use spin_registry_proxy::listing::client_link_target;
use spin_registry_proxy::names::NameMap;
use spin_registry_proxy::origin::Origin;

fuzz_target!(|value: &str| {
    let up = Origin::parse("http://127.0.0.1:5000").unwrap();
    let public = Origin::parse("https://images.example.com").unwrap();
    let names = NameMap::new("", "team/app", false);
    let _ = link::rewrite(value, |t| Some(t.to_string()));
    if let Some(out) = link::rewrite(value, |t| client_link_target(t, &up, &public, &names)) {
        assert!(!out.contains("127.0.0.1"), "{value:?} -> {out:?}");
        for part in out.split(", <").map(|p| p.trim_start_matches('<')) {
            assert!(
                part.starts_with("/v2/") || part.starts_with("https://images.example.com/v2/"),
                "{value:?} -> {out:?}"
            );
        }
    }
});
