//! One client request, from arrival to response, as a state machine over `http` types.
//!
//! The runtime adapter drives it, step by step (see `Step`), and performs only what a step
//! asks: it never decides a status, a header or a destination itself. Each state is named for
//! what the exchange waits for, and has one handler.

use crate::anonymous_token;
use crate::challenge::{self, Challenge};
use crate::config::{Config, ConfigError};
use crate::endpoint::Endpoint;
use crate::error::OciError;
use crate::headers;
use crate::home;
use crate::listing;
use crate::names::NameMap;
use crate::origin::Origin;
use crate::reply::{self, ClientResponse, Draft, DraftBody};
use crate::routes::{BlobRedirect, Credentials, Logins, Route, RouteAccess};
use crate::scope;
use crate::store_secret::StoreSecret;
use crate::target::Target;
use crate::token::{self, TokenRequest};
use crate::upstream_error::{self, MAX_ERROR_BODY};
use crate::upstream_failure::{Failure, Role};
use crate::upstream_token::{self, Realm};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
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
    /// Random bytes: the store's secret, should this request be the one to make it.
    pub random: [u8; 32],
}

/// A change to the key-value store the exchange asks for. The adapter performs the writes
/// `take_writes` returns before it performs each step; a write that fails is lost, never an
/// error (the store only saves upstream requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Set(String, Vec<u8>),
    Delete(String),
    /// Put `entry` into the bucket at `key` (read it, `cache::merge`, write it back), by
    /// compare-and-swap where the store has it, so that no concurrent write is lost.
    Merge {
        key: String,
        entry: Vec<u8>,
        ways: usize,
    },
    /// Set `key` to `value` unless it holds one (compare-and-swap on "absent").
    Create {
        key: String,
        value: Vec<u8>,
    },
    /// Count one pull of `repository` by `user` in the day slot at `key` (`pull_stats::add`,
    /// by compare-and-swap: no concurrent count is lost; `mark`, this count's own, tells a
    /// retry that the count already landed).
    Count {
        key: String,
        now: u64,
        repository: String,
        user: String,
        mark: String,
    },
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
    /// As `Send`, with the client's request body as the body, streamed as it comes (a blob a
    /// client pushes): once only.
    Stream(Request<()>),
    /// Read the body of the response last handed to `on_response`, at most `limit` bytes,
    /// and call `on_body`, or `on_failure`.
    ReadResponse { limit: usize },
    /// Read these keys from the key-value store and call `on_loaded` with their values, in
    /// order (`None` for a missing key, or when the store cannot be reached).
    Load(Vec<String>),
    /// Read these component variables and call `on_variables` with their values, in order
    /// (`None` for one that is not set): those only some requests need.
    Variables(Vec<&'static str>),
    /// Send this response and stop. `ClientBody::Upstream` is the body of the response last
    /// handed to `on_response`, streamed as it comes; `ClientBody::None` is a HEAD's answer:
    /// the head alone.
    Reply(ClientResponse),
}

/// What the exchange waits for; each variant has one handler.
#[derive(Debug)]
enum Waiting {
    Nothing,
    /// The store's secret, before anything else is read from the store (`secret_loaded`);
    /// `made`: read again after this request wrote one where none was kept.
    Secret {
        then: cached::Then,
        made: bool,
    },
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
    /// `/v2/`, for the route's realm before a streamed write (`own_realm_answered`).
    OwnRealm {
        scope: Option<String>,
    },
    /// An anonymous token for the host a redirect led to (`hop_token_answered`).
    HopToken,
    /// Its body (`hop_token_read`).
    HopTokenBody,
    /// What the store holds for the request (`cache_loaded`).
    CacheLookup(cached::Plan),
    /// The manifest a kept tag points at (`cached_tag_manifest_loaded`).
    CachedTagManifest {
        plan: cached::Plan,
        identity: String,
        digest: String,
    },
    /// A manifest's body, to keep and to answer with (`manifest_read`).
    ManifestBody {
        head: Response<()>,
        plan: cached::Plan,
    },
    /// What the store knows for a token request (`token_looked_up`).
    TokenLookup(TokenRequest),
    /// The client's manifest, to push (`manifest_put_read`).
    ManifestPut,
    /// The upstream's answer to a write (`write_answered`).
    WriteAnswer,
    /// The `users` variable (`users_read`).
    Users(users::UsersThen),
    /// A route's registry, asked by `/-/health?deep=1` (`health_answered`).
    Health {
        index: usize,
        found: serde_json::Map<String, serde_json::Value>,
    },
    /// The day slots of the pull counts (`stats_loaded`).
    Stats,
    /// The realm's token, to check, and to keep when anonymous (`token_read`).
    TokenBody {
        head: Response<()>,
    },
}

