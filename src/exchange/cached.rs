//! The key-value store in a registry request: what is looked up before the upstream is asked,
//! and what of its answer is kept (`crate::cache` says what and how long).

use super::*;
use crate::anonymous_token;
use crate::cache::{self, Entry, Kind};
use crate::digest::sha256;
use crate::endpoint::valid_digest;
use crate::store_secret::{self, StoreSecret};

/// What the store is asked for, for one request.
#[derive(Debug, Clone)]
pub(in crate::exchange) struct Plan {
    what: What,
}

/// What waits for the store's secret (every bucket's key is made with it).
#[derive(Debug)]
pub(in crate::exchange) enum Then {
    /// A registry request's entries.
    LookUp(Plan),
    /// A token request's.
    Token(TokenRequest),
    /// The route's own realm and token for a scope.
    OwnCredentials { scope: Option<String> },
    /// A manifest push (its tag's kept entry goes once the upstream took it).
    Write,
}

#[derive(Debug, Clone)]
enum What {
    /// A manifest by digest, and its entry's identity.
    Digest {
        name: String,
        digest: String,
        identity: String,
    },
    /// A manifest by tag: the tag's entry, then for a GET the manifest's. One entry per tag
    /// (whatever the client's `Accept`: `accept` is the set it answers for), so a push drops it.
    Tag {
        name: String,
        identity: String,
        accept: String,
    },
    /// A blob: where the upstream last redirected it.
    Blob { identity: String },
    /// `/v2/` for a client without credentials: the upstream's challenge.
    Base,
}

/// The least lifetime a kept anonymous token is handed out with: clients take any shorter
/// `expires_in` for this long.
const MIN_TOKEN_SECONDS: u64 = 60;

/// The upstream's challenge, reduced to what says where and how to authenticate.
fn realm_challenge(headers: &HeaderMap) -> Option<String> {
    let challenges = challenge::from_headers(headers);
    let realm = Realm::from_challenges(&challenges)?;
    Some(match realm {
        Realm::Basic => "Basic realm=\"upstream\"".to_string(),
        Realm::Bearer { realm, service } => {
            let mut params = vec![("realm".to_string(), realm)];
            params.extend(service.map(|s| ("service".to_string(), s)));
            Challenge::bearer(params).render()
        }
    })
}

