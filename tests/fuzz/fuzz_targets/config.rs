//! Any variable values: a configuration or an error naming a variable, never a panic, and an
//! error is always one of the fixed descriptions: it never repeats a value (which may hold a
//! credential).
#![no_main]
use libfuzzer_sys::fuzz_target;
use spin_registry_proxy::config::{Config, BUNDLES};
use spin_registry_proxy::origin::OriginError;

/// Application variables, then a bundle of an earlier spin.toml and the one spin.toml composes
/// now (absent unless the input has that many lines). A route table in `config` is the routes
/// target's: its errors are held to their words there.
const NAMES: [&str; 12] = [
    "upstream",
    "upstream_auth",
    "upstream_cdn",
    "repository_prefix",
    "public_url",
    "trust_forwarded",
    "blob_redirect",
    "home",
    "upstream_timeout",
    "tag_ttl",
    "site",
    "config",
];

fn descriptions() -> Vec<String> {
    let mut d: Vec<String> = OriginError::ALL.iter().map(|e| e.to_string()).collect();
    d.extend(
        [
            "is empty",
            "expected \"pass\" or \"follow\"",
            "not a repository name",
            "expected \"true\" or \"false\"",
            "expected seconds (0.1 to 3600)",
            "expected seconds (0 to 86400)",
            "expected an http(s) URL without user",
            "is missing from spin.toml, which bundles the variables as an older version did: \
             copy [component.registry-proxy.variables] from this version's spin.toml",
        ]
        .map(String::from),
    );
    for (_, names) in BUNDLES {
        d.push(format!(
            "expected the lines {}=…, each value on one line",
            names.join("=…, ")
        ));
    }
    d
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.split('\n').collect();
    let get = |name: &str| {
        let i = NAMES.iter().position(|n| *n == name)?;
        let v = values.get(i)?;
        // The first variable falls back to a valid upstream half the time, so the others are
        // reached too.
        if i == 0 && v.len() % 2 == 1 {
            return Some("https://registry-1.docker.io".to_string());
        }
        // Lines are the variables; \x01 stands for a line break inside a value (a bundle).
        Some(v.replace('\x01', "\n"))
    };
    if let Err(e) = Config::from_variables(get) {
        let e = e.to_string();
        if e.starts_with("invalid configuration: variable routes: ") {
            return;
        }
        let known = NAMES.iter().any(|n| {
            descriptions()
                .iter()
                .any(|d| e == format!("invalid configuration: variable {n}: {d}"))
        });
        assert!(known, "{e:?} is not a fixed description");
    }
});
