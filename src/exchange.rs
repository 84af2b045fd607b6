//! One client request, from arrival to response, as a state machine over `http` types.
//!
//! The runtime adapter drives it: it performs each upstream request the exchange asks for
//! (`Step::Send`), hands back the response head (`on_response`), reads a body only when asked
//! (`Step::ReadBody` → `on_body`), and finally writes a complete response (`Step::Respond`) or
//! the head of one whose body it streams from the last upstream response (`Step::Stream`).

use crate::challenge::{self, Challenge};
use crate::config::{BlobRedirect, Config};
use crate::error::OciError;
use crate::listing;
use crate::names::NameMap;
use crate::origin::Origin;
use crate::route::{Route, TOKEN_PATH};
use crate::scope;
use crate::token::{self, TokenRequest};
use crate::{headers, home, link};
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
}

impl Incoming {
    /// Whether the adapter must read the request body (only the token endpoint's form).
    pub fn wants_body(&self) -> bool {
        self.method == Method::POST && self.path == TOKEN_PATH
    }
}

#[derive(Debug)]
pub enum Step {
    Send(Request<Vec<u8>>),
    /// Read the body of the response just handed over, up to `limit` bytes, then `on_body`.
    ReadBody {
        limit: usize,
    },
    Respond(Response<Vec<u8>>),
    /// Respond with this head and the body of the last upstream response, streamed.
    Stream(Response<()>),
}

/// Why an upstream request produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Timeout(String),
    Unreachable(String),
    /// The runtime refused the destination (Spin's `allowed_outbound_hosts`).
    Denied(String),
    TooLarge,
}

#[derive(Debug)]
enum State {
    Done,
    /// A registry API request (or a redirect of one) is in flight.
    Registry {
        headers: HeaderMap,
        authorization: Option<HeaderValue>,
    },
    /// A listing body is being read to be rewritten.
    Listing {
        head: http::response::Parts,
    },
    /// `GET /v2/` on the upstream, to learn how it authenticates.
    TokenDiscover(TokenRequest),
    /// The upstream realm is issuing a token.
    TokenFetch,
    /// Basic credentials are being checked against the upstream.
    TokenBasicCheck {
        credentials: String,
        refresh: bool,
    },
}

pub struct Exchange {
    config: Config,
    public: Origin,
    names: NameMap,
    route: Route,
    head_only: bool,
    state: State,
    /// The URL of the upstream request in flight.
    current: Option<url::Url>,
    hops: u8,
    /// The status of the last upstream response, for the log.
    pub upstream_status: Option<StatusCode>,
}

impl Exchange {
    pub fn start(config: Config, req: Incoming, body: Vec<u8>) -> (Exchange, Step) {
        let names = NameMap::new(&config.repository_prefix, config.is_docker_hub());
        let head_only = req.method == Method::HEAD;
        let public = crate::public_url::public_origin(
            &config,
            &req.headers,
            req.scheme.as_deref(),
            req.authority.as_deref(),
        );
        let route = public.clone().and_then(|_| Route::parse(&req.path));
        let mut ex = Exchange {
            public: public.clone().unwrap_or_else(|_| config.upstream.clone()),
            config,
            names,
            route: route.clone().unwrap_or(Route::Home),
            head_only,
            state: State::Done,
            current: None,
            hops: 0,
            upstream_status: None,
        };
        let step = match route {
            Err(e) => ex.error(e),
            Ok(_) => ex.begin(req, body),
        };
        (ex, step)
    }

    fn begin(&mut self, req: Incoming, body: Vec<u8>) -> Step {
        let read_only = matches!(req.method, Method::GET | Method::HEAD);
        match self.route.clone() {
            Route::Token if read_only || req.method == Method::POST => {
                let form = req.method == Method::POST;
                let encoded = if form {
                    body
                } else {
                    req.query.unwrap_or_default().into_bytes()
                };
                let auth = req.headers.get(header::AUTHORIZATION);
                let token_req = TokenRequest::new(form, &encoded, auth);
                if let Some(name) = scope::first_invalid_name(token_req.scopes()) {
                    let e =
                        OciError::name_invalid(format!("invalid repository name in scope: {name}"));
                    return self.error(e);
                }
                self.state = State::TokenDiscover(token_req);
                self.send(
                    Method::GET,
                    self.upstream_url("/v2/", None),
                    HeaderMap::new(),
                    None,
                    Vec::new(),
                )
            }
            _ if !read_only => self.method_not_allowed(&req.method),
            Route::Upload { .. } => self.method_not_allowed(&req.method),
            Route::Home => {
                Step::Respond(home::response(&self.config, &self.public, self.head_only))
            }
            Route::Catalog if self.config.is_docker_hub() => self.error(OciError::unsupported(
                StatusCode::NOT_FOUND,
                "the upstream (Docker Hub) has no catalog",
            )),
            route => {
                let path = match route.name() {
                    Some(n) => route.with_name(self.names.to_upstream(n)).path(),
                    None => route.path(),
                };
                let query = listing::upstream_query(&route, req.query.as_deref(), &self.names);
                let headers = headers::upstream_request(&req.headers);
                let authorization =
                    token::upstream_authorization(req.headers.get(header::AUTHORIZATION));
                let url = self.upstream_url(&path, query.as_deref());
                self.state = State::Registry {
                    headers: headers.clone(),
                    authorization: authorization.clone(),
                };
                self.send(req.method, url, headers, authorization, Vec::new())
            }
        }
    }

