//! A route's own credentials: its upstream tokens, kept in the key-value store, fetched from
//! the realm when none is kept, and replaced once when the upstream refuses one.

use super::*;
use crate::cache::{self, Entry, Kind};

impl Exchange {
    /// Reads what the store knows of the route's realm and of its token for `scope`.
    pub(super) fn own_credentials_load(&mut self, scope: Option<String>) -> Step {
        let Some(route) = self.route() else {
            return self.error(OciError::internal("no route"));
        };
        let realm = upstream_token::realm_key(route);
        let identity = upstream_token::token_identity(route, scope.as_deref().unwrap_or(""));
        let mut keys = vec![realm];
        keys.extend(self.bucket_key(Kind::OwnToken, &identity));
        self.waiting = Waiting::OwnCredentials { scope };
        Step::Load(keys)
    }

    /// The scope the route's own token needs for this request, in upstream names.
    pub(super) fn own_scope(&self) -> Option<String> {
        match self.endpoint.as_ref()? {
            Endpoint::Catalog => Some("registry:catalog:*".into()),
            e => {
                let name = self.names.to_upstream(e.name()?)?;
                // A write asks for what it writes, besides the pull every registry wants.
                let actions = match (&self.write, &self.method) {
                    (None, _) => "pull",
                    (Some(_), &Method::DELETE) if !matches!(e, Endpoint::Upload { .. }) => {
                        "pull,delete"
                    }
                    (Some(_), _) => "pull,push",
                };
                let scope = format!("repository:{name}:{actions}");
                // A mount reads its `from` too (already mapped, and dropped unless served).
                let from = self
                    .pending
                    .as_ref()
                    .filter(|_| matches!(e, Endpoint::Upload { session: None, .. }))
                    .and_then(|p| p.target.url())
                    .and_then(|u| {
                        u.query_pairs()
                            .find(|(k, _)| k == "from")
                            .map(|(_, v)| v.into_owned())
                    });
                Some(match from {
                    Some(from) if from != name => format!("{scope} repository:{from}:pull"),
                    _ => scope,
                })
            }
        }
    }

    pub(super) fn credentials_loaded(
        &mut self,
        values: Vec<Option<Vec<u8>>>,
        scope: Option<String>,
    ) -> Step {
        let mut values = values.into_iter();
        let realm = values.next().flatten().and_then(|v| Realm::decode(&v));
        let identity = self.own_token_identity(scope.as_deref());
        let bucket = values.next().flatten();
        let token = identity
            .and_then(|id| cache::find::<upstream_token::Token>(bucket.as_deref(), &id, self.now));
        if let Some(t) = token {
            self.own_cached = true;
            return self.send_pending(upstream_token::bearer(&t.token));
        }
        self.own_realm_kept = realm.clone();
        match realm {
            Some(Realm::Basic) => {
                self.own_fresh = true;
                let auth = self.own_credentials();
                self.send_pending(auth)
            }
            Some(realm) => self.fetch_own_token(&realm, scope),
            // Unknown yet: a pushed blob's body goes once, so `/v2/`'s challenge says first.
            None if self.write == Some(push::WriteBody::Client) => {
                self.probe("/v2/", None, Waiting::OwnRealm { scope })
            }
            // Unknown yet: the upstream's 401 will say.
            None => self.send_pending(None),
        }
    }

    /// `/v2/`'s answer, before a streamed write: its realm, or an upstream that asks for none.
    pub(super) fn own_realm_answered(&mut self, head: Response<()>, scope: Option<String>) -> Step {
        let realm = Realm::from_challenges(&challenge::from_headers(head.headers()));
        match realm {
            Some(Realm::Bearer { .. }) | Some(Realm::Basic) => {
                let realm = realm.unwrap_or(Realm::Basic);
                if let Some(route) = self.route() {
                    let key = upstream_token::realm_key(route);
                    self.writes.push(Write::Set(key, realm.encode()));
                }
                if realm == Realm::Basic {
                    self.own_fresh = true;
                    let auth = self.own_credentials();
                    return self.send_pending(auth);
                }
                self.fetch_own_token(&realm, scope)
            }
            None => self.send_pending(None),
        }
    }

    fn own_token_identity(&self, scope: Option<&str>) -> Option<String> {
        Some(upstream_token::token_identity(
            self.route()?,
            scope.unwrap_or(""),
        ))
    }

    /// Keeps the route's token for `scope` until `until` (`0`: drops it).
    fn keep_own_token(&mut self, scope: Option<&str>, token: upstream_token::Token) {
        if let Some(id) = self.own_token_identity(scope) {
            let entry = Entry {
                identity: id,
                until: token.until,
                value: token,
            };
            self.keep(Kind::OwnToken, entry);
        }
    }

    pub(super) fn own_credentials(&self) -> Option<HeaderValue> {
        let creds = self.route()?.credentials.as_ref()?;
        upstream_token::authorization(creds)
    }

