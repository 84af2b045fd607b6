//! Writes, on a route that takes them (`"push": true`, `"delete": true`): upload sessions
//! (start, with a cross-repository mount; chunks; the end; status; cancel), manifest PUTs and
//! DELETEs. Names map both ways, every `Location` the upstream hands out is the client's, on
//! the public origin, and blob bodies stream through. A route open to everyone takes none; on
//! a `users` route, only users whose token grants `push` (or `delete`) on the repository.

use super::*;
use crate::users::Action;

/// The largest manifest a client may PUT (the distribution spec's clients accept 4 MiB).
const MAX_MANIFEST_PUT: usize = 4 << 20;

/// The body of a write the proxy sends upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::exchange) enum WriteBody {
    /// Bytes the proxy holds (a manifest, or nothing): sent again if need be.
    Held(Vec<u8>),
    /// The client's request body, streamed as it comes: sent once.
    Client,
    /// The client's body, already sent.
    Spent,
}

impl Exchange {
    /// The action a write asks for, and whether the route takes it: `None` when it does not.
    pub(super) fn write_action(&self, method: &Method, endpoint: &Endpoint) -> Option<Action> {
        let route = self.route()?;
        let upload = |session: &Option<String>| {
            matches!(
                (method, session),
                (&Method::POST, None)
                    | (
                        &Method::PATCH
                            | &Method::PUT
                            | &Method::DELETE
                            | &Method::GET
                            | &Method::HEAD,
                        Some(_)
                    )
            )
        };
        match endpoint {
            Endpoint::Upload { session, .. } if route.push && upload(session) => Some(Action::Push),
            Endpoint::Manifest { .. } if route.push && method == Method::PUT => Some(Action::Push),
            // By digest or by tag (distribution-spec 1.1; a registry without tag deletes
            // answers for itself).
            Endpoint::Manifest { .. } | Endpoint::Blob { .. }
                if route.delete && method == Method::DELETE =>
            {
                Some(Action::Delete)
            }
            _ => None,
        }
    }

    /// A write (or an upload's status): refused before anything reaches the upstream unless
    /// the route takes it and the client may make it.
    pub(super) fn write_request(&mut self, endpoint: &Endpoint, req: Incoming) -> Step {
        let Some(action) = self.write_action(&req.method, endpoint) else {
            return self.method_not_allowed(&req.method);
        };
        if let Some(answered) = self.admit_as(endpoint, action) {
            return answered;
        }
        let Some(name) = endpoint.name() else {
            return self.error(OciError::internal("a write without a repository"));
        };
        let Some(upstream_name) = self
            .names
            .to_upstream(name)
            .filter(|_| self.names.is_valid_client_name(name))
        else {
            return self.error(OciError::name_invalid(format!(
                "invalid repository name: {name}"
            )));
        };
        self.client_authorization = self.clients_authorization();
        let path = endpoint.with_name(upstream_name).path();
        let query = self.write_query(endpoint, req.query.as_deref());
        let Some(target) = self.upstream_target(&path, query.as_deref()) else {
            return self.error(OciError::internal("no route"));
        };
        let mut headers = headers::write_request(&self.client_headers);
        let client_length = self
            .client_headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = match (&req.method, endpoint) {
            (&Method::PUT, Endpoint::Manifest { .. }) => {
                self.pending = Some(Pending {
                    method: req.method.clone(),
                    target,
                    headers,
                });
                return self.read_request(Waiting::ManifestPut, MAX_MANIFEST_PUT);
            }
            (&Method::GET | &Method::HEAD | &Method::DELETE, _) => WriteBody::Held(Vec::new()),
            // A chunk, or a monolithic upload's bytes: streamed. A body said to be empty (a
            // POST that only starts a session, a PUT that only ends one) is held. Without a
            // length there may be a chunked body (the runtime keeps `Transfer-Encoding` to
            // itself): it is streamed, whatever it holds.
            _ if client_length == Some(0) => WriteBody::Held(Vec::new()),
            // Starting a session carries no body (only a monolithic upload, `?digest=`, does):
            // sent without one, as a request the proxy may send again.
            (&Method::POST, _) if !req.query.as_deref().unwrap_or("").contains("digest=") => {
                WriteBody::Held(Vec::new())
            }
            _ => {
                if let Some(n) = client_length {
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                }
                WriteBody::Client
            }
        };
        self.start_write(req.method, target, headers, body)
    }

