//! Any WWW-Authenticate value: parsed without a panic, rendered challenges parse back, and the
//! proxy's challenge built from it is one well-formed challenge on the proxy's realm.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spin_registry_proxy::challenge::{self, Challenge};
use spin_registry_proxy::names::NameMap;
use spin_registry_proxy::origin::Origin;

fuzz_target!(|value: &str| {
    let parsed = challenge::parse(value);
    for c in &parsed {
        assert_eq!(challenge::parse(&c.render()), vec![c.clone()], "{value:?}");
    }
    let public = Origin::parse("https://images.example.com").unwrap();
    for names in [
        NameMap::new("", "team/app", false),
        NameMap::new("ghcr", "", true),
    ] {
        let ours = challenge::proxy_challenge(
            &parsed,
            "https://images.example.com/token",
            &public,
            &names,
            None,
        );
        let text = ours.render();
        assert!(http::HeaderValue::from_str(&text).is_ok(), "{text:?}");
        let again: Vec<Challenge> = challenge::parse(&text);
        assert_eq!(again.len(), 1, "{text:?}");
        let realm = again[0].param("realm").unwrap_or_default();
        assert!(
            realm == "https://images.example.com/token" || realm == "images.example.com",
            "{text:?}"
        );
    }
});