    /// Asks the realm for a token for `scope` with the route's credentials; it is kept under
    /// that scope, the one it grants.
    pub(super) fn fetch_own_token(&mut self, realm: &Realm, scope: Option<String>) -> Step {
        self.own_fresh = true;
        let url = realm.token_url(scope.as_deref());
        let allowed = url
            .as_ref()
            .and_then(Origin::of_url)
            .is_some_and(|o| self.route().is_some_and(|r| r.allows_realm(&o)));
        let Some(url) = url.filter(|_| allowed) else {
            return self.error(
                OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "the upstream token service is not configured",
                )
                .because("the route's realm is neither its upstream nor one of its auth origins"),
            );
        };
        let auth = self.own_credentials();
        self.waiting = Waiting::OwnToken { scope };
        self.send(
            Role::TokenService,
            Method::GET,
            url,
            HeaderMap::new(),
            auth,
            Vec::new(),
        )
    }

    pub(super) fn own_token_answered(&mut self, head: Response<()>, scope: Option<String>) -> Step {
        if head.status().is_success() {
            self.waiting = Waiting::OwnTokenBody { scope };
            return Step::ReadResponse {
                limit: upstream_token::MAX_TOKEN_BODY,
            };
        }
        let status = head.status();
        let because = format!("token realm answered {status}");
        // Its rate limit: the client waits as the realm says, and the realm stays known.
        if status == StatusCode::TOO_MANY_REQUESTS {
            let endpoint = self.endpoint.clone().unwrap_or(Endpoint::Base);
            let e = upstream_error::client_error(status, None, &endpoint).because(because);
            return self.upstream_error(e, head);
        }
        // A kept realm that refuses (404: moved; 401, 403: no longer the registry's) may have
        // moved: forget it, and let the registry's 401 name it. One that fails (5xx) is down.
        let refused = status.is_client_error();
        if self.own_realm_kept.take().is_some() && refused {
            if let Some(route) = self.route() {
                let key = upstream_token::realm_key(route);
                self.writes.push(Write::Delete(key));
            }
            self.own_fresh = false;
            return self.send_pending(None);
        }
        let message = if refused {
            "the upstream token service refused the route's credentials"
        } else {
            "the upstream token service failed"
        };
        self.error(OciError::unavailable(StatusCode::BAD_GATEWAY, message).because(because))
    }

    pub(super) fn own_token_read(&mut self, body: Vec<u8>, scope: Option<String>) -> Step {
        let Some(token) = upstream_token::Token::from_response(&body, self.now) else {
            let who = "the upstream token service";
            return self.error(upstream_token::missing(
                who,
                "token realm answer without a token",
            ));
        };
        let bearer = upstream_token::bearer(&token.token);
        self.keep_own_token(scope.as_deref(), token);
        self.send_pending(bearer)
    }

    /// A 401 to the route's own credentials (or to none yet): learn the realm, drop a stored
    /// token the upstream refused, and present the credentials afresh, once.
    pub(super) fn own_credentials_refused(&mut self, head: Response<()>) -> Option<Step> {
        let route = self.route()?.clone();
        if !matches!(route.credentials, Some(Credentials::Basic { .. })) {
            return None;
        }
        let challenges = challenge::from_headers(head.headers());
        let realm = Realm::from_challenges(&challenges)?;
        // Fresh credentials refused: final, unless they came by a kept realm the registry no
        // longer names.
        let kept = self.own_realm_kept.take();
        if self.own_fresh && kept.is_none_or(|k| k == realm) {
            return None;
        }
        let scope = self.own_scope();
        self.writes.push(Write::Set(
            upstream_token::realm_key(&route),
            realm.encode(),
        ));
        if self.own_cached {
            let ended = upstream_token::Token {
                token: String::new(),
                until: 0,
            };
            self.keep_own_token(scope.as_deref(), ended);
        }
        if realm == Realm::Basic {
            self.own_fresh = true;
            let auth = self.own_credentials();
            return Some(self.send_pending(auth));
        }
        // The challenge's scopes and the request's own (Harbor's challenges carry none; a
        // mount's `from` may be missing). The token is kept under the scope asked for, which
        // is what it grants: a challenge asking for less than the request's own
        // (distribution's for an upload's status: `pull`) must not leave a token a later push
        // would take for its own and meet a 401 with a streamed body.
        let challenged = challenges
            .iter()
            .find(|c| c.scheme == "bearer")
            .and_then(|c| c.param("scope"))
            .unwrap_or_default();
        let mut asked: Vec<&str> = Vec::new();
        for s in challenged
            .split_whitespace()
            .chain(scope.iter().flat_map(|s| s.split_whitespace()))
        {
            if !asked.contains(&s) {
                asked.push(s);
            }
        }
        let asked = (!asked.is_empty()).then(|| asked.join(" "));
        Some(self.fetch_own_token(&realm, asked))
    }
}
