//! One client request, from arrival to response, as a state machine over `http` types.
//!
//! The runtime adapter drives it, step by step (see `Step`), and performs only what a step
//! asks: it never decides a status, a header or a destination itself. Each state is named for
//! what the exchange waits for, and has one handler.

use crate::challenge::{self, Challenge};
use crate::config::{BlobRedirect, Config, ConfigError};
use crate::endpoint::Endpoint;
use crate::error::OciError;
use crate::headers;
use crate::home;
use crate::listing;
use crate::names::NameMap;
use crate::origin::Origin;
use crate::reply::{self, ClientResponse, Draft};
use crate::routes::{Credentials, Route};
use crate::scope;
use crate::token::{self, TokenRequest};
use crate::upstream_error::{self, MAX_ERROR_BODY};
use crate::upstream_failure::{Failure, Role};
use crate::upstream_token::{self, Realm};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

/// Redirects followed for one request before giving up.
const MAX_HOPS: u8 = 5;

/// What the runtime says about the request, its body aside.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub scheme: Option<String>,
    pub authority: Option<String>,
    /// Unix seconds, for the lifetimes of stored tokens.
    pub now: u64,
}

/// A change to the key-value store the exchange asks for. The adapter performs the writes
/// `take_writes` returns before it performs each step; a write that fails is lost, never an
/// error (the store only saves upstream requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Set(String, Vec<u8>),
    Delete(String),
}

/// What the adapter does next. After each step it calls exactly one method of the exchange,
/// and it stops after `Reply`.
#[derive(Debug)]
pub enum Step {
    /// Read the client's request body, at most `limit` bytes, and call `on_request_body`; a
    /// longer body is `on_failure(Failure::TooLarge)`.
    ReadRequest { limit: usize },
    /// Send this request (its origin is always one configuration names) and call
    /// `on_response` with the response head, or `on_failure` when there is none. Keep the
    /// response: a later step may read or stream its body.
    Send(Request<Vec<u8>>),
    /// Read the body of the response last handed to `on_response`, at most `limit` bytes,
    /// and call `on_body`, or `on_failure`.
    ReadResponse { limit: usize },
    /// Read these keys from the key-value store and call `on_loaded` with their values, in
    /// order (`None` for a missing key, or when the store cannot be reached).
    Load(Vec<String>),
    /// Send this response and stop. `ClientBody::Upstream` is the body of the response last
    /// handed to `on_response`, streamed as it comes; `ClientBody::None` is a HEAD's answer:
    /// the head alone.
    Reply(ClientResponse),
}

/// What the exchange waits for; each variant has one handler.
#[derive(Debug)]
enum Waiting {
    Nothing,
    /// The token endpoint's form (`on_request_body` → `form_read`).
    TokenForm,
    /// A registry API response, after any redirects (`registry_answered`). `hop` is where the
    /// request in flight went.
    RegistryAnswer {
        headers: HeaderMap,
        authorization: Option<HeaderValue>,
        hop: Role,
    },
    /// A listing body to rewrite (`listing_read`).
    ListingBody {
        head: Response<()>,
    },
    /// An upstream error body, to learn its code (`error_read`).
    ErrorBody {
        head: Response<()>,
    },
    /// `GET /v2/`: how the upstream authenticates (`realm_discovered`).
    RealmDiscovery(TokenRequest),
    /// The scope's own repository, where `/v2/` did not challenge (`repository_challenged`).
    RepositoryChallenge(TokenRequest),
    /// The realm's token, after any redirects (`token_issued`). Keeps the request to resend.
    Token {
        request: Request<Vec<u8>>,
    },
    /// What the store knows of the route's realm and token (`credentials_loaded`).
    OwnCredentials {
        scope: Option<String>,
    },
    /// The realm's answer to the route's credentials (`own_token_answered`).
    OwnToken {
        scope: Option<String>,
    },
    /// Its body (`own_token_read`).
    OwnTokenBody {
        scope: Option<String>,
    },
    /// An anonymous token for the host a redirect led to (`hop_token_answered`).
    HopToken,
    /// Its body (`hop_token_read`).
    HopTokenBody,
}