    pub fn on_response(&mut self, head: Response<()>) -> Step {
        self.upstream_status = Some(head.status());
        match std::mem::replace(&mut self.state, State::Done) {
            State::Registry {
                headers,
                authorization,
            } => self.registry_response(head, headers, authorization),
            State::TokenDiscover(req) => self.token_discovered(head, req),
            State::TokenFetch => {
                let (mut parts, ()) = head.into_parts();
                parts.headers = headers::client_response(&parts.headers);
                parts.headers.remove(header::WWW_AUTHENTICATE);
                parts.headers.remove(header::SET_COOKIE);
                parts.headers.remove(header::LOCATION);
                Step::Stream(Response::from_parts(parts, ()))
            }
            State::TokenBasicCheck {
                credentials,
                refresh,
            } => match head.status() {
                s if s.is_success() => {
                    let body = token::token_json(&token::wrap_basic(&credentials), refresh, None);
                    Step::Respond(json_response(StatusCode::OK, body))
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    self.error(OciError::unauthorized("incorrect username or password"))
                }
                s => self.error(self.unexpected(s)),
            },
            State::Listing { .. } | State::Done => {
                self.error(OciError::config("exchange out of order"))
            }
        }
    }

    pub fn on_body(&mut self, body: Vec<u8>) -> Step {
        let State::Listing { mut head } = std::mem::replace(&mut self.state, State::Done) else {
            return self.error(OciError::config("exchange out of order"));
        };
        let rewritten = match self.route {
            Route::Catalog => listing::client_catalog_body(&body, &self.names),
            _ => listing::client_tags_body(&body, &self.names).map(|b| (b, false)),
        };
        let body = match rewritten {
            Some((b, past_end)) => {
                if past_end {
                    head.headers.remove(header::LINK);
                }
                b
            }
            None => body, // not the JSON we know: pass it as it came
        };
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Step::Respond(Response::from_parts(head, body))
    }

    pub fn on_failure(&mut self, failure: Failure) -> Step {
        self.state = State::Done;
        let target = self.current_origin();
        let e = match failure {
            Failure::Timeout(d) => OciError::unavailable(
                StatusCode::GATEWAY_TIMEOUT,
                format!("upstream {target} did not answer in time: {d}"),
            ),
            Failure::Unreachable(d) => OciError::unavailable(
                StatusCode::BAD_GATEWAY,
                format!("upstream {target} unreachable: {d}"),
            ),
            Failure::Denied(d) => OciError::unavailable(
                StatusCode::BAD_GATEWAY,
                format!("upstream {target} is not in allowed_outbound_hosts: {d}"),
            ),
            Failure::TooLarge => OciError::unavailable(
                StatusCode::BAD_GATEWAY,
                format!("upstream {target} sent a larger listing than the proxy rewrites"),
            ),
        };
        self.error(e)
    }

