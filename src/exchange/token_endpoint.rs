//! The proxy's token endpoint: which route a request is for, how its upstream authenticates,
//! and the realm's token, which comes back untouched.

use super::*;

impl Exchange {
    pub(super) fn token_request(&mut self, req: TokenRequest) -> Step {
        let host = self
            .public
            .as_ref()
            .map_or("", |p| p.host.as_str())
            .to_string();
        let users_login = |route: Option<&Route>, req: &TokenRequest| {
            self.config.routes.has_users(&host)
                && req.offers_credentials()
                && route.is_none_or(|r| {
                    r.access != RouteAccess::Users
                        && req.repositories().is_empty()
                        && !self.passes_logins(r)
                })
        };
        let (route, req) = match self.token_route(req) {
            // A login for a host the proxy's users log in to is theirs, also where a route
            // without a path would take it: that route drops it, and the client took the
            // anonymous token for a login that succeeded, whatever the password.
            Ok((route, req)) if users_login(route.as_ref(), &req) => {
                return self.user_login(req, None)
            }
            Ok((Some(route), req)) => (route, req),
            Ok((None, _)) => return self.anonymous_token(),
            Err(e) => return self.error(e),
        };
        if let Some(name) = req.repositories().into_iter().find(|n| !route.serves(n)) {
            let e = OciError::denied(format!("repository {name} is not available here"));
            return self.error(e);
        }
        if route.access == RouteAccess::Users {
            self.use_route(route.clone());
            return self.user_login(req, Some(route));
        }
        let authenticates_itself = route.credentials.is_some();
        // A login meant for another registry on this host, or for the proxy's users, stays
        // here; one that no route may take (routes for several registries, none chosen) is
        // refused where the registry asks for it (`authenticate`).
        let req = if self.passes_logins(&route) {
            req
        } else {
            let routes = &self.config.routes;
            if req.offers_credentials()
                && route.logins == Logins::Unshared
                && !routes.has_users(&host)
            {
                let rivals = routes.login_rivals(&route, &host);
                self.logins_dropped = Some(rivals.into_iter().map(String::from).collect());
            }
            req.without_credentials()
        };
        self.use_route(route);
        if let Some(name) = scope::first_invalid_name(&self.names, req.scopes()) {
            return self.error(OciError::name_invalid(format!(
                "invalid repository name in scope: {name}"
            )));
        }
        if authenticates_itself {
            // The route uses its own credentials upstream for every client.
            return self.anonymous_token();
        }
        self.with_secret(cached::Then::Token(req))
    }

    /// The route a token request is for: the one serving every repository its scopes name
    /// (or containerd's `ns`), else the host's own. `None`: nothing upstream to ask. Scopes of
    /// two routes, one of them the scope the proxy's challenge carried (containerd merges it
    /// into every later request, see `challenge::CHALLENGE_SCOPE`): that one gives way.
    pub(super) fn token_route(
        &self,
        req: TokenRequest,
    ) -> Result<(Option<Route>, TokenRequest), OciError> {
        let several = || {
            OciError::unsupported(
                StatusCode::BAD_REQUEST,
                "the scopes name repositories of different registries",
            )
        };
        if let Some(route) = self.route_of_scopes(&req)? {
            return Ok((route, req));
        }
        let Some(challenged) = self.challenge_scope.as_deref() else {
            return Err(several());
        };
        let stale = token::repositories(std::iter::once(challenged));
        let req = req.without_repositories(&stale);
        match self.route_of_scopes(&req)? {
            Some(route) if !req.repositories().is_empty() => Ok((route, req)),
            _ => Err(several()),
        }
    }

    /// `None` when the scopes name repositories of several routes.
    fn route_of_scopes(&self, req: &TokenRequest) -> Result<Option<Option<Route>>, OciError> {
        let host = self
            .public
            .as_ref()
            .map(|p| p.host.clone())
            .unwrap_or_default();
        let routes = &self.config.routes;
        let names = req.repositories();
        if names.is_empty() {
            if self.ns.is_none() && routes.paths_only(&host) {
                // A login: no one registry can check it. The client keeps the credentials
                // and sends them with each token request, which the route checks.
                return Ok(Some(None));
            }
            let route = routes.select(&host, None, self.ns.as_deref())?;
            return Ok(Some(Some(route.clone())));
        }
        let mut chosen: Option<&Route> = None;
        for name in &names {
            let route = routes.select(&host, Some(name), self.ns.as_deref())?;
            if chosen.is_some_and(|c| c.name != route.name) {
                return Ok(None);
            }
            chosen = Some(route);
        }
        Ok(Some(chosen.cloned()))
    }