/// The registry request the route's own credentials are being got for, to send (again).
#[derive(Debug, Clone)]
struct Pending {
    method: Method,
    url: url::Url,
    headers: HeaderMap,
}

pub struct Exchange {
    config: Config,
    public: Option<Origin>,
    /// The route serving the request, once chosen; its names.
    route: Option<Route>,
    names: NameMap,
    /// containerd's `ns`: the registry the client thinks it talks to.
    ns: Option<String>,
    endpoint: Option<Endpoint>,
    head_only: bool,
    client_headers: HeaderMap,
    waiting: Waiting,
    /// The URL of the upstream request in flight.
    current: Option<url::Url>,
    role: Role,
    hops: u8,
    /// The status of the last upstream response, for the log.
    pub upstream_status: Option<StatusCode>,
    /// Why the answer is an error, for the log only.
    cause: Option<String>,
    now: u64,
    writes: Vec<Write>,
    pending: Option<Pending>,
    /// Whether the route's token came from the store.
    own_cached: bool,
    /// Whether the route's credentials have been presented afresh: once per request.
    own_fresh: bool,
    /// The request to the host a redirect led to, to send (again, with a token).
    hop: Option<Pending>,
    /// The registry headers, for a redirect the hop answers with.
    headers_for_redirects: HeaderMap,
    hop_token_tried: bool,
}

impl Exchange {
    pub fn start(config: Config, req: Incoming) -> (Exchange, Step) {
        let head_only = req.method == Method::HEAD;
        let public = crate::public_url::public_origin(
            &config,
            &req.headers,
            req.scheme.as_deref(),
            req.authority.as_deref(),
        );
        let endpoint = Endpoint::parse(&req.path);
        let ns = url::form_urlencoded::parse(req.query.as_deref().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "ns")
            .map(|(_, v)| v.to_ascii_lowercase());
        let mut ex = Exchange {
            public: public.as_ref().ok().cloned(),
            config,
            route: None,
            names: NameMap::default(),
            ns,
            endpoint: endpoint.as_ref().ok().cloned(),
            head_only,
            client_headers: req.headers.clone(),
            waiting: Waiting::Nothing,
            current: None,
            role: Role::Registry,
            hops: 0,
            upstream_status: None,
            cause: None,
            now: req.now,
            writes: Vec::new(),
            pending: None,
            own_cached: false,
            own_fresh: false,
            hop: None,
            headers_for_redirects: HeaderMap::new(),
            hop_token_tried: false,
        };
        let step = match (public, endpoint) {
            (Err(e), _) | (_, Err(e)) => ex.error(e),
            (Ok(_), Ok(_)) => ex.begin(req),
        };
        (ex, step)
    }

    /// The answer to every request while the configuration is invalid.
    pub fn unconfigured(e: &ConfigError, head_only: bool) -> ClientResponse {
        let names = NameMap::default();
        let ctx = reply::Context {
            public: None,
            realm: String::new(),
            upstream: None,
            names: &names,
            endpoint: None,
            head_only,
        };
        reply::finish(&ctx, Draft::error(&OciError::config(e.to_string())))
    }

    /// How long the upstream may take to connect, to answer and between bytes.
    pub fn timeout(&self) -> std::time::Duration {
        self.route()
            .map_or(std::time::Duration::from_secs(25), |r| r.timeout)
    }