/// The registry request the route's own credentials are being got for, to send (again).
#[derive(Debug, Clone)]
struct Pending {
    method: Method,
    target: Target,
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
    /// The scope the proxy's challenge carried, named by its realm on a shared host.
    challenge_scope: Option<String>,
    endpoint: Option<Endpoint>,
    method: Method,
    head_only: bool,
    client_headers: HeaderMap,
    waiting: Waiting,
    /// The upstream request in flight: where it went, for its errors and its redirects.
    current: Option<Target>,
    role: Role,
    hops: u8,
    /// The status of the last upstream response, for the log.
    pub upstream_status: Option<StatusCode>,
    /// Why the answer is an error, for the log only.
    cause: Option<String>,
    now: u64,
    writes: Vec<Write>,
    pending: Option<Pending>,
    /// The upstream path and query of the registry request, until it is built (`pending`).
    target: Option<(String, Option<String>)>,
    /// Whether the route's token came from the store.
    own_cached: bool,
    /// Whether the route's credentials have been presented afresh: once per request.
    own_fresh: bool,
    /// The realm the store held for the route, while it has not been learned afresh: a realm
    /// that fails, or names another realm in its 401, is learned again, once.
    own_realm_kept: Option<Realm>,
    /// The request to the host a redirect led to, to send (again, with a token).
    hop: Option<Pending>,
    /// The registry headers, for a redirect the hop answers with.
    headers_for_redirects: HeaderMap,
    hop_token_tried: bool,
    /// The `Authorization` the client's request takes upstream.
    client_authorization: Option<HeaderValue>,
    /// What the store is asked for and told about this request.
    cache: Option<cached::Plan>,
    /// Whether what the upstream answers may be kept: the request is one any client of the
    /// route could make (anonymous, or with the route's own credentials).
    storable: bool,
    /// For a token request without credentials: its entry among the anonymous tokens.
    anonymous_identity: Option<String>,
    /// The store's secret, once read (see `cached::Then`).
    secret: Option<StoreSecret>,
    random: [u8; 32],
    /// The client's Bearer token, when it is a marked anonymous one (`anonymous_token`).
    marked: Option<anonymous_token::Marked>,
    /// The blob request in flight follows a redirect the store kept.
    kept_redirect: bool,
    /// The upstream request in flight, and whether it is already a second attempt: one whose
    /// connection closed before any answer (a pooled connection the server had just closed)
    /// goes once more.
    in_flight: Option<Request<Vec<u8>>>,
    resent: bool,
    /// A token request's credentials the route did not take, and the routes that share the
    /// host for other registries (why): its realm is told nothing, and the client is.
    logins_dropped: Option<Vec<String>>,
    /// The proxy's user the request is for, once known (a login, or their token).
    user: Option<String>,
    /// The claims of the user's token, on a `users` route.
    claims: Option<crate::proxy_token::Claims>,
    /// A manifest GET's pull event, for the log.
    pull: Option<crate::pull_stats::Event>,
    /// Writes made after the client has its answer (the pull counts).
    deferred: Vec<Write>,
    /// A write's body, while the request is a write (`push`).
    write: Option<push::WriteBody>,
}

