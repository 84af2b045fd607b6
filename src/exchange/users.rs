//! The proxy's own users: logins at the token endpoint (checked against the `users` variable,
//! answered with a token the proxy signs), the check every request on a route passes before
//! anything else (its allow and deny lists; on a `users` route, the token and its scope), who
//! pulled what (each manifest GET's event and count), and the admin's endpoints (`/-/stats`,
//! `/-/health`).

use super::*;
use crate::proxy_token::{self, Access, Claims};
use crate::users::{Action, Principal, Refusal, Users};

/// What waits for the `users` variable (read only when someone logs in).
#[derive(Debug)]
pub(in crate::exchange) enum UsersThen {
    /// A login at the token endpoint, for a route (`None`: the host, no route in particular).
    Login {
        req: TokenRequest,
        route: Option<Box<Route>>,
    },
    /// An admin's request.
    Admin,
}

impl Exchange {
    /// The origin tokens are issued for: the public origin, as clients reach the proxy.
    fn audience(&self) -> String {
        self.public
            .as_ref()
            .map(Origin::to_string)
            .unwrap_or_default()
    }

    /// Before anything else happens on a route, a repository the route serves no one, and on a
    /// `users` route a request without a token that grants it, are answered here: nothing is
    /// read from the store and nothing goes upstream for them.
    pub(super) fn admit(&mut self, endpoint: &Endpoint) -> Option<Step> {
        self.admit_as(endpoint, Action::Pull)
    }

    /// `admit`, for a request that takes `action` on the repository.
    pub(super) fn admit_as(&mut self, endpoint: &Endpoint, action: Action) -> Option<Step> {
        let route = self.route()?.clone();
        if let Some(name) = endpoint.name().filter(|n| !route.serves(n)) {
            let e = OciError::denied(format!("repository {name} is not available here"));
            return Some(self.error(e));
        }
        if route.access != RouteAccess::Users {
            return None;
        }
        let claims = match self.proxy_token(Some(&route.name)) {
            Ok(c) => c,
            Err(e) => return Some(self.error(e)),
        };
        let allowed = match endpoint {
            Endpoint::Base => true,
            Endpoint::Catalog => claims.covers_catalog(),
            e => e.name().is_some_and(|n| claims.covers(n, action)),
        };
        self.user = Some(claims.sub.clone());
        if !allowed {
            if let Some(name) = endpoint.name().filter(|n| claims.is_for_others_than(n)) {
                // As a registry answers a token short of the scope: the client asks for one
                // that has it (and learns there whether the user may).
                let e = OciError::unauthorized(format!(
                    "authentication required: this token is not for {name}"
                ));
                return Some(self.error(e));
            }
            let what = endpoint.name().unwrap_or("the catalog");
            let e = OciError::denied(format!(
                "user {} may not {} {what}",
                claims.sub,
                action.as_str()
            ));
            return Some(self.error(e));
        }
        if *endpoint == Endpoint::Base {
            return Some(self.reply(Draft::made(
                StatusCode::OK,
                b"{}".to_vec(),
                "application/json",
            )));
        }
        self.claims = Some(claims);
        None
    }

    /// The client's token, checked for `route` (`None`: any route of the host): its claims, or
    /// the 401 that answers a request without a good one.
    pub(super) fn proxy_token(&self, route: Option<&str>) -> Result<Claims, OciError> {
        let Some(keys) = &self.config.tokens else {
            return Err(OciError::internal("no token keys"));
        };
        let token = token::bearer_token(self.client_headers.get(header::AUTHORIZATION));
        let Some(token) = token else {
            return Err(OciError::unauthorized(
                "authentication required: log in to this registry",
            ));
        };
        let secrets: Vec<&[u8]> = keys.secrets.iter().map(Vec::as_slice).collect();
        proxy_token::verify(token, &secrets, &self.audience(), route, self.now).map_err(|why| {
            OciError::unauthorized(why.words()).because(format!("token refused: {why:?}"))
        })
    }

    /// A token request for `route` (a `users` route, or `None`: a login for a host such a route
    /// serves): the user is checked against the `users` variable, which is read now.
    pub(super) fn user_login(&mut self, req: TokenRequest, route: Option<Route>) -> Step {
        if req.login().is_none() {
            return self.error(OciError::unauthorized(
                "authentication required: log in to this registry (docker login)",
            ));
        }
        let route = route.map(Box::new);
        self.with_users(UsersThen::Login { req, route })
    }

