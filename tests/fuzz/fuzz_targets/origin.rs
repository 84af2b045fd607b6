//! Any origin text, and any Host/X-Forwarded-* headers: an origin that parses prints as
//! itself, holds nothing HTML or a header could be broken by, and never repeats a refused text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spin_registry_proxy::config::Config;
use spin_registry_proxy::origin::Origin;
use spin_registry_proxy::public_url::public_origin;

/// Every error `public_origin` gives: fixed words, never the headers' text.
const FIXED: [&str; 3] = [
    "X-Forwarded-Proto/X-Forwarded-Host is not an origin",
    "the request has no Host header",
    "the Host header is not a host name and port",
];

fn safe(o: &Origin) {
    let text = o.to_string();
    assert_eq!(Origin::parse_pattern(&text).as_ref(), Ok(o), "{text:?}");
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:/[]*".contains(&b)),
        "{text:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(o) = Origin::parse_pattern(&text) {
        safe(&o);
        // Routes build their upstream URLs from origins on demand: one that parses is a URL.
        if !o.is_wildcard() {
            let url = o.url_with_path("/v2/a/manifests/b");
            assert_eq!(
                url.as_ref().map(url::Url::as_str),
                o.url()
                    .map(|mut u| {
                        u.set_path("/v2/a/manifests/b");
                        u.to_string()
                    })
                    .as_deref(),
                "{text:?}"
            );
        }
    }
    let parts: Vec<&[u8]> = data.splitn(3, |b| *b == b'\n').collect();
    let mut headers = http::HeaderMap::new();
    for (name, value) in ["host", "x-forwarded-host", "x-forwarded-proto"]
        .iter()
        .zip(&parts)
    {
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            headers.insert(*name, v);
        }
    }
    for trust in ["false", "true"] {
        let config = Config::from_variables(|k| match k {
            "upstream" => Some("https://registry-1.docker.io".into()),
            "trust_forwarded" => Some(trust.into()),
            _ => None,
        })
        .unwrap();
        match public_origin(&config, &headers, Some("http"), None) {
            Ok(o) => safe(&o),
            Err(e) => assert!(FIXED.contains(&e.message.as_str()), "{e}"),
        }
    }
});
