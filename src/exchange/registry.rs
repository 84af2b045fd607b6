//! Registry requests: sent with the client's or the route's authorization, followed through
//! redirects, and answered with the upstream's body, a rewritten listing or an error.

use super::*;

impl Exchange {
    pub(super) fn registry_request(&mut self, endpoint: &Endpoint, req: Incoming) -> Step {
        if let Some(answered) = self.admit(endpoint) {
            return answered;
        }
        if *endpoint == Endpoint::Catalog && !self.route().is_some_and(|r| r.catalog) {
            return self.error(OciError::unsupported(
                StatusCode::NOT_FOUND,
                "this registry has no catalog",
            ));
        }
        let path = match endpoint.name() {
            Some(n) => match self
                .names
                .to_upstream(n)
                .filter(|_| self.names.is_valid_client_name(n))
            {
                Some(up) => endpoint.with_name(up).path(),
                None => {
                    let e = OciError::name_invalid(format!("invalid repository name: {n}"));
                    return self.error(e);
                }
            },
            None => endpoint.path(),
        };
        let query = listing::upstream_query(endpoint, req.query.as_deref(), &self.names);
        let authorization = self.clients_authorization();
        // Built when it is sent: an answer from the store needs no upstream URL.
        self.target = Some((path, query));
        self.client_authorization = authorization;
        self.marked = token::bearer_token(self.client_headers.get(header::AUTHORIZATION))
            .and_then(anonymous_token::Marked::parse);
        if let Some(plan) = self.cache_plan(endpoint) {
            return self.with_secret(cached::Then::LookUp(plan));
        }
        self.authorize_and_send()
    }

    /// Sends the pending request with the route's credentials, or the client's.
    pub(super) fn authorize_and_send(&mut self) -> Step {
        let is_base = self.endpoint == Some(Endpoint::Base);
        match self.route().and_then(|r| r.credentials.clone()) {
            // The route authenticates upstream itself: the client's Authorization stays here.
            Some(_) if is_base => self.reply(Draft::made(
                StatusCode::OK,
                b"{}".to_vec(),
                "application/json",
            )),
            Some(Credentials::Token(t)) => {
                self.send_pending(upstream_token::authorization(&Credentials::Token(t)))
            }
            Some(Credentials::Basic { .. }) => {
                let scope = self.own_scope();
                self.with_secret(cached::Then::OwnCredentials { scope })
            }
            None => {
                let authorization = self.client_authorization.clone();
                self.send_pending(authorization)
            }
        }
    }

    /// Sends the pending registry request with `authorization`.
    pub(super) fn send_pending(&mut self, authorization: Option<HeaderValue>) -> Step {
        if self.pending.is_none() {
            self.build_target();
        }
        if self.write.is_some() {
            return self.send_write(authorization);
        }
        let Some(p) = self.pending.clone() else {
            return self.error(OciError::internal("nothing to send"));
        };
        self.waiting = Waiting::RegistryAnswer {
            headers: p.headers.clone(),
            authorization: authorization.clone(),
            hop: Role::Registry,
        };
        self.send(
            Role::Registry,
            p.method,
            p.target,
            p.headers,
            authorization,
            Vec::new(),
        )
    }