    /// An anonymous GET to the registry, to learn how it authenticates.
    pub(super) fn probe(&mut self, path: &str, query: Option<&str>, waiting: Waiting) -> Step {
        let Some(target) = self.upstream_target(path, query) else {
            return self.error(OciError::internal("no route"));
        };
        self.waiting = waiting;
        let no_headers = HeaderMap::new();
        self.send(
            Role::Registry,
            Method::GET,
            target,
            no_headers,
            None,
            Vec::new(),
        )
    }

    pub(super) fn form_read(&mut self, body: Vec<u8>) -> Step {
        self.token_request_from(true, &body)
    }

    /// A token request from its query (a GET) or form (a POST).
    pub(super) fn token_request_from(&mut self, form: bool, encoded: &[u8]) -> Step {
        if !token::decodes_to_utf8(encoded) {
            return self.error(OciError::unsupported(
                StatusCode::BAD_REQUEST,
                "the token request's parameters are not UTF-8",
            ));
        }
        let auth = self.client_headers.get(header::AUTHORIZATION).cloned();
        self.token_request(TokenRequest::new(form, encoded, auth.as_ref()))
    }

    pub(super) fn realm_discovered(&mut self, head: Response<()>, req: TokenRequest) -> Step {
        self.keep_challenge(&head, true);
        self.realm_known(head, req)
    }

    /// What `/v2/`'s answer, fresh or kept (a kept one is not kept again: it would never end
    /// while clients keep asking), means for a token request.
    pub(super) fn realm_known(&mut self, head: Response<()>, req: TokenRequest) -> Step {
        let status = head.status();
        if status.is_success() {
            // `/v2/` is open, but a repository may still challenge (a private one, or a
            // registry that only asks per repository): its realm is where a token comes from.
            let upstream = req
                .first_repository()
                .and_then(|n| self.names.to_upstream(&n));
            return match upstream {
                Some(name) => {
                    let path = Endpoint::Tags { name }.path();
                    self.probe(&path, Some("n=1"), Waiting::RepositoryChallenge(req))
                }
                None if req.offers_credentials() => self.error(credentials_unused(
                    "the upstream registry asks for no credentials",
                )),
                None => self.anonymous_token(),
            };
        }
        if status == StatusCode::UNAUTHORIZED {
            return self.authenticate(&challenge::from_headers(head.headers()), req);
        }
        if status.is_redirection() {
            // The registry hands every request to another host (registry.k8s.io), whose
            // anonymous tokens the proxy gets itself: clients need none, and their
            // credentials have no realm here.
            if req.offers_credentials() {
                return self.error(credentials_unused(
                    "the upstream registry redirects to another and asks for no credentials",
                ));
            }
            return self.anonymous_token();
        }
        self.error(self.unexpected(status))
    }

    pub(super) fn repository_challenged(&mut self, head: Response<()>, req: TokenRequest) -> Step {
        if head.status() == StatusCode::UNAUTHORIZED {
            return self.authenticate(&challenge::from_headers(head.headers()), req);
        }
        if !req.offers_credentials() {
            // Kept as the realm's anonymous tokens are, for as long as the open `/v2/` is: the
            // next anonymous client asks the upstream nothing (each asked it a tags/list).
            self.keep_open_repository();
            return self.anonymous_token();
        }
        self.error(
            credentials_unused("the upstream registry asks for no credentials for this repository")
                .because(format!("repository probe answered {}", head.status())),
        )
    }

