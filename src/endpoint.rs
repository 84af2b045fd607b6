//! Which part of the distribution API a request path names.

use crate::error::OciError;
use http::StatusCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/`: a person in a browser.
    Home,
    /// The proxy's own token endpoint, the realm of every challenge it sends.
    Token,
    /// `/v2/`: the API version check and auth probe.
    Base,
    Catalog,
    Manifest {
        name: String,
        reference: String,
    },
    Blob {
        name: String,
        digest: String,
    },
    Tags {
        name: String,
    },
    Referrers {
        name: String,
        digest: String,
    },
    /// `/v2/<name>/blobs/uploads/` (start an upload) and `/v2/<name>/blobs/uploads/<session>`
    /// (an upload's chunks, end, status, cancel): pushing, on a route that allows it.
    Upload {
        name: String,
        /// The upstream's name for the upload session (`None`: the start of one).
        session: Option<String>,
    },
    /// `/-/stats`: pulls per day, repository and user, for an admin.
    Stats,
    /// `/-/health`: the proxy answers (`?deep=1`: and each route's registry, for an admin).
    Health,
}

pub const TOKEN_PATH: &str = "/token";
pub const STATS_PATH: &str = "/-/stats";
pub const HEALTH_PATH: &str = "/-/health";

impl Endpoint {
    pub fn parse(path: &str) -> Result<Endpoint, OciError> {
        match path {
            "/" | "" => return Ok(Endpoint::Home),
            TOKEN_PATH => return Ok(Endpoint::Token),
            "/v2" | "/v2/" => return Ok(Endpoint::Base),
            "/v2/_catalog" => return Ok(Endpoint::Catalog),
            STATS_PATH => return Ok(Endpoint::Stats),
            HEALTH_PATH => return Ok(Endpoint::Health),
            _ => {}
        }
        let no_route = || OciError::no_route(format!("no such endpoint: {path}"));
        let rest = path.strip_prefix("/v2/").ok_or_else(no_route)?;
        let name_ok = |name: &str| -> Result<String, OciError> {
            if valid_name(name) {
                Ok(name.to_string())
            } else {
                Err(OciError::name_invalid(format!(
                    "invalid repository name: {name}"
                )))
            }
        };
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Ok(Endpoint::Tags {
                name: name_ok(name)?,
            });
        }
        if let Some(i) = rest.find("/blobs/uploads") {
            let tail = &rest[i + "/blobs/uploads".len()..];
            let session = tail.trim_start_matches('/');
            if tail.is_empty() || tail.starts_with('/') {
                // A session's segments are the upstream's id, never words of the API: the
                // upstream would read `x/manifests/v1` after `uploads/` as a manifest of a
                // repository named up to `x`, one the route was never asked about.
                let valid = session.len() <= 512
                    && !session.split('/').any(|s| {
                        matches!(
                            s,
                            ".." | "." | "manifests" | "blobs" | "tags" | "referrers" | "uploads"
                        )
                    })
                    && session
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.=~/+".contains(&b));
                if !valid {
                    return Err(OciError::new(
                        StatusCode::NOT_FOUND,
                        crate::error::ErrorCode::BlobUploadUnknown,
                        "blob upload unknown to registry",
                    ));
                }
                return Ok(Endpoint::Upload {
                    name: name_ok(&rest[..i])?,
                    session: (!session.is_empty()).then(|| session.to_string()),
                });
            }
        }
        let (head, last) = rest.rsplit_once('/').ok_or_else(no_route)?;
        let (name, kind) = head.rsplit_once('/').ok_or_else(no_route)?;
        match kind {
            "manifests" => {
                if !valid_tag(last) && !valid_digest(last) {
                    // A tag has no `:`: this was meant as a digest.
                    let (code, what) = if last.contains(':') {
                        (crate::error::ErrorCode::DigestInvalid, "digest")
                    } else {
                        (crate::error::ErrorCode::ManifestInvalid, "reference")
                    };
                    return Err(OciError::new(
                        StatusCode::BAD_REQUEST,
                        code,
                        format!("invalid {what}: {last}"),
                    ));
                }
                Ok(Endpoint::Manifest {
                    name: name_ok(name)?,
                    reference: last.to_string(),
                })
            }
            "blobs" | "referrers" => {
                if !valid_digest(last) {
                    return Err(OciError::new(
                        StatusCode::BAD_REQUEST,
                        crate::error::ErrorCode::DigestInvalid,
                        format!("invalid digest: {last}"),
                    ));
                }
                let (name, digest) = (name_ok(name)?, last.to_string());
                Ok(if kind == "blobs" {
                    Endpoint::Blob { name, digest }
                } else {
                    Endpoint::Referrers { name, digest }
                })
            }
            _ => Err(no_route()),
        }
    }

    /// The admin's endpoints: Basic credentials alone, and no route's (no page reads them).
    pub fn is_admin(&self) -> bool {
        matches!(self, Endpoint::Stats | Endpoint::Health)
    }

    /// The repository the endpoint addresses, in client names.
    pub fn name(&self) -> Option<&str> {
        match self {
            Endpoint::Manifest { name, .. }
            | Endpoint::Blob { name, .. }
            | Endpoint::Tags { name }
            | Endpoint::Referrers { name, .. }
            | Endpoint::Upload { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The same endpoint for another repository name.
    pub fn with_name(&self, new: String) -> Endpoint {
        match self.clone() {
            Endpoint::Manifest { reference, .. } => Endpoint::Manifest {
                name: new,
                reference,
            },
            Endpoint::Blob { digest, .. } => Endpoint::Blob { name: new, digest },
            Endpoint::Tags { .. } => Endpoint::Tags { name: new },
            Endpoint::Referrers { digest, .. } => Endpoint::Referrers { name: new, digest },
            Endpoint::Upload { session, .. } => Endpoint::Upload { name: new, session },
            other => other,
        }
    }

    /// The request path for this endpoint (the inverse of `parse`).
    pub fn path(&self) -> String {
        match self {
            Endpoint::Home => "/".into(),
            Endpoint::Token => TOKEN_PATH.into(),
            Endpoint::Base => "/v2/".into(),
            Endpoint::Catalog => "/v2/_catalog".into(),
            Endpoint::Manifest { name, reference } => format!("/v2/{name}/manifests/{reference}"),
            Endpoint::Blob { name, digest } => format!("/v2/{name}/blobs/{digest}"),
            Endpoint::Tags { name } => format!("/v2/{name}/tags/list"),
            Endpoint::Referrers { name, digest } => format!("/v2/{name}/referrers/{digest}"),
            Endpoint::Upload { name, session } => {
                format!(
                    "/v2/{name}/blobs/uploads/{}",
                    session.as_deref().unwrap_or("")
                )
            }
            Endpoint::Stats => STATS_PATH.into(),
            Endpoint::Health => HEALTH_PATH.into(),
        }
    }
}

/// The distribution spec's repository name grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'))
}

/// A digest of an algorithm registries take (distribution's go-digest, and the image spec's
/// registered ones), in its one encoding: lower-case hex of the hash's length. Anything else
/// (`md5:…`, `sha256:` with 63 digits or upper-case ones) is a 400 here, as distribution
/// answers it, rather than an upstream request and a `Docker-Content-Digest` the proxy would
/// have to take from the path.
pub fn valid_digest(digest: &str) -> bool {
    let Some((alg, enc)) = digest.split_once(':') else {
        return false;
    };
    let len = match alg {
        "sha256" | "blake3" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    enc.len() == len && enc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn parses_every_route() {
        assert_eq!(Endpoint::parse("/").unwrap(), Endpoint::Home);
        assert_eq!(Endpoint::parse("/token").unwrap(), Endpoint::Token);
        assert_eq!(Endpoint::parse("/v2/").unwrap(), Endpoint::Base);
        assert_eq!(Endpoint::parse("/v2").unwrap(), Endpoint::Base);
        assert_eq!(Endpoint::parse("/v2/_catalog").unwrap(), Endpoint::Catalog);
        assert_eq!(
            Endpoint::parse("/v2/a/b/manifests/1.0").unwrap(),
            Endpoint::Manifest {
                name: "a/b".into(),
                reference: "1.0".into()
            }
        );
        assert_eq!(
            Endpoint::parse(&format!("/v2/a/manifests/{D}")).unwrap(),
            Endpoint::Manifest {
                name: "a".into(),
                reference: D.into()
            }
        );
        assert_eq!(
            Endpoint::parse(&format!("/v2/a/blobs/{D}")).unwrap(),
            Endpoint::Blob {
                name: "a".into(),
                digest: D.into()
            }
        );
        assert_eq!(
            Endpoint::parse("/v2/tags/tags/list").unwrap(),
            Endpoint::Tags {
                name: "tags".into()
            }
        );
        assert_eq!(
            Endpoint::parse(&format!("/v2/x/manifests/referrers/{D}")).unwrap(),
            Endpoint::Referrers {
                name: "x/manifests".into(),
                digest: D.into()
            }
        );
        assert_eq!(
            Endpoint::parse("/v2/a/blobs/uploads/").unwrap(),
            Endpoint::Upload {
                name: "a".into(),
                session: None
            }
        );
        // An id with `/` (standard base64) is the upstream's to read.
        assert_eq!(
            Endpoint::parse("/v2/a/blobs/uploads/q+x/y=").unwrap(),
            Endpoint::Upload {
                name: "a".into(),
                session: Some("q+x/y=".into())
            }
        );
        assert_eq!(
            Endpoint::parse("/v2/a/blobs/uploads/abc-123").unwrap(),
            Endpoint::Upload {
                name: "a".into(),
                session: Some("abc-123".into())
            }
        );
        for bad in [
            "/v2/a/blobs/uploads/../x",
            "/v2/a/blobs/uploads/a%2e",
            "/v2/a/blobs/uploads/a b",
            "/v2/a/blobs/uploads/x/manifests/v1",
            "/v2/a/blobs/uploads/x/y/blobs/uploads/z",
            "/v2/a/blobs/uploads/x/referrers/sha256-0",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_round_trip() {
        for p in [
            "/v2/",
            "/v2/_catalog",
            "/v2/a/b/manifests/latest",
            "/v2/a/tags/list",
            "/token",
        ] {
            assert_eq!(Endpoint::parse(p).unwrap().path(), p);
        }
    }

    #[test]
    fn bad_paths_are_oci_errors() {
        assert_eq!(
            Endpoint::parse("/favicon.ico").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            Endpoint::parse("/v2/a/unknown/x").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            Endpoint::parse("/v2/a").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            Endpoint::parse("/v2/A/manifests/x").unwrap_err().code,
            crate::error::ErrorCode::NameInvalid
        );
        assert_eq!(
            Endpoint::parse("/v2/a/../b/manifests/x").unwrap_err().code,
            crate::error::ErrorCode::NameInvalid
        );
        assert_eq!(
            Endpoint::parse("/v2/a/manifests/-x").unwrap_err().code,
            crate::error::ErrorCode::ManifestInvalid
        );
        assert_eq!(
            Endpoint::parse("/v2/a/blobs/latest").unwrap_err().code,
            crate::error::ErrorCode::DigestInvalid
        );
    }

    #[test]
    fn name_grammar() {
        for ok in ["a", "library/alpine", "a.b_c__d---e/f0", "0"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "", "A", "a//b", "/a", "a/", "a..b", "a___b", "-a", "a-", "a b", "a._b",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn tag_and_digest_grammar() {
        assert!(valid_tag("v1.0_rc-2") && valid_tag("_x") && !valid_tag(".x"));
        assert!(!valid_tag(&"a".repeat(129)));
        assert!(valid_digest(D) && !valid_digest("sha256:") && !valid_digest("abc"));
        assert!(valid_digest(&format!("sha512:{}", "0a".repeat(64))));
        for bad in [
            "sha256+b64u:abc=",
            "md5:abc",
            "SHA256:abc",
            &D[..D.len() - 1],
            &format!("{D}0"),
            &D.to_uppercase().replace("SHA256", "sha256"),
            &format!("sha512:{}", &D[7..]),
        ] {
            assert!(!valid_digest(bad), "{bad}");
        }
    }
}