impl Exchange {
    pub fn start(config: Config, mut req: Incoming) -> (Exchange, Step) {
        let head_only = req.method == Method::HEAD;
        let public = crate::public_url::public_origin(
            &config,
            &req.headers,
            req.scheme.as_deref(),
            req.authority.as_deref(),
        );
        let endpoint = Endpoint::parse(&req.path);
        // Each the first of its name, read in one pass over the query.
        let (mut ns, mut challenge_scope) = (None, None);
        for (k, v) in url::form_urlencoded::parse(req.query.as_deref().unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "ns" if ns.is_none() => ns = Some(v.to_ascii_lowercase()),
                challenge::CHALLENGE_SCOPE if challenge_scope.is_none() => {
                    challenge_scope = Some(v.into_owned())
                }
                _ => {}
            }
        }
        let mut ex = Exchange {
            public: public.as_ref().ok().cloned(),
            config,
            route: None,
            names: NameMap::default(),
            ns,
            challenge_scope,
            endpoint: endpoint.as_ref().ok().cloned(),
            method: req.method.clone(),
            head_only,
            // Kept once, here: the request's own copy is left empty.
            client_headers: std::mem::take(&mut req.headers),
            waiting: Waiting::Nothing,
            current: None,
            role: Role::Registry,
            hops: 0,
            upstream_status: None,
            cause: None,
            now: req.now,
            writes: Vec::new(),
            pending: None,
            target: None,
            own_cached: false,
            own_fresh: false,
            own_realm_kept: None,
            hop: None,
            headers_for_redirects: HeaderMap::new(),
            hop_token_tried: false,
            client_authorization: None,
            cache: None,
            storable: false,
            anonymous_identity: None,
            secret: None,
            random: req.random,
            marked: None,
            kept_redirect: false,
            in_flight: None,
            resent: false,
            logins_dropped: None,
            user: None,
            claims: None,
            pull: None,
            deferred: Vec::new(),
            write: None,
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
            ns: None,
            upstream: None,
            names: &names,
            endpoint: None,
            head_only,
            shared_host: false,
            write: false,
            cors: None,
            cors_listed: false,
        };
        reply::finish(&ctx, Draft::error(&OciError::config(e.to_string())))
    }

    /// How long the upstream may take to connect, to answer and between bytes.
    pub fn timeout(&self) -> std::time::Duration {
        if let Some(r) = self.route() {
            return r.timeout;
        }
        // No route chosen yet (a token form names it): the shortest of the host's.
        let host = self.public.as_ref().map_or("", |p| p.host.as_str());
        let routes = self.config.routes.serving(host);
        routes
            .map(|r| r.timeout)
            .min()
            .unwrap_or(crate::config::DEFAULT_TIMEOUT)
    }

    /// The key-value writes to perform before the next step.
    pub fn take_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.writes)
    }

    /// The writes to perform once the client has its answer.
    pub fn take_deferred(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.deferred)
    }

    /// A manifest GET's pull event, as one JSON line for the log.
    pub fn pull_event(&self) -> Option<String> {
        self.pull.as_ref().map(crate::pull_stats::Event::line)
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
        let preflight = req.method == Method::OPTIONS
            && self
                .client_headers
                .contains_key("access-control-request-method");
        if preflight {
            return self.preflight(&endpoint);
        }
        match endpoint {
            Endpoint::Token if req.method == Method::POST => {
                self.read_request(Waiting::TokenForm, token::MAX_FORM_BYTES)
            }
            Endpoint::Token if read_only => {
                let query = req.query.unwrap_or_default();
                self.token_request_from(false, query.as_bytes())
            }
            Endpoint::Token => self.method_not_allowed(&req.method),
            Endpoint::Stats | Endpoint::Health | Endpoint::Home if !read_only => {
                self.method_not_allowed(&req.method)
            }
            Endpoint::Stats => self.admin_only(),
            Endpoint::Health => {
                let query = req.query.as_deref().unwrap_or("");
                let deep = url::form_urlencoded::parse(query.as_bytes())
                    .any(|(k, v)| k == "deep" && matches!(&*v, "1" | "true"));
                self.health(deep)
            }
            Endpoint::Home => match self.public.clone() {
                Some(public) => {
                    let draft = home::draft(&self.config, &public);
                    self.reply(draft)
                }
                None => self.error(OciError::internal("no public origin")),
            },
            endpoint => self.api_request(endpoint, req, read_only),
        }
    }

    /// A request to the distribution API: `/v2/` of a host several registries share is the
    /// proxy's own; the rest goes to the route that serves it, as a read or a write.
    fn api_request(&mut self, endpoint: Endpoint, req: Incoming, read_only: bool) -> Step {
        let host = self
            .public
            .as_ref()
            .map(|p| p.host.clone())
            .unwrap_or_default();
        if endpoint == Endpoint::Base && self.ns.is_none() && self.config.routes.paths_only(&host) {
            if !read_only {
                return self.method_not_allowed(&req.method);
            }
            // Several registries by path: none speaks for the domain. Clients take the
            // challenge of `/v2/` for every repository, so it is the proxy's, and token
            // requests find their route by the scope's repository. A login (which comes back
            // with its token) is checked by no registry.
            if self.client_headers.contains_key(header::AUTHORIZATION) {
                // Where the proxy's users log in, their token is checked here.
                if self.config.routes.has_users(&host) {
                    if let Err(refused) = self.proxy_token(None) {
                        return self.error(refused);
                    }
                }
                let ok = Draft::made(StatusCode::OK, b"{}".to_vec(), "application/json");
                return self.reply(ok);
            }
            return self.error(OciError::unauthorized("authentication required"));
        }
        let selected = self
            .config
            .routes
            .select(&host, endpoint.name(), self.ns.as_deref());
        match selected.cloned() {
            Ok(route) => {
                self.use_route(route);
                let upload = matches!(endpoint, Endpoint::Upload { .. });
                if read_only && !upload {
                    self.registry_request(&endpoint, req)
                } else {
                    self.write_request(&endpoint, req)
                }
            }
            Err(e) => self.error(e),
        }
    }

    fn use_route(&mut self, route: Route) {
        // With `ns`, the route was chosen as that registry's mirror.
        self.names = route.names(self.ns.is_some());
        self.route = Some(route);
    }

    /// The route in use; every upstream request has one.
    pub fn route(&self) -> Option<&Route> {
        self.route.as_ref()
    }

    pub fn on_loaded(&mut self, values: Vec<Option<Vec<u8>>>) -> Step {
        match std::mem::replace(&mut self.waiting, Waiting::Nothing) {
            Waiting::Secret { then, made } => self.secret_loaded(then, made, values),
            Waiting::OwnCredentials { scope } => self.credentials_loaded(values, scope),
            Waiting::CacheLookup(plan) => self.cache_loaded(plan, values),
            Waiting::TokenLookup(req) => self.token_looked_up(req, values),
            Waiting::CachedTagManifest {
                plan,
                identity,
                digest,
            } => self.cached_tag_manifest_loaded(plan, identity, &digest, values),
            Waiting::Stats => self.stats_loaded(values),
            _ => self.out_of_order("stored values"),
        }
    }

    pub fn on_variables(&mut self, values: Vec<Option<String>>) -> Step {
        match std::mem::replace(&mut self.waiting, Waiting::Nothing) {
            Waiting::Users(then) => self.users_read(then, values),
            _ => self.out_of_order("variables"),
        }
    }

    pub fn on_request_body(&mut self, body: Vec<u8>) -> Step {
        match std::mem::replace(&mut self.waiting, Waiting::Nothing) {
            Waiting::TokenForm => self.form_read(body),
            Waiting::ManifestPut => self.manifest_put_read(body),
            _ => self.out_of_order("a request body"),
        }
    }

    pub fn on_response(&mut self, head: Response<()>) -> Step {
        self.upstream_status = Some(head.status());
        // `http` takes 100-999; hyper hands on a 101 (its 1xx informational answers it skips).
        // Neither is an answer a client could take, nor one to repeat the request for.
        let status = head.status().as_u16();
        if !(200..=599).contains(&status) {
            return self.on_failure(Failure::Malformed(format!("status {status}")));
        }
        self.in_flight = None;
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
            Waiting::OwnRealm { scope } => self.own_realm_answered(head, scope),
            Waiting::HopToken => self.hop_token_answered(head),
            Waiting::Health { index, found } => {
                self.health_answered(index, found, Some(head.status()))
            }
            Waiting::WriteAnswer => self.write_answered(head),
            _ => self.out_of_order("a response"),
        }
    }

    pub fn on_body(&mut self, body: Vec<u8>) -> Step {
        match std::mem::replace(&mut self.waiting, Waiting::Nothing) {
            Waiting::ListingBody { head } => self.listing_read(head, body),
            Waiting::ErrorBody { head } => self.error_read(head, Some(&body)),
            Waiting::OwnTokenBody { scope } => self.own_token_read(body, scope),
            Waiting::HopTokenBody => self.hop_token_read(body),
            Waiting::ManifestBody { head, plan } => self.manifest_read(head, plan, body),
            Waiting::TokenBody { head } => self.token_read(head, body),
            _ => self.out_of_order("a body"),
        }
    }

    pub fn on_failure(&mut self, failure: Failure) -> Step {
        let waiting = std::mem::replace(&mut self.waiting, Waiting::Nothing);
        // Before any answer, the connection closed: upstreams (and the load balancers in front
        // of them) close idle keep-alive connections, and a request the runtime sent on one
        // just then meets the close (Spin 4.0.2 and the test host report it as a protocol
        // error, hyper's "connection closed before message completed"). The request is the
        // proxy's to repeat: its body is held. Not after a timeout: a second one would outlast
        // the platform's limit.
        let request = self.in_flight.take();
        let closed = matches!(failure, Failure::Reset | Failure::Other(_));
        if let (true, Some(r), false) = (closed, request, self.resent) {
            self.resent = true;
            self.waiting = waiting;
            self.in_flight = Some(clone_request(&r));
            return Step::Send(r);
        }
        match waiting {
            // The code is nice to have; the status alone still makes the error.
            Waiting::ErrorBody { head } => self.error_read(head, None),
            Waiting::ManifestBody { head, .. } => self.manifest_cut(head, failure),
            Waiting::TokenForm if failure == Failure::TooLarge => {
                self.error(OciError::unsupported(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the token request is too large",
                ))
            }
            Waiting::ManifestPut if failure == Failure::TooLarge => self.error(OciError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                crate::error::ErrorCode::ManifestInvalid,
                "the manifest is larger than a registry takes (4 MiB)",
            )),
            Waiting::Health { index, found } => self.health_answered(index, found, None),
            _ => {
                let origin = self.current.as_ref().and_then(Target::origin);
                let e = failure.to_error(self.role, origin.as_ref(), self.timeout());
                self.error(e)
            }
        }
    }

    /// A redirect's `Location`, resolved against the upstream request in flight; `None` for
    /// a backslash or a control character, which no URI has. url reads a `\` as `/`, as
    /// browsers do, so `/\other/x` (a path on the upstream to RFC 3986 and Go's clients) would
    /// become another host.
    fn resolve_location(&self, location: &HeaderValue) -> Option<url::Url> {
        let text = location.to_str().ok()?;
        if text.bytes().any(|b| b == b'\\' || b < b' ' || b == 0x7f) {
            return None;
        }
        self.current.as_ref()?.url()?.join(text).ok()
    }

    /// The head of a request to `target`, with `auth`; an error where `target` is outside
    /// what configuration names: the last guard of "no request reaches a host configuration
    /// did not name".
    fn request_head(
        &mut self,
        role: Role,
        method: Method,
        target: Target,
        mut headers: HeaderMap,
        auth: Option<HeaderValue>,
    ) -> Result<Request<()>, OciError> {
        let allowed = target
            .origin()
            .is_some_and(|o| self.route().is_some_and(|r| r.allows_destination(&o)));
        if !allowed {
            return Err(OciError::internal("destination outside configuration"));
        }
        if let Some(a) = auth {
            headers.insert(header::AUTHORIZATION, a);
        }
        let Some(uri) = target.uri() else {
            // Too long for a URI (`http` takes 64 KiB): a client's own (thousands of token
            // scopes, each given the prefix), or an upstream's redirect.
            return Err(if self.hops == 0 {
                OciError::unsupported(
                    StatusCode::URI_TOO_LONG,
                    "the request is too long to send to the upstream",
                )
            } else {
                OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "the upstream redirected to a URL too long to follow",
                )
            }
            .because("unrepresentable upstream URL"));
        };
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.headers_mut() = headers;
        *req.uri_mut() = uri;
        self.current = Some(target);
        self.role = role;
        Ok(req)
    }

    fn send(
        &mut self,
        role: Role,
        method: Method,
        target: impl Into<Target>,
        mut headers: HeaderMap,
        auth: Option<HeaderValue>,
        body: Vec<u8>,
    ) -> Step {
        // A write says its length, empty or not (without one the runtime sends it chunked).
        if !body.is_empty() || !matches!(method, Method::GET | Method::HEAD) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let head = match self.request_head(role, method, target.into(), headers, auth) {
            Ok(h) => h,
            Err(e) => return self.error(e),
        };
        let (parts, ()) = head.into_parts();
        let req = Request::from_parts(parts, body);
        self.in_flight = Some(clone_request(&req));
        self.resent = false;
        Step::Send(req)
    }

    /// Like `send`, for a request whose body is the client's, streamed: never sent twice.
    fn send_stream(
        &mut self,
        method: Method,
        target: Target,
        headers: HeaderMap,
        auth: Option<HeaderValue>,
    ) -> Step {
        match self.request_head(Role::Registry, method, target, headers, auth) {
            Ok(head) => {
                self.in_flight = None;
                Step::Stream(head)
            }
            Err(e) => self.error(e),
        }
    }

    /// Reads the client's body, at most `limit` bytes, for `waiting`. A body declared longer
    /// is refused before it is read: a client that waits with `Expect: 100-continue` is told
    /// at once, not asked for the bytes first.
    fn read_request(&mut self, waiting: Waiting, limit: usize) -> Step {
        self.waiting = waiting;
        let declared = self
            .client_headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return self.on_failure(Failure::TooLarge);
        }
        Step::ReadRequest { limit }
    }

    fn method_not_allowed(&mut self, method: &Method) -> Step {
        let e = OciError::unsupported(
            StatusCode::METHOD_NOT_ALLOWED,
            match self.route() {
                Some(r) if !r.push => {
                    format!("{method} is not supported here: pushes are not enabled")
                }
                _ => format!("{method} is not supported here"),
            },
        );
        self.cause = Some(e.message.clone());
        let allow =
            HeaderValue::from_str(&self.allowed_methods()).unwrap_or(HeaderValue::from_static(""));
        let draft = Draft::error(&e).with_header(header::ALLOW, allow);
        self.reply(draft)
    }

    /// What a 405's `Allow` names: the methods the endpoint takes on this route. An upload's
    /// path takes only writes, so on a route without pushes it names none (RFC 9110 10.2.1:
    /// "disabled by configuration").
    fn allowed_methods(&self) -> String {
        let endpoint = self.endpoint.as_ref();
        let reads = !matches!(endpoint, Some(Endpoint::Upload { .. }));
        let methods = [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ];
        let taken = |m: &Method| match endpoint {
            _ if reads && matches!(*m, Method::GET | Method::HEAD) => true,
            Some(Endpoint::Token) => *m == Method::POST,
            Some(e) => self.write_action(m, e).is_some(),
            None => false,
        };
        let named: Vec<&str> = methods
            .iter()
            .filter(|m| taken(m))
            .map(Method::as_str)
            .collect();
        named.join(", ")
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

    /// An upstream's error in the client's words, with the upstream's headers for the reply's
    /// allowlist to choose from (a 429's Retry-After and RateLimit-*).
    fn upstream_error(&mut self, e: OciError, head: Response<()>) -> Step {
        self.cause = e.cause.clone();
        let mut draft = Draft::error(&e);
        draft.headers = head.into_parts().0.headers;
        self.reply(draft)
    }

    /// Every answer leaves through here.
    fn reply(&mut self, draft: Draft) -> Step {
        self.waiting = Waiting::Nothing;
        let cors = self.cors_origin();
        let preflight = self.method == Method::OPTIONS && draft.status == StatusCode::NO_CONTENT;
        let methods = match self.route() {
            Some(r) if preflight && (r.push || r.delete) => {
                Some("GET, HEAD, POST, PUT, PATCH, DELETE")
            }
            _ if preflight => Some("GET, HEAD"),
            _ => None,
        };
        let ctx = reply::Context {
            public: self.public.as_ref(),
            ns: self.ns.as_deref(),
            upstream: self.route.as_ref().map(|r| &r.upstream),
            names: &self.names,
            endpoint: self.endpoint.as_ref(),
            head_only: self.head_only,
            shared_host: self
                .public
                .as_ref()
                .is_some_and(|p| self.config.routes.shared(&p.host)),
            write: self.write.is_some(),
            cors: cors.as_ref().map(|origin| reply::Cors {
                origin,
                preflight: methods,
            }),
            cors_listed: self.cors_routes(|r| !r.cors.is_empty()),
        };
        let response = reply::finish(&ctx, draft);
        self.record_pull(response.status());
        Step::Reply(response)
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

mod cached;
mod cors;
mod own_credentials;
mod push;
mod registry;
mod token_endpoint;
mod users;

#[cfg(test)]
mod tests;
