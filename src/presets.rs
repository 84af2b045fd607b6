//! The public registries a route can name by preset: their registry, token realm and blob
//! storage origins (what `allowed_outbound_hosts` must hold) and their naming rules.

/// One registry's fixed facts. Every field can be overridden by the route.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    /// What clients call the registry (containerd's `ns`, a `FROM` line).
    pub registry: &'static str,
    /// Empty where the route must say (Artifact Registry's host names a region).
    pub upstream: &'static str,
    /// Origins of the token realm: where clients' credentials may go.
    pub auth: &'static [&'static str],
    /// Origins (`*.` patterns allowed) the registry redirects to; the proxy follows there
    /// without the client's credentials, fetching an anonymous token where one is asked for.
    pub cdn: &'static [&'static str],
    /// Docker Hub's `library/` rule for one-segment names.
    pub library: bool,
    /// Whether `/v2/_catalog` exists (Docker Hub answers nothing useful).
    pub catalog: bool,
}

pub const PRESETS: [Preset; 9] = [
    Preset {
        name: "dockerhub",
        registry: "docker.io",
        upstream: "https://registry-1.docker.io",
        auth: &["https://auth.docker.io"],
        // Cloudflare, its R2 storage (anonymous pulls), and CloudFront (since 2026-05-20,
        // Docker Hub's release notes).
        cdn: &[
            "https://production.cloudflare.docker.com",
            "https://*.r2.cloudflarestorage.com",
            "https://production.cloudfront.docker.com",
        ],
        library: true,
        catalog: false,
    },
    Preset {
        name: "ghcr",
        registry: "ghcr.io",
        upstream: "https://ghcr.io",
        auth: &["https://ghcr.io"],
        cdn: &["https://pkg-containers.githubusercontent.com"],
        library: false,
        catalog: false,
    },
    Preset {
        name: "quay",
        registry: "quay.io",
        upstream: "https://quay.io",
        auth: &["https://quay.io"],
        cdn: &[
            "https://*.quay.io",
            "https://quayio-production-s3.s3.amazonaws.com",
        ],
        library: false,
        catalog: false,
    },
    Preset {
        name: "gcr",
        registry: "gcr.io",
        upstream: "https://gcr.io",
        auth: &["https://gcr.io"],
        cdn: &["https://storage.googleapis.com"],
        library: false,
        catalog: false,
    },
    Preset {
        name: "artifact-registry",
        registry: "",
        upstream: "",
        auth: &[],
        cdn: &["https://storage.googleapis.com"],
        library: false,
        catalog: false,
    },
    Preset {
        name: "k8s",
        registry: "registry.k8s.io",
        upstream: "https://registry.k8s.io",
        // It redirects every request to a regional Artifact Registry host (`*-docker.pkg.dev`),
        // which asks for an anonymous token of its own; blobs may go on to S3.
        auth: &[],
        cdn: &["https://*.pkg.dev", "https://*.amazonaws.com"],
        library: false,
        catalog: false,
    },
    Preset {
        name: "ecr-public",
        registry: "public.ecr.aws",
        upstream: "https://public.ecr.aws",
        auth: &["https://public.ecr.aws"],
        cdn: &["https://*.cloudfront.net"],
        library: false,
        catalog: false,
    },
    Preset {
        name: "mcr",
        registry: "mcr.microsoft.com",
        upstream: "https://mcr.microsoft.com",
        auth: &[],
        cdn: &["https://*.data.mcr.microsoft.com"],
        library: false,
        catalog: true,
    },
    Preset {
        name: "gitlab",
        registry: "registry.gitlab.com",
        upstream: "https://registry.gitlab.com",
        auth: &["https://gitlab.com"],
        cdn: &[
            "https://cdn.registry.gitlab-static.net",
            "https://storage.googleapis.com",
        ],
        library: false,
        catalog: false,
    },
];

pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::Origin;

    #[test]
    fn every_origin_parses() {
        for p in PRESETS {
            if !p.upstream.is_empty() {
                Origin::parse(p.upstream).unwrap();
            }
            for o in p.auth.iter().chain(p.cdn) {
                Origin::parse_pattern(o).unwrap_or_else(|e| panic!("{} {o}: {e}", p.name));
            }
        }
        assert!(find("ghcr").is_some() && find("nope").is_none());
    }
}