    /// The client's manifest, read whole: kept to send again if the route's token needs
    /// renewing, and the store's secret read (a pushed tag's kept entry goes).
    pub(super) fn manifest_put_read(&mut self, body: Vec<u8>) -> Step {
        let Some(p) = self.pending.take() else {
            return self.error(OciError::internal("nothing to send"));
        };
        self.write = Some(WriteBody::Held(body));
        self.pending = Some(p);
        self.with_secret(cached::Then::Write)
    }

    fn start_write(
        &mut self,
        method: Method,
        target: Target,
        headers: HeaderMap,
        body: WriteBody,
    ) -> Step {
        // A manifest deleted leaves the store, whose keys need its secret.
        let forgets =
            method == Method::DELETE && matches!(self.endpoint, Some(Endpoint::Manifest { .. }));
        self.pending = Some(Pending {
            method,
            target,
            headers,
        });
        self.write = Some(body);
        if forgets {
            return self.with_secret(cached::Then::Write);
        }
        self.authorize_and_send()
    }

    /// The query a write takes upstream: an upload's own (`_state`, `digest`) as it came; a
    /// cross-repository mount's `from` in upstream names, once, or dropped (a plain upload
    /// then, as the spec has registries do) when the route does not serve it; containerd's
    /// `ns` never. The start of an upload takes the spec's parameters alone: a session's
    /// others are the registry's own, from its Location.
    fn write_query(&self, endpoint: &Endpoint, query: Option<&str>) -> Option<String> {
        let query = query?;
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let from = pairs
            .iter()
            .find(|(k, _)| k == "from")
            .map(|(_, v)| v.as_str());
        let mount_from = match (endpoint, from) {
            (Endpoint::Upload { session: None, .. }, Some(f)) => self
                .names
                .to_upstream(f)
                .filter(|_| self.names.is_valid_client_name(f))
                .filter(|_| self.route().is_some_and(|r| r.serves(f)))
                .filter(|_| {
                    self.claims
                        .as_ref()
                        .is_none_or(|c| c.covers(f, Action::Pull))
                }),
            _ => None,
        };
        let start = matches!(endpoint, Endpoint::Upload { session: None, .. });
        let mut from_sent = false;
        for (k, v) in &pairs {
            match k.as_str() {
                "ns" => {}
                "from" | "mount" if mount_from.is_none() => {}
                "from" if from_sent => {}
                "from" => {
                    from_sent = true;
                    out.append_pair(k, mount_from.as_deref().unwrap_or_default());
                }
                "mount" | "digest" => {
                    out.append_pair(k, v);
                }
                _ if start => {}
                _ => {
                    out.append_pair(k, v);
                }
            }
        }
        let q = out.finish();
        (!q.is_empty()).then_some(q)
    }

    /// Sends the pending write with `authorization`.
    pub(super) fn send_write(&mut self, authorization: Option<HeaderValue>) -> Step {
        let (Some(p), Some(body)) = (self.pending.clone(), self.write.clone()) else {
            return self.error(OciError::internal("nothing to send"));
        };
        self.waiting = Waiting::WriteAnswer;
        match body {
            WriteBody::Held(bytes) => self.send(
                Role::Registry,
                p.method,
                p.target,
                p.headers,
                authorization,
                bytes,
            ),
            WriteBody::Client => {
                self.write = Some(WriteBody::Spent);
                self.send_stream(p.method, p.target, p.headers, authorization)
            }
            WriteBody::Spent => self.error(
                OciError::unavailable(
                    StatusCode::BAD_GATEWAY,
                    "the upstream registry asked for the upload again, which the proxy no \
                     longer holds: push again",
                )
                .because("a streamed body could not be sent twice"),
            ),
        }
    }

