//! The URL clients reach the proxy by: from configuration, else from the request itself
//! (`X-Forwarded-Proto`/`X-Forwarded-Host` set by a TLS-terminating front, then `Host`).

use crate::config::Config;
use crate::error::OciError;
use crate::origin::Origin;
use http::HeaderMap;

fn first_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let v = headers.get(name)?.to_str().ok()?;
    let first = v.split(',').next()?.trim();
    (!first.is_empty()).then_some(first)
}

/// `request_scheme` and `request_authority` are what the runtime says the request used.
pub fn public_origin(
    config: &Config,
    headers: &HeaderMap,
    request_scheme: Option<&str>,
    request_authority: Option<&str>,
) -> Result<Origin, OciError> {
    if let Some(o) = &config.public_url {
        return Ok(o.clone());
    }
    // Spin's own record of the URL the client used, when the runtime hides Host.
    let full_url = first_value(headers, "spin-full-url").and_then(|u| url::Url::parse(u).ok());
    let spin_origin = full_url.as_ref().and_then(Origin::of_url);
    let spin_authority = spin_origin.as_ref().map(Origin::authority);
    let scheme = first_value(headers, "x-forwarded-proto")
        .or(request_scheme)
        .or(spin_origin.as_ref().map(|o| o.scheme.as_str()))
        .unwrap_or("http")
        .to_ascii_lowercase();
    let host = first_value(headers, "x-forwarded-host")
        .or_else(|| first_value(headers, "host"))
        .or(request_authority)
        .or(spin_authority.as_deref())
        .ok_or_else(|| {
            OciError::new(
                http::StatusCode::BAD_REQUEST,
                "UNSUPPORTED",
                "request has no Host header",
            )
        })?;
    Origin::parse(&format!("{scheme}://{host}")).map_err(|e| {
        OciError::new(
            http::StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            format!("bad Host or X-Forwarded-* header: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(public: &str) -> Config {
        Config::from_variables(|k| match k {
            "upstream" => Some("https://registry-1.docker.io".into()),
            "public_url" => Some(public.into()),
            _ => None,
        })
        .unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn configured_url_wins() {
        let h = headers(&[("host", "internal:3000")]);
        let o = public_origin(
            &config("https://images.example.com"),
            &h,
            Some("http"),
            None,
        )
        .unwrap();
        assert_eq!(o.to_string(), "https://images.example.com");
    }

    #[test]
    fn forwarded_headers_then_host() {
        let c = config("");
        let h = headers(&[
            ("host", "internal:3000"),
            ("x-forwarded-proto", "https, http"),
            ("x-forwarded-host", "images.example.com"),
        ]);
        assert_eq!(
            public_origin(&c, &h, Some("http"), None)
                .unwrap()
                .to_string(),
            "https://images.example.com"
        );
        let h = headers(&[("host", "127.0.0.1:3000")]);
        assert_eq!(
            public_origin(&c, &h, Some("http"), None)
                .unwrap()
                .to_string(),
            "http://127.0.0.1:3000"
        );
        let h = headers(&[("spin-full-url", "https://images.example.com:8443/v2/?x=1")]);
        assert_eq!(
            public_origin(&c, &h, None, None).unwrap().to_string(),
            "https://images.example.com:8443"
        );
        let h = headers(&[]);
        assert_eq!(
            public_origin(&c, &h, Some("https"), Some("a.example"))
                .unwrap()
                .to_string(),
            "https://a.example"
        );
    }

    #[test]
    fn hostile_host_is_refused() {
        let c = config("");
        let h = headers(&[("host", "a\",realm=\"evil")]);
        assert_eq!(
            public_origin(&c, &h, None, None).unwrap_err().status,
            http::StatusCode::BAD_REQUEST
        );
        assert!(public_origin(&c, &headers(&[]), None, None).is_err());
    }
}