    fn registry_response(
        &mut self,
        head: Response<()>,
        headers: HeaderMap,
        auth: Option<HeaderValue>,
    ) -> Step {
        let status = head.status();
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            if let Some(location) = head.headers().get(header::LOCATION) {
                return self.redirect(head.clone(), location.clone(), headers, auth);
            }
        }
        let (mut parts, ()) = head.into_parts();
        parts.headers = headers::client_response(&parts.headers);
        self.rewrite_challenge(&mut parts.headers);
        if status == StatusCode::UNAUTHORIZED {
            // The upstream's error detail names repositories in upstream terms: replace it.
            let json = OciError::unauthorized("authentication required").json();
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(json.len()));
            let body = if self.head_only { Vec::new() } else { json };
            return Step::Respond(Response::from_parts(parts, body));
        }
        self.rewrite_links(&mut parts.headers);
        if let Route::Blob { digest, .. } = &self.route {
            // A CDN answers without it; the digest is the blob's name.
            if status.is_success() && !parts.headers.contains_key("docker-content-digest") {
                if let Ok(v) = HeaderValue::from_str(digest) {
                    parts.headers.insert("docker-content-digest", v);
                }
            }
        }
        let listing = matches!(self.route, Route::Tags { .. } | Route::Catalog);
        if listing && status == StatusCode::OK && !self.head_only && !self.names.is_identity() {
            self.state = State::Listing { head: parts };
            return Step::ReadBody {
                limit: listing::MAX_LISTING_BYTES,
            };
        }
        Step::Stream(Response::from_parts(parts, ()))
    }

    fn redirect(
        &mut self,
        head: Response<()>,
        location: HeaderValue,
        headers: HeaderMap,
        auth: Option<HeaderValue>,
    ) -> Step {
        let Some(base) = self.current.clone() else {
            return self.error(OciError::config("redirect without a request"));
        };
        let target = match location.to_str().ok().and_then(|l| base.join(l).ok()) {
            Some(t) => t,
            None => {
                return self.error(OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "upstream sent an invalid Location",
                ))
            }
        };
        let Some(origin) = Origin::of_url(&target) else {
            return self.error(OciError::unavailable(
                StatusCode::BAD_GATEWAY,
                "upstream redirected to a non-http URL",
            ));
        };
        if self.hops >= MAX_HOPS {
            return self.error(OciError::unavailable(
                StatusCode::BAD_GATEWAY,
                "upstream redirected too many times",
            ));
        }
        self.hops += 1;
        let method = if self.head_only {
            Method::HEAD
        } else {
            Method::GET
        };
        if origin == self.config.upstream {
            // The upstream's own host: the client may not reach it, so the proxy follows.
            self.state = State::Registry {
                headers: headers.clone(),
                authorization: auth.clone(),
            };
            return self.send(method, target, headers, auth, Vec::new());
        }
        if self.config.blob_redirect == BlobRedirect::Pass {
            let (mut parts, ()) = head.into_parts();
            parts.headers = headers::client_response(&parts.headers);
            if let Ok(v) = HeaderValue::from_str(target.as_str()) {
                parts.headers.insert(header::LOCATION, v);
            }
            return Step::Stream(Response::from_parts(parts, ()));
        }
        if !self.config.allows_redirect_target(&origin) {
            return self.error(OciError::unavailable(
                StatusCode::BAD_GATEWAY,
                format!("upstream redirected to {origin}, which upstream_cdn does not allow"),
            ));
        }
        // Another host never sees the client's credentials.
        self.state = State::Registry {
            headers: headers.clone(),
            authorization: None,
        };
        self.send(method, target, headers, None, Vec::new())
    }

    fn token_discovered(&mut self, head: Response<()>, req: TokenRequest) -> Step {
        let challenges = challenge::from_headers(head.headers());
        let status = head.status();
        if status.is_success() {
            let body = token::token_json(token::ANONYMOUS_TOKEN, false, None);
            return Step::Respond(json_response(StatusCode::OK, body));
        }
        if status != StatusCode::UNAUTHORIZED {
            return self.error(self.unexpected(status));
        }
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = bearer.param("realm").and_then(|r| url::Url::parse(r).ok());
            let Some(realm) = realm else {
                return self.error(OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "upstream challenge has no valid realm",
                ));
            };
            let allowed = Origin::of_url(&realm).is_some_and(|o| self.config.allows_realm(&o));
            if !allowed {
                let o = Origin::of_url(&realm)
                    .map(|o| o.to_string())
                    .unwrap_or_default();
                return self.error(OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    format!("upstream token realm {o} is neither upstream nor upstream_auth"),
                ));
            }
            let service = bearer.param("service");
            self.state = State::TokenFetch;
            let basic = req.basic.clone();
            return if req.form {
                let form = req.upstream_form(service, &self.names).into_bytes();
                let mut h = HeaderMap::new();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                self.send(Method::POST, realm, h, basic, form)
            } else {
                let url = req.upstream_url(&realm, service, &self.names);
                self.send(Method::GET, url, HeaderMap::new(), basic, Vec::new())
            };
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let Some(credentials) = req.basic_credentials() else {
                let body = token::token_json(token::ANONYMOUS_TOKEN, false, None);
                return Step::Respond(json_response(StatusCode::OK, body));
            };
            let auth = HeaderValue::from_str(&format!("Basic {credentials}")).ok();
            self.state = State::TokenBasicCheck {
                credentials,
                refresh: req.form,
            };
            return self.send(
                Method::GET,
                self.upstream_url("/v2/", None),
                HeaderMap::new(),
                auth,
                Vec::new(),
            );
        }
        self.error(OciError::unavailable(
            StatusCode::BAD_GATEWAY,
            "upstream asks for an unsupported authentication scheme",
        ))
    }

    /// Every challenge a client sees names the proxy's token endpoint, in client names:
    /// containerd keeps the first realm it meets for the host.
    fn rewrite_challenge(&self, headers: &mut HeaderMap) {
        let challenges = challenge::from_headers(headers);
        if challenges.is_empty() {
            return;
        }
        headers.remove(header::WWW_AUTHENTICATE);
        let bearer = challenges.iter().find(|c| c.scheme == "bearer");
        if let Some(v) = self.client_challenge(bearer) {
            headers.insert(header::WWW_AUTHENTICATE, v);
        }
    }

    /// The proxy's Bearer challenge, carrying the upstream Bearer challenge's scope (in client
    /// names) and error; without one, the route's pull scope.
    fn client_challenge(&self, bearer: Option<&Challenge>) -> Option<HeaderValue> {
        let mut params = vec![
            ("realm".to_string(), format!("{}{TOKEN_PATH}", self.public)),
            ("service".to_string(), self.public.authority()),
        ];
        let scopes = match bearer.and_then(|b| b.param("scope")) {
            Some(s) => scope::to_client(&self.names, [s]),
            None => self
                .route
                .name()
                .map(|n| vec![format!("repository:{n}:pull")])
                .unwrap_or_default(),
        };
        if !scopes.is_empty() {
            params.push(("scope".into(), scopes.join(" ")));
        }
        if let Some(e) = bearer.and_then(|b| b.param("error")) {
            params.push(("error".into(), e.into()));
        }
        HeaderValue::from_str(&Challenge::bearer(params).render()).ok()
    }

    fn rewrite_links(&self, headers: &mut HeaderMap) {
        let values: Vec<String> = headers
            .get_all(header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok().map(String::from))
            .collect();
        if values.is_empty() {
            return;
        }
        headers.remove(header::LINK);
        for v in values {
            let rewritten = link::rewrite(&v, |t| {
                listing::client_link_target(t, &self.config.upstream, &self.public, &self.names)
            });
            if let Some(hv) = rewritten.and_then(|r| HeaderValue::from_str(&r).ok()) {
                headers.append(header::LINK, hv);
            }
        }
    }

    fn upstream_url(&self, path: &str, query: Option<&str>) -> url::Url {
        let mut url = self.config.upstream_url.clone();
        url.set_path(path);
        url.set_query(query);
        url
    }

    fn send(
        &mut self,
        method: Method,
        url: url::Url,
        mut headers: HeaderMap,
        auth: Option<HeaderValue>,
        body: Vec<u8>,
    ) -> Step {
        if let Some(a) = auth {
            headers.insert(header::AUTHORIZATION, a);
        }
        if !body.is_empty() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.headers_mut() = headers;
        match url.as_str().parse() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => {
                return self.error(OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "invalid upstream URL",
                ))
            }
        }
        self.current = Some(url);
        Step::Send(req)
    }

    fn method_not_allowed(&self, method: &Method) -> Step {
        let e = OciError::unsupported(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not supported: this registry proxy is read-only"),
        );
        let mut r = e.response(self.head_only);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        Step::Respond(r)
    }

    /// The origin of the upstream request in flight, for error messages.
    fn current_origin(&self) -> String {
        let origin = self.current.as_ref().and_then(Origin::of_url);
        origin.map(|o| o.to_string()).unwrap_or_default()
    }

    fn unexpected(&self, status: StatusCode) -> OciError {
        let target = self.current_origin();
        OciError::unavailable(
            StatusCode::BAD_GATEWAY,
            format!("upstream {target} answered {status} during authentication"),
        )
    }

    fn error(&mut self, e: OciError) -> Step {
        self.state = State::Done;
        let mut r = e.response(self.head_only);
        if e.status == StatusCode::UNAUTHORIZED {
            if let Some(v) = self.client_challenge(None) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        Step::Respond(r)
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(Vec::new());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    *r.body_mut() = body;
    r
}

#[cfg(test)]
mod tests;
