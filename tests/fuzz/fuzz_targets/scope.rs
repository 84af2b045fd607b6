//! Any scope list: mapped without a panic; what clients see is strict and maps back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spin_registry_proxy::names::NameMap;
use spin_registry_proxy::scope;

fuzz_target!(|text: &str| {
    for names in [
        NameMap::new("", "team/app", false),
        NameMap::new("", "", true),
        NameMap::new("ghcr", "org", false),
        NameMap::default(),
    ] {
        let _ = scope::to_upstream(&names, [text]);
        let _ = scope::first_invalid_name(&names, [text]);
        for c in scope::to_client(&names, [text]) {
            assert!(c.is_ascii() && !c.contains(['"', '\\', ' ']), "{c:?}");
            let up = scope::to_upstream(&names, [c.as_str()]);
            assert_eq!(
                scope::to_client(&names, up.iter().map(String::as_str)),
                vec![c.clone()]
            );
        }
    }
});