    /// The upstream's answer to a write: its `Location` in the client's names and host.
    pub(super) fn write_answered(&mut self, head: Response<()>) -> Step {
        let status = head.status();
        if status == StatusCode::UNAUTHORIZED {
            if let Some(step) = self.own_credentials_refused(head.clone()) {
                return step;
            }
        }
        if status.is_client_error() || status.is_server_error() {
            if status == StatusCode::UNAUTHORIZED || self.head_only {
                return self.reply(Draft::upstream(head));
            }
            self.waiting = Waiting::ErrorBody { head };
            return Step::ReadResponse {
                limit: MAX_ERROR_BODY,
            };
        }
        let location = match head.headers().get(header::LOCATION) {
            None => None,
            Some(l) => match self.client_location(l) {
                Some(url) => Some(url),
                None => {
                    return self.error(
                        OciError::unavailable(
                            StatusCode::BAD_GATEWAY,
                            "the upstream registry sent an upload location the proxy does not \
                             follow",
                        )
                        .because("write Location is not the upstream's own API"),
                    )
                }
            },
        };
        if status.is_success() {
            self.forget_written_manifest();
        }
        let mut draft = Draft::upstream(head);
        draft.location = location;
        self.reply(draft)
    }

    /// A `Location` of the upstream's own API (an upload session, a manifest, a blob), for the
    /// client: the same path in client names, on the public origin. `None` for anything else
    /// (another host, a path the API does not have, a name outside the route).
    fn client_location(&self, location: &HeaderValue) -> Option<url::Url> {
        let target = self.resolve_location(location)?;
        let route = self.route()?;
        if Origin::of_url(&target)? != route.upstream {
            return None;
        }
        let endpoint = Endpoint::parse(target.path()).ok()?;
        let name = self.names.to_client(endpoint.name()?)?;
        let mut url = url::Url::parse(&self.public.as_ref()?.to_string()).ok()?;
        url.set_path(&endpoint.with_name(name).path());
        url.set_query(target.query());
        Some(url)
    }

    /// What a manifest write changed leaves the store: a tag's entry (the next pull asks), or
    /// a deleted digest's manifest.
    fn forget_written_manifest(&mut self) {
        let (Some(Endpoint::Manifest { name, reference }), Some(route)) =
            (self.endpoint.clone(), self.route().cloned())
        else {
            return;
        };
        let Some(name) = self.names.to_upstream(&name) else {
            return;
        };
        if crate::endpoint::valid_digest(&reference) {
            // Only a delete changes what a digest names: every route to this upstream kept
            // the manifest under its own viewer, and none may serve it again, nor a tag kept
            // before (see `store_secret`).
            if self.method == Method::DELETE {
                if let Some(secret) = self.secret.as_ref().map(|s| s.deleted(self.now)) {
                    self.writes.push(Write::Set(
                        crate::store_secret::KEY.to_string(),
                        secret.encode(),
                    ));
                    self.secret = Some(secret);
                }
                let kind = crate::cache::Kind::Manifest;
                let routes = self.config.routes.0.iter();
                let identities: Vec<String> = routes
                    .filter(|r| r.upstream == route.upstream)
                    .map(|r| crate::cache::identity(r, kind, &[&name, &reference]))
                    .collect();
                for identity in identities {
                    self.forget(kind, &identity);
                }
            }
            return;
        }
        let ttl = route.tag_ttl.to_string();
        let identity =
            crate::cache::identity(&route, crate::cache::Kind::Tag, &[&name, &reference, &ttl]);
        self.forget(crate::cache::Kind::Tag, &identity);
    }
}