    pub(super) fn with_users(&mut self, then: UsersThen) -> Step {
        self.waiting = Waiting::Users(then);
        Step::Variables(vec!["users"])
    }

    pub(super) fn users_read(&mut self, then: UsersThen, values: Vec<Option<String>>) -> Step {
        let text = values.into_iter().next().flatten().unwrap_or_default();
        let users = match Users::parse(if text.trim().is_empty() { "[]" } else { &text }) {
            Ok(u) => u,
            Err(e) => {
                let e = OciError::config(e.to_string());
                return self.error(e);
            }
        };
        match then {
            UsersThen::Login { req, route } => self.logged_in(&users, &req, route.as_deref()),
            UsersThen::Admin => self.admin(&users),
        }
    }

    /// Who the request's credentials (Basic, or the token form's) name, or the 401 saying why
    /// not. Every refusal looks the same but for an expiry: no answer tells which users exist.
    fn check_user(&self, users: &Users, req: &TokenRequest) -> Result<Principal, OciError> {
        let (name, secret) = req.login().unwrap_or_default();
        users
            .authenticate(&name, &secret, self.now)
            .map_err(|refusal| {
                let words = match refusal {
                    Refusal::Unknown => "incorrect username or password",
                    Refusal::Expired => "the account or its access token has expired",
                };
                OciError::unauthorized(words).because(format!("login refused: {words}"))
            })
    }

    fn logged_in(&mut self, users: &Users, req: &TokenRequest, route: Option<&Route>) -> Step {
        let principal = match self.check_user(users, req) {
            Ok(p) => p,
            Err(e) => return self.error(e),
        };
        let Some(keys) = self.config.tokens.clone() else {
            return self.error(OciError::internal("no token keys"));
        };
        let name = route.map_or("", |r| r.name.as_str());
        let mut claims = Claims::new(
            &principal.user,
            &self.audience(),
            name,
            self.now,
            keys.lifetime,
        );
        claims.tok = principal.token.clone();
        if let Some(route) = route {
            claims.access = granted(&principal, route, req.scopes());
            if claims.covers_catalog() {
                claims.see = Some(principal.visible(&route.name));
            }
        }
        self.user = Some(principal.user);
        let Some(secret) = keys.secrets.first() else {
            return self.error(OciError::internal("no token secret"));
        };
        let token = proxy_token::sign(secret, &claims);
        let body = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": keys.lifetime,
            "issued_at": crate::civil_time::rfc3339(self.now),
        });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        self.reply(Draft::made(StatusCode::OK, bytes, "application/json"))
    }

    /// `/-/health`: the proxy answers, from its configuration alone; `?deep=1` (an admin's)
    /// asks each route's registry for its `/v2/`, once.
    pub(super) fn health(&mut self, deep: bool) -> Step {
        if deep {
            return self.admin_only();
        }
        // Nothing of the configuration: anyone may ask.
        let body = serde_json::json!({"status": "ok"});
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        self.reply(Draft::made(StatusCode::OK, bytes, "application/json"))
    }

    /// An admin's endpoint: the Basic credentials of a user marked admin, checked against the
    /// `users` variable.
    pub(super) fn admin_only(&mut self) -> Step {
        let req = TokenRequest::new(false, b"", self.client_headers.get(header::AUTHORIZATION));
        if req.login().is_none() {
            return self.error(OciError::unauthorized(
                "an admin's login is required (Basic credentials)",
            ));
        }
        self.with_users(UsersThen::Admin)
    }

    fn admin(&mut self, users: &Users) -> Step {
        let req = TokenRequest::new(false, b"", self.client_headers.get(header::AUTHORIZATION));
        let principal = match self.check_user(users, &req) {
            Ok(p) => p,
            Err(e) => return self.error(e),
        };
        if !principal.admin {
            let e = OciError::denied(format!("user {} is not an admin", principal.user));
            return self.error(e);
        }
        self.user = Some(principal.user);
        match self.endpoint {
            Some(Endpoint::Stats) => self.stats_load(),
            _ => self.health_check(0, serde_json::Map::new()),
        }
    }

    fn stats_load(&mut self) -> Step {
        self.waiting = Waiting::Stats;
        Step::Load(crate::pull_stats::keys())
    }

    pub(super) fn stats_loaded(&mut self, values: Vec<Option<Vec<u8>>>) -> Step {
        let report = crate::pull_stats::report(&values, self.now);
        let bytes = serde_json::to_vec(&report).unwrap_or_default();
        self.reply(Draft::made(StatusCode::OK, bytes, "application/json"))
    }

    /// Asks the registry of route `index` for its `/v2/`, and so on for each route.
    fn health_check(
        &mut self,
        index: usize,
        mut found: serde_json::Map<String, serde_json::Value>,
    ) -> Step {
        let Some(route) = self.config.routes.0.get(index).cloned() else {
            let body = serde_json::json!({"status": "ok", "routes": found});
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            return self.reply(Draft::made(StatusCode::OK, bytes, "application/json"));
        };
        found.insert(route.name.clone(), serde_json::Value::Null);
        self.use_route(route);
        self.waiting = Waiting::Health { index, found };
        match self.upstream_target("/v2/", None) {
            Some(target) => self.send(
                Role::Registry,
                Method::GET,
                target,
                HeaderMap::new(),
                None,
                Vec::new(),
            ),
            None => self.error(OciError::internal("no upstream URL")),
        }
    }

    /// A route's registry answered (`status`) or failed (`None`): on to the next.
    pub(super) fn health_answered(
        &mut self,
        index: usize,
        mut found: serde_json::Map<String, serde_json::Value>,
        status: Option<StatusCode>,
    ) -> Step {
        let verdict = match status {
            // A challenge is a registry that answers.
            Some(s) if s.is_success() || s == StatusCode::UNAUTHORIZED => "ok",
            Some(_) => "error",
            None => "unreachable",
        };
        let name = self.route().map(|r| r.name.clone()).unwrap_or_default();
        let mut entry = serde_json::Map::new();
        entry.insert("status".into(), verdict.into());
        if let Some(s) = status {
            entry.insert("upstream".into(), s.as_u16().into());
        }
        found.insert(name, entry.into());
        self.health_check(index + 1, found)
    }
}