impl Exchange {
    fn client_accepts(&self) -> Vec<String> {
        self.client_headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok().map(String::from))
            .collect()
    }

    fn identity(&self, kind: Kind, parts: &[&str]) -> Option<String> {
        Some(cache::identity(self.route()?, kind, parts))
    }

    /// The key of the bucket `identity` lives in; `None` before the store's secret is known.
    pub(super) fn bucket_key(&self, kind: Kind, identity: &str) -> Option<String> {
        Some(cache::key(self.secret.as_ref()?, kind, identity))
    }

    /// Puts an entry of `kind` into its bucket.
    pub(super) fn keep<T: serde::Serialize + for<'de> serde::Deserialize<'de>>(
        &mut self,
        kind: Kind,
        entry: Entry<T>,
    ) {
        if let Some(key) = self.bucket_key(kind, &entry.identity) {
            self.writes.push(Write::Merge {
                key,
                entry: entry.encode(),
                ways: kind.ways(),
            });
        }
    }

    /// Takes `identity`'s entry out of its bucket.
    pub(super) fn forget(&mut self, kind: Kind, identity: &str) {
        let ended = Entry {
            identity: identity.to_string(),
            until: 0,
            value: (),
        };
        self.keep(kind, ended);
    }

    /// Reads the store's secret first, once per request, then goes on with `then`.
    pub(super) fn with_secret(&mut self, then: Then) -> Step {
        if self.secret.is_some() {
            return self.resume(then);
        }
        self.waiting = Waiting::Secret { then, made: false };
        Step::Load(vec![store_secret::KEY.to_string()])
    }

    /// The secret as kept. Where none is, a new one is written unless another instance's
    /// was written first, and the key read again: the request goes on with the secret that
    /// stays, so what it keeps and the tokens it marks stay valid. A store that cannot keep
    /// one gets a new one each request, which is only a store that keeps nothing.
    pub(super) fn secret_loaded(
        &mut self,
        then: Then,
        made: bool,
        values: Vec<Option<Vec<u8>>>,
    ) -> Step {
        let kept = values.into_iter().next().flatten();
        if let Some(s) = kept.as_deref().and_then(StoreSecret::decode) {
            self.secret = Some(s);
            return self.resume(then);
        }
        let s = StoreSecret::new(self.random);
        if made {
            self.secret = Some(s);
            return self.resume(then);
        }
        self.writes.push(Write::Create {
            key: store_secret::KEY.to_string(),
            value: s.encode(),
        });
        self.waiting = Waiting::Secret { then, made: true };
        Step::Load(vec![store_secret::KEY.to_string()])
    }

    fn resume(&mut self, then: Then) -> Step {
        match then {
            Then::LookUp(plan) => self.look_up(plan),
            Then::Token(req) => self.token_lookup(req),
            Then::OwnCredentials { scope } => self.own_credentials_load(scope),
            Then::Write => self.authorize_and_send(),
        }
    }

    /// Whether the request carries nothing of the client's: no `Authorization` at all. Such
    /// a client meets the proxy's challenge on `/v2/`, however open the upstream's is (docker
    /// and containers/image learn how to authenticate there); one that presents anything,
    /// the proxy's own `anonymous` token included, has authenticated and gets the upstream's
    /// answer, so a client pinging `/v2/` with its token never loops.
    pub(super) fn presents_nothing(&self) -> bool {
        !self.client_headers.contains_key(header::AUTHORIZATION)
    }

    /// What the store may hold for this request; `None`: nothing to look up.
    pub(super) fn cache_plan(&self, endpoint: &Endpoint) -> Option<Plan> {
        let route = self.route()?;
        let what = match endpoint {
            Endpoint::Manifest { name, reference } => {
                let name = self.names.to_upstream(name)?;
                if valid_digest(reference) {
                    What::Digest {
                        identity: self.identity(Kind::Manifest, &[&name, reference])?,
                        name,
                        digest: reference.clone(),
                    }
                } else if route.tag_ttl > 0 {
                    let accept = cache::accept_key(&self.client_accepts())?;
                    // Routes to one upstream share what they saw, each for as long as it says.
                    let ttl = route.tag_ttl.to_string();
                    let identity = self.identity(Kind::Tag, &[&name, reference, &ttl])?;
                    What::Tag {
                        name,
                        identity,
                        accept,
                    }
                } else {
                    return None;
                }
            }
            Endpoint::Blob { name, digest } => {
                let name = self.names.to_upstream(name)?;
                What::Blob {
                    identity: self.identity(Kind::Redirect, &[&name, digest])?,
                }
            }
            Endpoint::Base if self.presents_nothing() && route.credentials.is_none() => What::Base,
            _ => return None,
        };
        Some(Plan { what })
    }

    fn entry_key(&self, what: &What) -> Option<String> {
        match what {
            What::Digest { identity, .. } => self.bucket_key(Kind::Manifest, identity),
            What::Tag { identity, .. } => self.bucket_key(Kind::Tag, identity),
            What::Blob { identity } => self.bucket_key(Kind::Redirect, identity),
            What::Base => Some(cache::base_key(&self.identity(Kind::Base, &[])?)),
        }
    }

    pub(super) fn look_up(&mut self, plan: Plan) -> Step {
        let Some(key) = self.entry_key(&plan.what) else {
            return self.authorize_and_send();
        };
        self.waiting = Waiting::CacheLookup(plan);
        Step::Load(vec![key])
    }

    /// Whether the client's Bearer token is one the proxy handed out as anonymous, for this
    /// route's upstream (its mark is checked here, where the store's secret is known).
    pub(super) fn carries_anonymous_token(&self) -> bool {
        let (Some(marked), Some(secret), Some(route)) = (&self.marked, &self.secret, self.route())
        else {
            return false;
        };
        marked.is_genuine(secret, &route.upstream)
    }

    pub(super) fn cache_loaded(&mut self, plan: Plan, values: Vec<Option<Vec<u8>>>) -> Step {
        let now = self.now;
        let entry = values.into_iter().next().flatten();
        let own = self.route().is_some_and(|r| r.credentials.is_some());
        self.storable =
            own || self.client_authorization.is_none() || self.carries_anonymous_token();
        let accepts = self.client_accepts();
        // Credentials of the client's own go to the upstream, which alone judges them.
        let what = if self.storable {
            Some(&plan.what)
        } else {
            None
        };
        match what {
            Some(What::Digest {
                identity, digest, ..
            }) => {
                let found = cache::find::<cache::Manifest>(entry.as_deref(), identity, now)
                    .filter(|m| cache::accepts(&accepts, &m.media_type));
                if let Some((m, body)) = found.and_then(|m| self.kept_body(m, digest)) {
                    return self.reply_manifest(&m.media_type, &m.digest, body);
                }
            }
            Some(What::Tag {
                name,
                identity,
                accept,
            }) => {
                // What the proxy wrote is sane whatever the store did to it since: a digest,
                // and a length no kept manifest exceeds.
                // A tag kept before a manifest was deleted through the proxy may name it.
                let deleted = self.secret.as_ref().map_or(0, |s| s.deleted_at);
                let ttl = self.route().map_or(0, |r| r.tag_ttl);
                let fresh_after = now.max(deleted.saturating_add(ttl));
                let tag = cache::find::<cache::Tag>(entry.as_deref(), identity, fresh_after)
                    .filter(|t| t.accept == *accept && valid_digest(&t.digest))
                    .filter(|t| t.length <= cache::MAX_MANIFEST as u64);
                if let Some(tag) = tag.filter(|t| cache::accepts(&accepts, &t.media_type)) {
                    // A HEAD is told all it asks by the tag's entry. Should the manifest's
                    // slot have gone to another (or a HEAD have made the entry), the GET by
                    // digest that follows goes upstream, as a pull without the proxy does.
                    if self.head_only {
                        let body = DraftBody::StoredLength(tag.length);
                        return self.reply_manifest(&tag.media_type, &tag.digest, body);
                    }
                    let identity = self.identity(Kind::Manifest, &[name, &tag.digest]);
                    let key = identity
                        .as_ref()
                        .and_then(|id| self.bucket_key(Kind::Manifest, id));
                    if let (Some(key), Some(identity)) = (key, identity) {
                        self.waiting = Waiting::CachedTagManifest {
                            plan,
                            identity,
                            digest: tag.digest,
                        };
                        return Step::Load(vec![key]);
                    }
                }
            }
            Some(What::Blob { identity }) => {
                let url = cache::find::<String>(entry.as_deref(), identity, now)
                    .and_then(|u| url::Url::parse(&u).ok());
                if let Some(url) = url {
                    self.cache = Some(plan.clone());
                    return self.send_to_kept_redirect(url);
                }
            }
            Some(What::Base) => {
                let id = self.identity(Kind::Base, &[]).unwrap_or_default();
                if let Some(base) = entry.and_then(|e| Entry::<cache::Base>::decode(&e, &id, now)) {
                    let mut draft =
                        Draft::error(&OciError::unauthorized("authentication required"));
                    let challenge = base.challenge.and_then(|c| HeaderValue::from_str(&c).ok());
                    if let Some(c) = challenge {
                        draft.headers.insert(header::WWW_AUTHENTICATE, c);
                    }
                    return self.reply(draft);
                }
            }
            None => {}
        }
        self.not_kept(plan)
    }

    /// Nothing kept answers: the upstream is asked, and what it says may be kept. A HEAD stays
    /// a HEAD: Docker Hub counts GETs against its pull limit and HEADs not, and clients that
    /// only poll a tag (watchtower, diun, renovate) would pay a pull for each.
    fn not_kept(&mut self, plan: Plan) -> Step {
        self.cache = Some(plan);
        self.authorize_and_send()
    }

    /// `identity`: the manifest's, which chose the bucket read.
    pub(super) fn cached_tag_manifest_loaded(
        &mut self,
        plan: Plan,
        identity: String,
        digest: &str,
        values: Vec<Option<Vec<u8>>>,
    ) -> Step {
        if !matches!(plan.what, What::Tag { .. }) {
            return self.out_of_order("a tag's manifest");
        }
        let bucket = values.into_iter().next().flatten();
        let found = cache::find::<cache::Manifest>(bucket.as_deref(), &identity, self.now)
            .and_then(|m| self.kept_body(m, digest));
        match found {
            Some((m, body)) => self.reply_manifest(&m.media_type, &m.digest, body),
            // The manifest's slot went to another: ask the upstream as if nothing were kept,
            // for the same client (whose token may be one the proxy handed out anonymously).
            None => self.not_kept(plan),
        }
    }

    /// A kept manifest's body for this client, if it is the one asked for (`digest`): its
    /// bytes, or for a HEAD their length alone (decoding and hashing them was a fifth of a kept
    /// HEAD's own work).
    fn kept_body(&self, m: cache::Manifest, digest: &str) -> Option<(cache::Manifest, DraftBody)> {
        if m.digest != digest {
            return None;
        }
        let body = if self.head_only {
            DraftBody::StoredLength(m.length()?)
        } else {
            DraftBody::Stored(m.bytes()?)
        };
        Some((m, body))
    }

    fn reply_manifest(&mut self, media_type: &str, digest: &str, body: DraftBody) -> Step {
        let mut headers = HeaderMap::new();
        // As registries answer (distribution's ETag is the quoted digest).
        let etag = format!("\"{digest}\"");
        for (name, value) in [
            (header::CONTENT_TYPE, media_type),
            (HeaderName::from_static("docker-content-digest"), digest),
            (header::ETAG, etag.as_str()),
            (
                HeaderName::from_static("docker-distribution-api-version"),
                "registry/2.0",
            ),
        ] {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
        let status = if crate::headers::none_match(&self.client_headers, &etag) {
            StatusCode::NOT_MODIFIED
        } else {
            StatusCode::OK
        };
        self.reply(Draft {
            status,
            headers,
            body,
            location: None,
        })
    }

    /// A blob's kept redirect: handed to the client in `pass` mode, followed in `follow`.
    fn send_to_kept_redirect(&mut self, url: url::Url) -> Step {
        self.kept_redirect = true;
        let pass = self
            .route()
            .is_some_and(|r| r.blob_redirect == BlobRedirect::Pass);
        if pass {
            return self.reply(Draft::redirect(StatusCode::TEMPORARY_REDIRECT, url));
        }
        let allowed =
            Origin::of_url(&url).is_some_and(|o| self.route().is_some_and(|r| r.allows_cdn(&o)));
        if !allowed {
            return self.authorize_and_send();
        }
        self.hop = Some(Pending {
            method: self.upstream_method(),
            target: url.into(),
            headers: headers::cdn_request(&self.client_headers),
        });
        self.send_hop(None)
    }

    /// Keeps what a redirect of a blob said, for as long as its signature lasts, and ten
    /// minutes at most.
    pub(super) fn keep_redirect(&mut self, target: &url::Url) {
        let Some(Plan {
            what: What::Blob { identity },
        }) = &self.cache
        else {
            return;
        };
        let longest = self.now.saturating_add(cache::MAX_REDIRECT_SECONDS);
        let until = cache::signed_until(target).map(|u| u.saturating_sub(60).min(longest));
        if let Some(until) = until.filter(|u| *u > self.now && self.storable) {
            let entry = Entry {
                identity: identity.clone(),
                until,
                value: target.to_string(),
            };
            self.keep(Kind::Redirect, entry);
        }
    }

    /// Storage refused the kept redirect (revoked before its time): it is dropped, and the
    /// registry is asked for a new one, once.
    pub(super) fn kept_redirect_refused(&mut self) -> Option<Step> {
        if !std::mem::take(&mut self.kept_redirect) {
            return None;
        }
        let Some(Plan {
            what: What::Blob { identity },
        }) = self.cache.clone()
        else {
            return None;
        };
        self.forget(Kind::Redirect, &identity);
        self.hop = None;
        Some(self.authorize_and_send())
    }

    /// Keeps where the upstream asks clients to authenticate, from any challenge it sends, and
    /// whether its `/v2/` (`base`: this is its answer) is open: the token endpoint then need
    /// not ask.
    pub(super) fn keep_challenge(&mut self, head: &Response<()>, base: bool) {
        let status = head.status();
        let base = match status {
            StatusCode::UNAUTHORIZED => realm_challenge(head.headers()).map(Some),
            s if s.is_success() && base => Some(None),
            _ => None,
        };
        let Some(challenge) = base else {
            return;
        };
        let Some(id) = self.identity(Kind::Base, &[]) else {
            return;
        };
        let entry = Entry {
            identity: id.clone(),
            until: self.now + cache::BASE_SECONDS,
            value: cache::Base {
                status: status.as_u16(),
                challenge,
            },
        };
        self.writes
            .push(Write::Set(cache::base_key(&id), entry.encode()));
    }

    /// A manifest answer the proxy may keep: its body is read first. A HEAD by tag keeps
    /// the tag's entry from its head alone.
    pub(super) fn keep_manifest(&mut self, head: &Response<()>) -> Option<Step> {
        let plan = self.cache.clone()?;
        if !matches!(plan.what, What::Digest { .. } | What::Tag { .. }) || !self.storable {
            return None;
        }
        let length = head
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())?;
        let typed = head.headers().contains_key(header::CONTENT_TYPE);
        let identity = !head.headers().contains_key(header::CONTENT_ENCODING);
        if head.status() != StatusCode::OK || length > cache::MAX_MANIFEST || !typed || !identity {
            return None;
        }
        if self.head_only {
            if matches!(plan.what, What::Tag { .. }) {
                self.keep_tag_of_head(head, &plan, length);
            }
            return None;
        }
        self.waiting = Waiting::ManifestBody {
            head: head.clone(),
            plan,
        };
        Some(Step::ReadResponse {
            limit: cache::MAX_MANIFEST,
        })
    }

    /// A tag's entry from a HEAD's answer: the digest the registry says it names (the GET by
    /// digest that follows checks the bytes against it), its media type and its length.
    fn keep_tag_of_head(&mut self, head: &Response<()>, plan: &Plan, length: usize) {
        let header = |name| head.headers().get(name).and_then(|v| v.to_str().ok());
        let digest = header("docker-content-digest").filter(|d| valid_digest(d));
        let (Some(digest), Some(media_type)) = (digest, header("content-type")) else {
            return;
        };
        let entry = self.tag_entry(plan, media_type.to_string(), digest.to_string(), length);
        if let Some(entry) = entry {
            self.keep(Kind::Tag, entry);
        }
    }

    /// A tag's entry for `plan`, a lookup by tag, until `tag_ttl` from now.
    fn tag_entry(
        &self,
        plan: &Plan,
        media_type: String,
        digest: String,
        length: usize,
    ) -> Option<Entry<cache::Tag>> {
        let What::Tag {
            identity, accept, ..
        } = &plan.what
        else {
            return None;
        };
        Some(Entry {
            identity: identity.clone(),
            until: self.now + self.route()?.tag_ttl,
            value: cache::Tag {
                media_type,
                digest,
                length: length as u64,
                accept: accept.clone(),
            },
        })
    }

    pub(super) fn manifest_read(&mut self, head: Response<()>, plan: Plan, body: Vec<u8>) -> Step {
        // keep_manifest asked for a Content-Length: fewer bytes is a body cut short, which a
        // reply of its own length would pass off as whole.
        let promised = head
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if promised != Some(body.len()) {
            return self.manifest_cut(head, Failure::Reset);
        }
        let digest = sha256(&body);
        let said = head
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok());
        let asked = match &plan.what {
            What::Digest { digest, .. } => Some(digest.as_str()),
            _ => None,
        };
        let media_type = head
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let proven = said.is_none_or(|d| d == digest) && asked.is_none_or(|d| d == digest);
        let name = match &plan.what {
            What::Digest { name, .. } | What::Tag { name, .. } => Some(name.clone()),
            _ => None,
        };
        if let (true, Some(name)) = (proven, name) {
            if let Some(id) = self.identity(Kind::Manifest, &[&name, &digest]) {
                let entry = Entry {
                    identity: id,
                    until: self.now.saturating_add(cache::MANIFEST_SECONDS),
                    value: cache::Manifest::new(media_type.clone(), &body),
                };
                self.keep(Kind::Manifest, entry);
            }
            if let Some(entry) = self.tag_entry(&plan, media_type, digest, body.len()) {
                self.keep(Kind::Tag, entry);
            }
        }
        self.reply_stored(head, body)
    }

    /// A manifest body that did not arrive whole: a HEAD needs none, a GET has failed.
    pub(super) fn manifest_cut(&mut self, head: Response<()>, failure: Failure) -> Step {
        if self.head_only {
            return self.reply(Draft::upstream(head));
        }
        let origin = self.current.as_ref().and_then(Target::origin);
        let e = failure.to_error(self.role, origin.as_ref(), self.timeout());
        self.error(e)
    }

    /// A token request: what the store knows of the upstream's realm, and (for a client
    /// without credentials) an anonymous token for the same scopes.
    pub(super) fn token_lookup(&mut self, req: TokenRequest) -> Step {
        let mut scopes = scope::to_upstream(&self.names, req.scopes());
        scopes.sort();
        let anonymous = (!req.offers_credentials())
            .then(|| self.identity(Kind::AnonymousToken, &[&scopes.join(" ")]))
            .flatten();
        let Some(base) = self.identity(Kind::Base, &[]) else {
            return self.probe("/v2/", None, Waiting::RealmDiscovery(req));
        };
        let mut keys = vec![cache::base_key(&base)];
        keys.extend(
            anonymous
                .as_ref()
                .and_then(|a| self.bucket_key(Kind::AnonymousToken, a)),
        );
        self.anonymous_identity = anonymous;
        self.waiting = Waiting::TokenLookup(req);
        Step::Load(keys)
    }

    pub(super) fn token_looked_up(
        &mut self,
        req: TokenRequest,
        values: Vec<Option<Vec<u8>>>,
    ) -> Step {
        let now = self.now;
        let mut values = values.into_iter();
        let base = values.next().flatten();
        let token = values.next().flatten().zip(self.anonymous_identity.clone());
        if let Some(t) =
            token.and_then(|(v, id)| cache::find::<cache::AnonymousToken>(Some(&v), &id, now))
        {
            return self.reply_anonymous_token(&t);
        }
        let id = self.identity(Kind::Base, &[]).unwrap_or_default();
        match base.and_then(|b| Entry::<cache::Base>::decode(&b, &id, now)) {
            Some(cache::Base {
                challenge: Some(c), ..
            }) => self.authenticate(&challenge::parse(&c), req),
            Some(cache::Base { status, .. }) if (200..300).contains(&status) => {
                let mut open = Response::new(());
                *open.status_mut() = StatusCode::OK;
                self.realm_known(open, req)
            }
            _ => self.probe("/v2/", None, Waiting::RealmDiscovery(req)),
        }
    }

    /// A realm's anonymous token the upstream refused: Docker Hub hands one out for a
    /// repository that does not exist yet (it grants nothing), and the kept one would be
    /// handed out again after the push, for half its life. It goes for the scope refused
    /// (the challenge's, and the request's own), so the client's next token request asks the
    /// realm afresh.
    pub(super) fn forget_refused_anonymous_token(&mut self, head: &Response<()>) {
        let challenged = challenge::from_headers(head.headers())
            .into_iter()
            .find(|c| c.scheme == "bearer")
            .and_then(|c| c.param("scope").map(String::from));
        let mut identities: Vec<String> = Vec::new();
        for scope in [challenged, self.own_scope()].into_iter().flatten() {
            let mut scopes: Vec<&str> = scope.split_whitespace().collect();
            scopes.sort();
            scopes.dedup();
            let identity = self.identity(Kind::AnonymousToken, &[&scopes.join(" ")]);
            if let Some(id) = identity.filter(|id| !identities.contains(id)) {
                identities.push(id);
            }
        }
        for id in identities {
            self.forget(Kind::AnonymousToken, &id);
        }
    }

    /// A repository of an open registry that asks anonymous clients for nothing: its scopes
    /// get the proxy's own `anonymous` token, kept as a realm's anonymous token would be.
    pub(super) fn keep_open_repository(&mut self) {
        let Some(id) = self.anonymous_identity.clone() else {
            return;
        };
        let until = self.now.saturating_add(cache::BASE_SECONDS);
        let entry = Entry {
            identity: id,
            until,
            value: cache::AnonymousToken {
                token: token::ANONYMOUS_TOKEN.to_string(),
                expires_at: until.saturating_add(MIN_TOKEN_SECONDS),
            },
        };
        self.keep(Kind::AnonymousToken, entry);
    }

    /// A realm's anonymous token, marked as one the proxy handed out anonymously (the proxy's
    /// own `anonymous`, which grants nothing upstream, goes as it is).
    fn reply_anonymous_token(&mut self, t: &cache::AnonymousToken) -> Step {
        if t.token == token::ANONYMOUS_TOKEN {
            return self.anonymous_token();
        }
        let (Some(secret), Some(route)) = (&self.secret, self.route()) else {
            return self.error(OciError::internal("no store secret"));
        };
        let marked = anonymous_token::mark(secret, &route.upstream, &t.token);
        let body = serde_json::json!({
            "token": marked,
            "access_token": marked,
            "expires_in": t.expires_at.saturating_sub(self.now),
        });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        self.reply(Draft::made(StatusCode::OK, bytes, "application/json"))
    }

    /// A realm's token for a client without credentials: kept for anonymous clients to come,
    /// and handed out marked as anonymous (requests with it may fill the store).
    pub(super) fn keep_anonymous_token(
        &mut self,
        t: upstream_token::Token,
        identity: String,
    ) -> Step {
        let now = self.now;
        let expires_at = t.until.saturating_add(upstream_token::MARGIN_SECONDS);
        // Handed out again while at least half its life is left, with what is left, and never
        // with under a minute: docker and containerd take a shorter `expires_in` for 60 s.
        let until = now
            .saturating_add(expires_at.saturating_sub(now) / 2)
            .min(expires_at.saturating_sub(MIN_TOKEN_SECONDS));
        let kept = cache::AnonymousToken {
            token: t.token,
            expires_at,
        };
        if until > now {
            let entry = Entry {
                identity,
                until,
                value: kept.clone(),
            };
            self.keep(Kind::AnonymousToken, entry);
        }
        self.reply_anonymous_token(&kept)
    }

    /// The upstream's answer with the body the proxy read (and may have kept).
    pub(super) fn reply_stored(&mut self, head: Response<()>, body: Vec<u8>) -> Step {
        let (parts, ()) = head.into_parts();
        self.reply(Draft {
            status: parts.status,
            headers: parts.headers,
            body: DraftBody::Stored(body),
            location: None,
        })
    }
}