    /// The key-value writes to perform before the next step.
    pub fn take_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.writes)
    }

    /// What the log should say about an error answer: its cause, never a credential.
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    fn begin(&mut self, req: Incoming) -> Step {
        let Some(endpoint) = self.endpoint.clone() else {
            return self.error(OciError::internal("no endpoint"));
        };
        let read_only = matches!(req.method, Method::GET | Method::HEAD);
        match endpoint {
            Endpoint::Token if req.method == Method::POST => {
                self.waiting = Waiting::TokenForm;
                Step::ReadRequest {
                    limit: token::MAX_FORM_BYTES,
                }
            }
            Endpoint::Token if read_only => {
                let query = req.query.unwrap_or_default();
                self.token_request(TokenRequest::new(
                    false,
                    query.as_bytes(),
                    req.headers.get(header::AUTHORIZATION),
                ))
            }
            _ if !read_only => self.method_not_allowed(&req.method),
            Endpoint::Upload { .. } | Endpoint::Token => self.method_not_allowed(&req.method),
            Endpoint::Home => match self.public.clone() {
                Some(public) => {
                    let draft = home::draft(&self.config, &public);
                    self.reply(draft)
                }
                None => self.error(OciError::internal("no public origin")),
            },
            endpoint => {
                let host = self
                    .public
                    .as_ref()
                    .map(|p| p.host.clone())
                    .unwrap_or_default();
                if endpoint == Endpoint::Base
                    && self.ns.is_none()
                    && self.config.routes.paths_only(&host)
                {
                    // Several registries by path: none speaks for the domain. Clients take the
                    // challenge of `/v2/` for every repository, so it is the proxy's, and
                    // token requests find their route by the scope's repository. A login
                    // (which comes back with its token) is checked by no registry.
                    if req.headers.contains_key(header::AUTHORIZATION) {
                        let ok = Draft::made(StatusCode::OK, b"{}".to_vec(), "application/json");
                        return self.reply(ok);
                    }
                    return self.error(OciError::unauthorized("authentication required"));
                }
                let selected =
                    self.config
                        .routes
                        .select(&host, endpoint.name(), self.ns.as_deref());
                match selected.cloned() {
                    Ok(route) => {
                        self.use_route(route);
                        self.registry_request(&endpoint, req)
                    }
                    Err(e) => self.error(e),
                }
            }
        }
    }

    fn use_route(&mut self, route: Route) {
        self.names = route.names();
        self.route = Some(route);
    }

    /// The route in use; every upstream request has one.
    pub fn route(&self) -> Option<&Route> {
        self.route.as_ref()
    }

    /// Whether the endpoint's body must be rewritten into client names.
    fn rewrites_listing(&self) -> bool {
        matches!(
            self.endpoint,
            Some(Endpoint::Tags { .. } | Endpoint::Catalog)
        ) && !self.names.is_identity()
    }

    /// HEAD stays HEAD upstream (Docker Hub does not count it against the pull limit), except
    /// for a rewritten listing: its HEAD announces the rewritten length, so it needs the body.
    fn upstream_method(&self) -> Method {
        if self.head_only && !self.rewrites_listing() {
            Method::HEAD
        } else {
            Method::GET
        }
    }

    fn registry_request(&mut self, endpoint: &Endpoint, req: Incoming) -> Step {
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
        let headers = headers::registry_request(&req.headers);
        let authorization = token::upstream_authorization(req.headers.get(header::AUTHORIZATION));
        let Some(url) = self.upstream_url(&path, query.as_deref()) else {
            return self.error(OciError::internal("no route"));
        };
        let method = self.upstream_method();
        self.pending = Some(Pending {
            method,
            url,
            headers,
        });
        match self.route().and_then(|r| r.credentials.clone()) {
            // The route authenticates upstream itself: the client's Authorization stays here.
            Some(_) if *endpoint == Endpoint::Base => self.reply(Draft::made(
                StatusCode::OK,
                b"{}".to_vec(),
                "application/json",
            )),
            Some(Credentials::Token(t)) => {
                self.send_pending(upstream_token::authorization(&Credentials::Token(t)))
            }
            Some(Credentials::Basic { .. }) => {
                let scope = self.own_scope();
                let Some(route) = self.route() else {
                    return self.error(OciError::internal("no route"));
                };
                let keys = vec![
                    upstream_token::realm_key(route),
                    upstream_token::token_key(route, scope.as_deref().unwrap_or("")),
                ];
                self.waiting = Waiting::OwnCredentials { scope };
                Step::Load(keys)
            }
            None => self.send_pending(authorization),
        }
    }

    /// Sends the pending registry request with `authorization`.
    fn send_pending(&mut self, authorization: Option<HeaderValue>) -> Step {
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
            p.url,
            p.headers,
            authorization,
            Vec::new(),
        )
    }

    /// The scope the route's own token needs for this request, in upstream names.
    fn own_scope(&self) -> Option<String> {
        match self.endpoint.as_ref()? {
            Endpoint::Catalog => Some("registry:catalog:*".into()),
            e => {
                let name = self.names.to_upstream(e.name()?)?;
                Some(format!("repository:{name}:pull"))
            }
        }
    }

    pub fn on_loaded(&mut self, values: Vec<Option<Vec<u8>>>) -> Step {
        match std::mem::replace(&mut self.waiting, Waiting::Nothing) {
            Waiting::OwnCredentials { scope } => self.credentials_loaded(values, scope),
            _ => self.out_of_order("stored values"),
        }
    }

    fn credentials_loaded(&mut self, values: Vec<Option<Vec<u8>>>, scope: Option<String>) -> Step {
        let mut values = values.into_iter();
        let realm = values.next().flatten().and_then(|v| Realm::decode(&v));
        let token = values
            .next()
            .flatten()
            .and_then(|v| upstream_token::Token::decode_valid(&v, self.now));
        if let Some(t) = token {
            self.own_cached = true;
            return self.send_pending(upstream_token::bearer(&t.token));
        }
        match realm {
            Some(Realm::Basic) => {
                self.own_fresh = true;
                let auth = self.own_credentials();
                self.send_pending(auth)
            }
            Some(realm) => self.fetch_own_token(&realm, scope.as_deref(), scope.clone()),
            // Unknown yet: the upstream's 401 will say.
            None => self.send_pending(None),
        }
    }

    fn own_credentials(&self) -> Option<HeaderValue> {
        let creds = self.route()?.credentials.as_ref()?;
        upstream_token::authorization(creds)
    }

    /// Asks the realm for a token for `scope` with the route's credentials; it is stored
    /// under `key_scope` (the request's own scope, which the next request will look for).
    fn fetch_own_token(
        &mut self,
        realm: &Realm,
        scope: Option<&str>,
        key_scope: Option<String>,
    ) -> Step {
        self.own_fresh = true;
        let url = realm.token_url(scope);
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
        self.waiting = Waiting::OwnToken { scope: key_scope };
        self.send(
            Role::TokenService,
            Method::GET,
            url,
            HeaderMap::new(),
            auth,
            Vec::new(),
        )
    }

    fn own_token_answered(&mut self, head: Response<()>, scope: Option<String>) -> Step {
        if head.status().is_success() {
            self.waiting = Waiting::OwnTokenBody { scope };
            return Step::ReadResponse {
                limit: upstream_token::MAX_TOKEN_BODY,
            };
        }
        self.error(
            OciError::unavailable(
                StatusCode::BAD_GATEWAY,
                "the upstream token service refused the route's credentials",
            )
            .because(format!("token realm answered {}", head.status())),
        )
    }

    fn own_token_read(&mut self, body: Vec<u8>, scope: Option<String>) -> Step {
        let Some(token) = upstream_token::Token::from_response(&body, self.now) else {
            return self.error(
                OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "the upstream token service sent no token",
                )
                .because("token realm answer without a token"),
            );
        };
        if let Some(route) = self.route() {
            let key = upstream_token::token_key(route, scope.as_deref().unwrap_or(""));
            self.writes.push(Write::Set(key, token.encode()));
        }
        self.send_pending(upstream_token::bearer(&token.token))
    }

    /// A 401 to the route's own credentials (or to none yet): learn the realm, drop a stored
    /// token the upstream refused, and present the credentials afresh, once.
    fn own_credentials_refused(&mut self, head: Response<()>) -> Option<Step> {
        let route = self.route()?.clone();
        if !matches!(route.credentials, Some(Credentials::Basic { .. })) || self.own_fresh {
            return None;
        }
        let challenges = challenge::from_headers(head.headers());
        let realm = Realm::from_challenges(&challenges)?;
        let scope = self.own_scope();
        self.writes.push(Write::Set(
            upstream_token::realm_key(&route),
            realm.encode(),
        ));
        if self.own_cached {
            let key = upstream_token::token_key(&route, scope.as_deref().unwrap_or(""));
            self.writes.push(Write::Delete(key));
        }
        if realm == Realm::Basic {
            self.own_fresh = true;
            let auth = self.own_credentials();
            return Some(self.send_pending(auth));
        }
        // Harbor's challenges carry no scope: then the request's own.
        let asked = challenges
            .iter()
            .find(|c| c.scheme == "bearer")
            .and_then(|c| c.param("scope"))
            .map(String::from)
            .or_else(|| scope.clone());
        Some(self.fetch_own_token(&realm, asked.as_deref(), scope))
    }

    pub fn on_request_body(&mut self, body: Vec<u8>) -> Step {
        match std::mem::replace(&mut self.waiting, Waiting::Nothing) {
            Waiting::TokenForm => self.form_read(body),
            _ => self.out_of_order("a request body"),
        }
    }

    pub fn on_response(&mut self, head: Response<()>) -> Step {
        self.upstream_status = Some(head.status());
        match std::mem::replace(&mut self.waiting, Waiting::Nothing) {
            Waiting::RegistryAnswer {
                headers,
                authorization,
                hop,
            } => self.registry_answered(head, headers, authorization, hop),
            Waiting::RealmDiscovery(req) => self.realm_discovered(head, req),
            Waiting::RepositoryChallenge(req) => self.repository_challenged(head, req),
            Waiting::Token { request } => self.token_issued(head, request),
            Waiting::OwnToken { scope } => self.own_token_answered(head, scope),
            Waiting::HopToken => self.hop_token_answered(head),
            _ => self.out_of_order("a response"),
        }
    }

    pub fn on_body(&mut self, body: Vec<u8>) -> Step {
        match std::mem::replace(&mut self.waiting, Waiting::Nothing) {
            Waiting::ListingBody { head } => self.listing_read(head, body),
            Waiting::ErrorBody { head } => self.error_read(head, Some(&body)),
            Waiting::OwnTokenBody { scope } => self.own_token_read(body, scope),
            Waiting::HopTokenBody => self.hop_token_read(body),
            _ => self.out_of_order("a body"),
        }
    }

    pub fn on_failure(&mut self, failure: Failure) -> Step {
        match std::mem::replace(&mut self.waiting, Waiting::Nothing) {
            // The code is nice to have; the status alone still makes the error.
            Waiting::ErrorBody { head } => self.error_read(head, None),
            Waiting::TokenForm => self.error(OciError::unsupported(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the token request is too large",
            )),
            _ => {
                let origin = self.current.as_ref().and_then(Origin::of_url);
                let timeout = self.route().map(|r| r.timeout).unwrap_or_default();
                let e = failure.to_error(self.role, origin.as_ref(), timeout);
                self.error(e)
            }
        }
    }

    fn registry_answered(
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
        }
        let anonymous = !self.client_headers.contains_key(header::AUTHORIZATION);
        if self.endpoint == Some(Endpoint::Base) && status.is_success() && anonymous {
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

    fn redirect(
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
        let target = self
            .current
            .as_ref()
            .zip(location.to_str().ok())
            .and_then(|(base, l)| base.join(l).ok());
        let Some(target) = target else {
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
        // Another host never sees the client's credentials, nor more of its headers than a
        // download needs.
        let cdn_headers = headers::cdn_request(&self.client_headers);
        self.hop = Some(Pending {
            method,
            url: target,
            headers: cdn_headers,
        });
        self.headers_for_redirects = headers;
        self.send_hop(None)
    }

    /// Sends the request to the host a redirect led to, never with the client's credentials.
    fn send_hop(&mut self, authorization: Option<HeaderValue>) -> Step {
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
            h.url,
            h.headers,
            authorization,
            Vec::new(),
        )
    }

    /// A host a redirect led to asks for a token of its own (registry.k8s.io sends clients to
    /// Artifact Registry, which wants an anonymous one): the proxy gets it, without any
    /// credentials, from a realm on a host the route may follow redirects to; once.
    fn hop_challenged(&mut self, head: &Response<()>) -> Option<Step> {
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

    fn hop_token_answered(&mut self, head: Response<()>) -> Step {
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

    fn hop_token_read(&mut self, body: Vec<u8>) -> Step {
        match upstream_token::Token::from_response(&body, self.now) {
            Some(t) => self.send_hop(upstream_token::bearer(&t.token)),
            None => self.error(
                OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "the upstream's storage sent no token",
                )
                .because("redirect target's realm answer without a token"),
            ),
        }
    }

    fn listing_read(&mut self, head: Response<()>, body: Vec<u8>) -> Step {
        let rewritten = match self.endpoint {
            Some(Endpoint::Catalog) => listing::client_catalog_body(&body, &self.names),
            _ => listing::client_tags_body(&body, &self.names).map(|b| (b, false)),
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
        if past_end {
            parts.headers.remove(header::LINK);
        }
        let mut draft = Draft::made(parts.status, bytes, "application/json");
        draft.headers = parts.headers;
        self.reply(draft)
    }

    fn error_read(&mut self, head: Response<()>, body: Option<&[u8]>) -> Step {
        let Some(endpoint) = self.endpoint.as_ref() else {
            return self.error(OciError::internal("no endpoint"));
        };
        let e = upstream_error::client_error(head.status(), body, endpoint);
        self.cause = e.cause.clone();
        let (parts, ()) = head.into_parts();
        let mut draft = Draft::error(&e);
        draft.headers = parts.headers;
        self.reply(draft)
    }

    fn token_request(&mut self, req: TokenRequest) -> Step {
        let route = match self.token_route(&req) {
            Ok(Some(route)) => route,
            Ok(None) => return self.anonymous_token(),
            Err(e) => return self.error(e),
        };
        let authenticates_itself = route.credentials.is_some();
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
        self.probe("/v2/", None, Waiting::RealmDiscovery(req))
    }

    /// The route a token request is for: the one serving every repository its scopes name
    /// (or containerd's `ns`), else the host's own. `None`: nothing upstream to ask.
    fn token_route(&self, req: &TokenRequest) -> Result<Option<Route>, OciError> {
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
                return Ok(None);
            }
            return routes
                .select(&host, None, self.ns.as_deref())
                .cloned()
                .map(Some);
        }
        let mut chosen: Option<&Route> = None;
        for name in &names {
            let route = routes.select(&host, Some(name), self.ns.as_deref())?;
            if chosen.is_some_and(|c| c.name != route.name) {
                return Err(OciError::unsupported(
                    StatusCode::BAD_REQUEST,
                    "the scopes name repositories of different registries",
                ));
            }
            chosen = Some(route);
        }
        Ok(chosen.cloned())
    }

    /// An anonymous GET to the registry, to learn how it authenticates.
    fn probe(&mut self, path: &str, query: Option<&str>, waiting: Waiting) -> Step {
        let Some(url) = self.upstream_url(path, query) else {
            return self.error(OciError::internal("no route"));
        };
        self.waiting = waiting;
        let no_headers = HeaderMap::new();
        self.send(
            Role::Registry,
            Method::GET,
            url,
            no_headers,
            None,
            Vec::new(),
        )
    }

    fn form_read(&mut self, body: Vec<u8>) -> Step {
        let auth = self.client_headers.get(header::AUTHORIZATION).cloned();
        self.token_request(TokenRequest::new(true, &body, auth.as_ref()))
    }

    fn realm_discovered(&mut self, head: Response<()>, req: TokenRequest) -> Step {
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

    fn repository_challenged(&mut self, head: Response<()>, req: TokenRequest) -> Step {
        if head.status() == StatusCode::UNAUTHORIZED {
            return self.authenticate(&challenge::from_headers(head.headers()), req);
        }
        if !req.offers_credentials() {
            return self.anonymous_token();
        }
        self.error(
            credentials_unused("the upstream registry asks for no credentials for this repository")
                .because(format!("repository probe answered {}", head.status())),
        )
    }

    /// Sends the token request to the upstream's Bearer realm.
    fn authenticate(&mut self, challenges: &[Challenge], req: TokenRequest) -> Step {
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

    fn send_token(
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

    fn token_issued(&mut self, head: Response<()>, request: Request<Vec<u8>>) -> Step {
        let status = head.status();
        if status.is_success() {
            return self.reply(Draft::upstream(head));
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
            return self.error(e);
        }
        self.error(self.unexpected(status))
    }

    /// A realm that redirects is followed, only to a realm origin configuration allows.
    fn token_redirect(&mut self, head: &Response<()>, request: Request<Vec<u8>>) -> Step {
        let target = self
            .current
            .as_ref()
            .zip(
                head.headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok()),
            )
            .and_then(|(base, l)| base.join(l).ok())
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

    fn anonymous_token(&mut self) -> Step {
        let draft = Draft::made(
            StatusCode::OK,
            token::anonymous_token_json(),
            "application/json",
        );
        self.reply(draft)
    }

    fn upstream_url(&self, path: &str, query: Option<&str>) -> Option<url::Url> {
        let mut url = self.route()?.upstream_url.clone();
        url.set_path(path);
        url.set_query(query);
        Some(url)
    }

    fn send(
        &mut self,
        role: Role,
        method: Method,
        url: url::Url,
        mut headers: HeaderMap,
        auth: Option<HeaderValue>,
        body: Vec<u8>,
    ) -> Step {
        // The last guard of "no request reaches a host configuration did not name".
        let allowed = Origin::of_url(&url)
            .is_some_and(|o| self.route().is_some_and(|r| r.allows_destination(&o)));
        if !allowed {
            return self.error(OciError::internal("destination outside configuration"));
        }
        if let Some(a) = auth {
            headers.insert(header::AUTHORIZATION, a);
        }
        if !body.is_empty() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let Ok(uri) = url.as_str().parse() else {
            return self.error(OciError::internal("unrepresentable upstream URL"));
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.headers_mut() = headers;
        *req.uri_mut() = uri;
        self.current = Some(url);
        self.role = role;
        Step::Send(req)
    }

    fn method_not_allowed(&mut self, method: &Method) -> Step {
        let e = OciError::unsupported(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not supported: this registry proxy is read-only"),
        );
        self.cause = Some(e.message.clone());
        let allow = if self.endpoint == Some(Endpoint::Token) {
            "GET, HEAD, POST"
        } else {
            "GET, HEAD"
        };
        let draft = Draft::error(&e).with_header(header::ALLOW, HeaderValue::from_static(allow));
        self.reply(draft)
    }

    fn unexpected(&self, status: StatusCode) -> OciError {
        OciError::unavailable(
            StatusCode::BAD_GATEWAY,
            "the upstream registry failed during authentication",
        )
        .because(format!("upstream answered {status} during authentication"))
    }

    fn out_of_order(&mut self, what: &str) -> Step {
        self.error(OciError::internal(format!("unexpected {what}")))
    }

    fn error(&mut self, e: OciError) -> Step {
        self.cause = Some(match &e.cause {
            Some(c) => format!("{} ({c})", e.message),
            None => e.message.clone(),
        });
        self.reply(Draft::error(&e))
    }

    /// Every answer leaves through here.
    fn reply(&mut self, draft: Draft) -> Step {
        self.waiting = Waiting::Nothing;
        let realm = match (&self.public, &self.ns) {
            (Some(p), Some(ns)) => format!("{p}{}?ns={ns}", crate::endpoint::TOKEN_PATH),
            (Some(p), None) => format!("{p}{}", crate::endpoint::TOKEN_PATH),
            _ => String::new(),
        };
        let ctx = reply::Context {
            public: self.public.as_ref(),
            realm,
            upstream: self.route.as_ref().map(|r| &r.upstream),
            names: &self.names,
            endpoint: self.endpoint.as_ref(),
            head_only: self.head_only,
        };
        Step::Reply(reply::finish(&ctx, draft))
    }
}

/// Credentials were offered where the upstream asks for none: refused, never dropped for an
/// anonymous token.
fn credentials_unused(message: &str) -> OciError {
    OciError::unsupported(StatusCode::BAD_REQUEST, message)
}

fn clone_request(r: &Request<Vec<u8>>) -> Request<Vec<u8>> {
    let mut c = Request::new(r.body().clone());
    *c.method_mut() = r.method().clone();
    *c.uri_mut() = r.uri().clone();
    *c.headers_mut() = r.headers().clone();
    c
}

#[cfg(test)]
mod tests;