impl Exchange {
    /// A manifest GET is a pull: its event for the log, and a count once it succeeded.
    pub(super) fn record_pull(&mut self, status: StatusCode) {
        let (Some(Endpoint::Manifest { name, reference }), Some(route), &Method::GET) =
            (&self.endpoint, &self.route, &self.method)
        else {
            return;
        };
        let user = self.user.as_deref().unwrap_or("anonymous");
        let event = crate::pull_stats::Event::new(
            self.now,
            &route.name,
            name,
            reference,
            user,
            status.as_u16(),
        );
        if status.is_success() {
            self.deferred.push(Write::Count {
                key: crate::pull_stats::key(self.now),
                now: self.now,
                repository: event.counted_as(),
                user: user.to_string(),
                // One-way from the request's random bytes, which may become the store secret.
                mark: crate::digest::sha256(&self.random)[..16].to_string(),
            });
        }
        self.pull = Some(event);
    }
}

/// What a user's token grants of the scopes asked for: each repository action the user (and
/// the access token used) may take and the route serves; the catalog where the user holds
/// anything on the route. Names are client names.
fn granted<'a>(
    principal: &Principal,
    route: &Route,
    scopes: impl Iterator<Item = &'a str>,
) -> Vec<Access> {
    let mut out: Vec<Access> = Vec::new();
    for scope in scopes.flat_map(str::split_whitespace) {
        let mut parts = scope.splitn(2, ':');
        let (Some(kind), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        if kind == "registry" && name == "catalog" {
            if principal.any_on(&route.name) && !out.iter().any(|a| a.kind == "registry") {
                out.push(Access {
                    kind: "registry".into(),
                    name: "catalog".into(),
                    actions: vec!["*".into()],
                });
            }
            continue;
        }
        if kind != "repository" || !route.serves(name) {
            continue;
        }
        let on_route = |a: &Action| match a {
            Action::Pull => true,
            Action::Push => route.push,
            Action::Delete => route.delete,
        };
        let allowed: Vec<String> = actions
            .split(',')
            .filter_map(Action::parse)
            .filter(on_route)
            .filter(|a| principal.may(&route.name, name, *a))
            .map(|a| a.as_str().to_string())
            .collect();
        match out
            .iter_mut()
            .find(|a| a.kind == "repository" && a.name == name)
        {
            Some(a) => {
                for x in allowed {
                    if !a.actions.contains(&x) {
                        a.actions.push(x);
                    }
                }
            }
            None if !allowed.is_empty() => out.push(Access {
                kind: "repository".into(),
                name: name.to_string(),
                actions: allowed,
            }),
            None => {}
        }
    }
    out
}
