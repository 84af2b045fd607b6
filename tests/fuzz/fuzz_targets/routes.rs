//! Any route table: a table or an error naming the route and the field in fixed words, never
//! a panic and never a value of the table (it may hold credentials); a table selects without
//! a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spin_registry_proxy::routes::BlobRedirect;
use spin_registry_proxy::origin::OriginError;
use spin_registry_proxy::routes::{self, Defaults};
use std::time::Duration;

const FIELDS: [&str; 18] = [
    "preset",
    "upstream",
    "auth",
    "cdn",
    "host",
    "path",
    "mirrors",
    "prefix",
    "blob_redirect",
    "timeout",
    "tag_ttl",
    "credentials",
    "public",
    "access",
    "client_credentials",
    "push",
    "delete",
    "cors",
];

const WORDS: [&str; 16] = [
    "unknown preset",
    "missing (give it, or a preset that has one)",
    "expected a host name or *.domain, without port",
    "not repository path segments",
    "expected registry host names (docker.io, host:port)",
    "not a repository name",
    "expected \"pass\" or \"follow\"",
    "expected seconds (0.1 to 3600)",
    "expected seconds (0 to 86400)",
    "give username and password, or token alone",
    "a route with credentials serves every client with them: say \"public\": true",
    "expected \"upstream\", \"public\" or \"users\"",
    "says otherwise than access",
    "a route with credentials serves clients with them: say \"access\": \"public\" \
     (every client) or \"users\" (the proxy's users)",
    "a route with credentials of its own, or whose access is not \"upstream\", \
     passes no client's upstream",
    "a route open to everyone takes no writes: give it \"access\": \"users\" (users \
     with the push action) or \"upstream\" (the client's credentials decide)",
];

/// What follows "route X: " when a route meets another: the other's label, then these words.
const MEETINGS: [(&str, &str); 4] = [
    ("serves the same host and path as ", ""),
    ("mirrors a registry ", " mirrors"),
    (
        "takes clients' credentials on a host where ",
        ", for another registry, takes them too (a client has one login per host)",
    ),
    (
        "shares a host with ",
        ", and one takes its logins for the proxy's users while the other takes them for \
         its registry (a client has one login per host)",
    ),
];

/// `"name"` or a route number, and what follows it.
fn label(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("route ")?;
    let end = if let Some(quoted) = rest.strip_prefix('"') {
        let close = quoted.find('"')?;
        let name = &quoted[..close];
        let ok = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        (ok && !name.is_empty()).then_some(close + 2)?
    } else {
        rest.find(|c: char| !c.is_ascii_digit())
            .filter(|&i| i > 0)?
    };
    rest[end..].strip_prefix(": ")
}

fn fixed(message: &str) -> bool {
    let Some(m) = message.strip_prefix("variable routes: ") else {
        return false;
    };
    if m == "no route" {
        return true;
    }
    if m.starts_with("not a JSON array of routes") {
        let tail = m.rsplit(" at line ").next().unwrap_or("");
        return tail
            .bytes()
            .all(|b| b.is_ascii_digit() || b", column".contains(&b));
    }
    let Some(rest) = label(m) else { return false };
    if rest == "name: letters, digits, '-', '_' and '.' only"
        || rest == "a second route has this name"
    {
        return true;
    }
    for (head, tail) in MEETINGS {
        if let Some(other) = rest.strip_prefix(head).and_then(|r| r.strip_suffix(tail)) {
            return label(&format!("{other}: x")).is_some();
        }
    }
    let origin_words = OriginError::ALL.map(|e| e.to_string());
    FIELDS.iter().any(|f| {
        rest.strip_prefix(f)
            .and_then(|r| r.strip_prefix(": "))
            .is_some_and(|w| WORDS.contains(&w) || origin_words.iter().any(|o| o == w))
    })
}

fuzz_target!(|text: &str| {
    let defaults = Defaults {
        blob_redirect: BlobRedirect::Pass,
        timeout: Duration::from_secs(25),
        tag_ttl: 60,
    };
    match routes::parse(text, defaults) {
        Ok(table) => {
            for host in ["images.example.com", "127.0.0.1", "a.b"] {
                for name in [None, Some("ghcr/x"), Some("x")] {
                    let _ = table.select(host, name, None);
                    let _ = table.select(host, name, Some("docker.io"));
                }
                let _ = table.paths_only(host);
            }
        }
        Err(e) => assert!(fixed(&e.0), "{:?} is not in fixed words", e.0),
    }
});