    /// Sends the token request to the upstream's Bearer realm.
    pub(super) fn authenticate(&mut self, challenges: &[Challenge], req: TokenRequest) -> Step {
        if let Some(rivals) = self.logins_dropped.take() {
            // The registry asks for a login the route may not pass: an anonymous token would
            // fail as "denied", leaving user and operator to guess why.
            // 401: clients show a 401's message (skopeo and podman show no other's).
            let route = self.route().map_or("", |r| r.name.as_str()).to_string();
            return self.error(OciError::unauthorized(format!(
                "this host's logins reach none of its registries: routes {} serve it for \
                     other registries than route {route:?}, so the proxy passes credentials \
                     to none; the operator sets \"client_credentials\": true on the route \
                     logins are for",
                rivals
                    .iter()
                    .map(|r| format!("{r:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") else {
            if challenges.iter().any(|c| c.scheme == "basic") {
                return self.error(OciError::unsupported(
                    StatusCode::BAD_REQUEST,
                    "this registry takes Basic credentials with each request, not tokens: \
                     serve it on a host of its own",
                ));
            }
            return self.error(
                OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "the upstream registry asks for authentication without saying how",
                )
                .because("401 without a Bearer or Basic challenge"),
            );
        };
        let realm = bearer.param("realm").and_then(|r| url::Url::parse(r).ok());
        let realm = realm.filter(|r| r.username().is_empty() && r.password().is_none());
        let origin = realm.as_ref().and_then(Origin::of_url);
        let (Some(realm), Some(origin)) = (realm, origin) else {
            return self.error(
                OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "the upstream registry's challenge has no usable realm",
                )
                .because("challenge realm is not an http(s) URL"),
            );
        };
        if !self.route().is_some_and(|r| r.allows_realm(&origin)) {
            return self.error(
                OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "the upstream token service is not configured",
                )
                .because(format!(
                    "token realm {origin} is neither upstream nor upstream_auth"
                )),
            );
        }
        let service = bearer.param("service");
        let mut headers = HeaderMap::new();
        let (method, url, body) = if req.form {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            let form = req.upstream_form(service, &self.names).into_bytes();
            (Method::POST, realm, form)
        } else {
            let url = req.upstream_url(&realm, service, &self.names);
            (Method::GET, url, Vec::new())
        };
        self.send_token(method, url, headers, req.basic, body)
    }

    pub(super) fn send_token(
        &mut self,
        method: Method,
        url: url::Url,
        headers: HeaderMap,
        basic: Option<HeaderValue>,
        body: Vec<u8>,
    ) -> Step {
        let step = self.send(Role::TokenService, method, url, headers, basic, body);
        if let Step::Send(request) = &step {
            self.waiting = Waiting::Token {
                request: clone_request(request),
            };
        }
        step
    }

    pub(super) fn token_issued(&mut self, head: Response<()>, request: Request<Vec<u8>>) -> Step {
        let status = head.status();
        if status.is_success() {
            self.waiting = Waiting::TokenBody { head };
            return Step::ReadResponse {
                limit: upstream_token::MAX_TOKEN_BODY,
            };
        }
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            return self.token_redirect(&head, request);
        }
        if status == StatusCode::UNAUTHORIZED {
            return self.error(
                OciError::unauthorized("the upstream token service refused the credentials")
                    .because("token realm answered 401"),
            );
        }
        if status.is_client_error() {
            let e = upstream_error::client_error(status, None, &Endpoint::Token);
            return self.upstream_error(e, head);
        }
        self.error(self.unexpected(status))
    }

    /// The realm's token. Anything else with a 2xx (a login page, a captive portal) is the
    /// token service failing, and its words are not passed on.
    pub(super) fn token_read(&mut self, head: Response<()>, body: Vec<u8>) -> Step {
        let Some(token) = upstream_token::Token::from_response(&body, self.now) else {
            let who = "the upstream token service";
            return self.error(upstream_token::missing(
                who,
                "token realm's 2xx without a token",
            ));
        };
        match self.anonymous_identity.clone() {
            Some(identity) => self.keep_anonymous_token(token, identity),
            None => self.reply_stored(head, body),
        }
    }

    /// A realm that redirects is followed, only to a realm origin configuration allows.
    pub(super) fn token_redirect(
        &mut self,
        head: &Response<()>,
        request: Request<Vec<u8>>,
    ) -> Step {
        let target = head
            .headers()
            .get(header::LOCATION)
            .and_then(|l| self.resolve_location(l))
            .filter(|t| t.username().is_empty() && t.password().is_none());
        let allowed = target
            .as_ref()
            .and_then(Origin::of_url)
            .is_some_and(|o| self.route().is_some_and(|r| r.allows_realm(&o)));
        let (Some(target), true, true) = (target, allowed, self.hops < MAX_HOPS) else {
            return self.error(
                OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "the upstream token service redirected where the proxy does not follow",
                )
                .because("token realm redirect to an unconfigured origin"),
            );
        };
        self.hops += 1;
        let (parts, body) = request.into_parts();
        let auth = parts.headers.get(header::AUTHORIZATION).cloned();
        let mut headers = parts.headers;
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::CONTENT_LENGTH);
        // 307 and 308 repeat the request; the others turn it into a GET.
        let keep = matches!(
            head.status(),
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
        );
        if keep {
            self.send_token(parts.method, target, headers, auth, body)
        } else {
            headers.remove(header::CONTENT_TYPE);
            self.send_token(Method::GET, target, headers, auth, Vec::new())
        }
    }

    pub(super) fn anonymous_token(&mut self) -> Step {
        let draft = Draft::made(
            StatusCode::OK,
            token::anonymous_token_json(),
            "application/json",
        );
        self.reply(draft)
    }
}