    pub(super) fn registry_answered(
        &mut self,
        mut head: Response<()>,
        headers: HeaderMap,
        auth: Option<HeaderValue>,
        hop: Role,
    ) -> Step {
        let status = head.status();
        if status == StatusCode::UNAUTHORIZED {
            let retried = match hop {
                Role::Registry => self.own_credentials_refused(head.clone()),
                _ => self.hop_challenged(&head),
            };
            if let Some(step) = retried {
                return step;
            }
            if hop == Role::Registry && self.carries_anonymous_token() {
                self.forget_refused_anonymous_token(&head);
            }
        }
        if hop == Role::Registry {
            // An open `/v2/` counts only when nothing vouched for the request.
            let base = self.endpoint == Some(Endpoint::Base) && auth.is_none();
            self.keep_challenge(&head, base);
        }
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            let location = head.headers().get(header::LOCATION).cloned();
            return match location {
                Some(l) => self.redirect(status, l, headers, auth),
                None => self.error(OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "the upstream registry redirected without a Location",
                )),
            };
        }
        if hop == Role::BlobStorage {
            // Blob storage's links are not the registry's.
            head.headers_mut().remove(header::LINK);
            let revoked = status.is_client_error() && status != StatusCode::RANGE_NOT_SATISFIABLE;
            if let Some(step) = revoked.then(|| self.kept_redirect_refused()).flatten() {
                return step;
            }
        }
        if self.endpoint == Some(Endpoint::Base) && status.is_success() && self.presents_nothing() {
            // docker and containers/image learn how to authenticate from `/v2/` alone: an
            // open `/v2/` would leave them without a token where a repository asks for one.
            // They get the anonymous token, or the upstream's, from the proxy's endpoint.
            return self.error(OciError::unauthorized("authentication required"));
        }
        if status.is_success() && self.rewrites_listing() {
            self.waiting = Waiting::ListingBody { head };
            return Step::ReadResponse {
                limit: listing::MAX_LISTING_BYTES,
            };
        }
        let has_body = !self.head_only || self.rewrites_listing();
        if (status.is_client_error() || status.is_server_error())
            && status != StatusCode::UNAUTHORIZED
            && has_body
        {
            self.waiting = Waiting::ErrorBody { head };
            return Step::ReadResponse {
                limit: MAX_ERROR_BODY,
            };
        }
        if status.is_client_error() || status.is_server_error() {
            self.cause = Some(format!("upstream answered {status}"));
        }
        if let Some(step) = self.keep_manifest(&head) {
            return step;
        }
        if let Some(Endpoint::Blob { digest, .. }) = &self.endpoint {
            // Blob storage answers without it; the digest is the blob's name.
            if status.is_success() && !head.headers().contains_key("docker-content-digest") {
                if let Ok(v) = HeaderValue::from_str(digest) {
                    head.headers_mut().insert("docker-content-digest", v);
                }
            }
        }
        self.reply(Draft::upstream(head))
    }

    pub(super) fn redirect(
        &mut self,
        status: StatusCode,
        location: HeaderValue,
        headers: HeaderMap,
        auth: Option<HeaderValue>,
    ) -> Step {
        let bad = |why: &str| {
            OciError::unavailable(
                StatusCode::BAD_GATEWAY,
                "the upstream registry sent a redirect the proxy cannot follow",
            )
            .because(why.to_string())
        };
        let Some(target) = self.resolve_location(&location) else {
            return self.error(bad("invalid Location"));
        };
        let origin = Origin::of_url(&target);
        let Some(origin) =
            origin.filter(|_| target.username().is_empty() && target.password().is_none())
        else {
            return self.error(bad("Location is not a plain http(s) URL"));
        };
        if self.hops >= MAX_HOPS {
            return self.error(bad("too many redirects"));
        }
        self.hops += 1;
        let method = self.upstream_method();
        let Some(route) = self.route().cloned() else {
            return self.error(OciError::internal("redirect without a route"));
        };
        if origin == route.upstream {
            // The upstream's own host: the client may not reach it, so the proxy follows.
            self.waiting = Waiting::RegistryAnswer {
                headers: headers.clone(),
                authorization: auth.clone(),
                hop: Role::Registry,
            };
            return self.send(Role::Registry, method, target, headers, auth, Vec::new());
        }
        // A redirect to another registry's API (registry.k8s.io to Artifact Registry) is still
        // the API, which the proxy speaks; one to storage is a download the client may make.
        let to_api = target.path().starts_with("/v2/");
        if !to_api {
            self.keep_redirect(&target);
        }
        let is_blob = matches!(self.endpoint, Some(Endpoint::Blob { .. }));
        if is_blob && !to_api && route.blob_redirect == BlobRedirect::Pass {
            return self.reply(Draft::redirect(status, target));
        }
        if !route.allows_cdn(&origin) {
            let e = bad(&format!(
                "redirect to {origin}, which the route's cdn does not allow"
            ));
            return self.error(e);
        }
        // Another host never sees the client's credentials. Another registry's API gets what
        // the client asks of the API (its Accept chooses the manifest's type); storage, no
        // more than a download needs.
        let hop_headers = if to_api {
            headers.clone()
        } else {
            headers::cdn_request(&self.client_headers)
        };
        self.hop = Some(Pending {
            method,
            target: target.into(),
            headers: hop_headers,
        });
        self.headers_for_redirects = headers;
        self.send_hop(None)
    }

    /// Sends the request to the host a redirect led to, never with the client's credentials.
    pub(super) fn send_hop(&mut self, authorization: Option<HeaderValue>) -> Step {
        let Some(h) = self.hop.clone() else {
            return self.error(OciError::internal("no redirect to follow"));
        };
        self.waiting = Waiting::RegistryAnswer {
            headers: self.headers_for_redirects.clone(),
            authorization: None,
            hop: Role::BlobStorage,
        };
        self.send(
            Role::BlobStorage,
            h.method,
            h.target,
            h.headers,
            authorization,
            Vec::new(),
        )
    }

    /// A host a redirect led to asks for a token of its own (registry.k8s.io sends clients to
    /// Artifact Registry, which wants an anonymous one): the proxy gets it, without any
    /// credentials, from a realm on a host the route may follow redirects to; once.
    pub(super) fn hop_challenged(&mut self, head: &Response<()>) -> Option<Step> {
        if self.hop_token_tried {
            return None;
        }
        let challenges = challenge::from_headers(head.headers());
        let realm = Realm::from_challenges(&challenges)?;
        let scope = challenges
            .iter()
            .find(|c| c.scheme == "bearer")
            .and_then(|c| c.param("scope"));
        let url = realm.token_url(scope)?;
        let allowed =
            Origin::of_url(&url).is_some_and(|o| self.route().is_some_and(|r| r.allows_cdn(&o)));
        if !allowed {
            return None;
        }
        self.hop_token_tried = true;
        self.waiting = Waiting::HopToken;
        Some(self.send(
            Role::BlobStorage,
            Method::GET,
            url,
            HeaderMap::new(),
            None,
            Vec::new(),
        ))
    }

    pub(super) fn hop_token_answered(&mut self, head: Response<()>) -> Step {
        if !head.status().is_success() {
            return self.error(
                OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "the upstream's storage refused an anonymous token",
                )
                .because(format!(
                    "redirect target's realm answered {}",
                    head.status()
                )),
            );
        }
        self.waiting = Waiting::HopTokenBody;
        Step::ReadResponse {
            limit: upstream_token::MAX_TOKEN_BODY,
        }
    }

    pub(super) fn hop_token_read(&mut self, body: Vec<u8>) -> Step {
        match upstream_token::Token::from_response(&body, self.now) {
            Some(t) => self.send_hop(upstream_token::bearer(&t.token)),
            None => self.error(upstream_token::missing(
                "the upstream's storage",
                "redirect target's realm answer without a token",
            )),
        }
    }

    pub(super) fn listing_read(&mut self, head: Response<()>, body: Vec<u8>) -> Step {
        let rewritten = match self.endpoint {
            Some(Endpoint::Catalog) => {
                listing::client_catalog_body(&body, &self.names, |n| self.catalog_shows(n))
            }
            Some(Endpoint::Tags { ref name }) => {
                listing::client_tags_body(&body, &self.names, name).map(|b| (b, false))
            }
            _ => None,
        };
        let Some((bytes, past_end)) = rewritten else {
            // A page the proxy cannot read may name repositories outside the prefix.
            let encoding = head
                .headers()
                .get(header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("identity");
            return self.error(
                OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "the upstream registry sent a listing the proxy cannot read",
                )
                .because(format!("listing not JSON (Content-Encoding: {encoding})")),
            );
        };
        let (mut parts, ()) = head.into_parts();
        let link = parts.headers.get(header::LINK);
        if past_end
            && link
                .and_then(|v| v.to_str().ok())
                .is_some_and(listing::pages_by_name)
        {
            parts.headers.remove(header::LINK);
        }
        let mut draft = Draft::made(parts.status, bytes, "application/json");
        draft.headers = parts.headers;
        self.reply(draft)
    }

    pub(super) fn error_read(&mut self, head: Response<()>, body: Option<&[u8]>) -> Step {
        let Some(endpoint) = self.endpoint.as_ref() else {
            return self.error(OciError::internal("no endpoint"));
        };
        let e = upstream_error::client_error(head.status(), body, endpoint);
        self.upstream_error(e, head)
    }

    /// Whether the endpoint's body must be rewritten: into client names, or a catalog to what
    /// the client may see.
    pub(super) fn rewrites_listing(&self) -> bool {
        let filtered = self.claims.is_some()
            || self
                .route()
                .is_some_and(|r| !r.allow.is_empty() || !r.deny.is_empty());
        match self.endpoint {
            Some(Endpoint::Tags { .. }) => !self.names.is_identity(),
            Some(Endpoint::Catalog) => !self.names.is_identity() || filtered,
            _ => false,
        }
    }

    /// Whether the catalog shows repository `name`: the route serves it, and a user of a
    /// `users` route may pull it.
    fn catalog_shows(&self, name: &str) -> bool {
        self.route().is_some_and(|r| r.serves(name))
            && self.claims.as_ref().is_none_or(|c| c.sees(name))
    }

    /// HEAD stays HEAD upstream (Docker Hub does not count it against the pull limit), except
    /// for a rewritten listing: its HEAD announces the rewritten length, so it needs the body.
    pub(super) fn upstream_method(&self) -> Method {
        if self.head_only && !self.rewrites_listing() {
            Method::HEAD
        } else {
            Method::GET
        }
    }

    /// The `Authorization` of the client's that goes upstream. Basic credentials are a login
    /// for this host, which may be another route's registry; a user's token is the proxy's,
    /// for the proxy alone.
    pub(super) fn clients_authorization(&self) -> Option<HeaderValue> {
        token::upstream_authorization(self.client_headers.get(header::AUTHORIZATION))
            .filter(|a| !token::is_basic(a) || self.route().is_some_and(|r| self.passes_logins(r)))
            .filter(|_| self.claims.is_none())
    }

    /// Whether `route` passes the client's credentials upstream, on the host asked.
    pub(super) fn passes_logins(&self, route: &Route) -> bool {
        let host = self.public.as_ref().map_or("", |p| p.host.as_str());
        self.config.routes.passes_logins(route, host)
    }

    /// Makes the registry request for `target` the pending one.
    fn build_target(&mut self) {
        let Some((path, query)) = self.target.take() else {
            return;
        };
        self.pending = self
            .upstream_target(&path, query.as_deref())
            .map(|target| Pending {
                method: self.upstream_method(),
                target,
                headers: headers::registry_request(&self.client_headers),
            });
    }

    pub(super) fn upstream_target(&self, path: &str, query: Option<&str>) -> Option<Target> {
        Target::registry(&self.route()?.upstream, path, query)
    }
}
