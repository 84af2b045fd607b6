//! Any token query or form: parsed and re-encoded for the realm without a panic; when no
//! scope names an invalid repository, every repository scope sent upstream is under the prefix.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spin_registry_proxy::names::NameMap;
use spin_registry_proxy::token::TokenRequest;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let auth = http::HeaderValue::from_static("Basic YWxpY2U6czNjcmV0");
    let req = TokenRequest::new(flags & 1 == 1, rest, (flags & 2 == 2).then_some(&auth));
    let names = NameMap::new("", "team/app", false);
    let realm = url::Url::parse("https://auth.example/token?x=1").unwrap();
    let url = req.upstream_url(&realm, Some("svc"), &names);
    let form = req.upstream_form(Some("svc"), &names);
    let _ = (req.offers_credentials(), req.first_repository());
    if spin_registry_proxy::scope::first_invalid_name(&names, req.scopes()).is_none() {
        let sent: Vec<String> = url
            .query_pairs()
            .chain(url::form_urlencoded::parse(form.as_bytes()))
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split_whitespace().map(String::from).collect::<Vec<_>>())
            .collect();
        for s in sent {
            if let Some(rest) = s.strip_prefix("repository:") {
                if rest.matches(':').count() >= 1 {
                    assert!(rest.starts_with("team/app/"), "{s:?}");
                }
            }
        }
    }
});
