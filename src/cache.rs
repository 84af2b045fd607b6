//! What the proxy keeps of upstream answers in Spin's key-value store, so that a warm pull
//! costs the upstream nothing: manifests by digest (immutable), tags by what they pointed at a
//! moment ago, the `/v2/` challenge of each upstream, anonymous tokens, and blob redirect
//! targets for as long as their signature lasts.
//!
//! Only what an anonymous upstream request returned is kept (or what a public route's own
//! credentials returned): whatever is kept may be served to any client of the route.
//!
//! Entries live in a fixed number of buckets per kind (a MAC of their identity under the
//! store's secret picks the bucket), each of a few entries: the store never holds more than
//! `buckets` × `ways` entries of a kind, with no index to keep. A bucket is rewritten whole
//! (`merge`), by compare-and-swap where the runtime has it, so concurrent writers lose
//! nothing. Every entry repeats its identity, and is used only if the identity matches.

use crate::civil_time;
use crate::digest::{self, sha256};
use crate::routes::Route;
use crate::store_secret::StoreSecret;
use serde::{Deserialize, Serialize};

/// Keys of every kind together, at most (besides one `Base` per route and one realm per
/// credentialed route): Fermyon Cloud's store holds 1,024 keys.
pub const MAX_BUCKETS: u64 = 640;
/// Largest manifest kept (the distribution spec's clients accept up to 4 MiB; real ones are
/// a few KiB).
pub const MAX_MANIFEST: usize = 128 << 10;

/// How long a manifest fetched by digest is kept: its bytes never change, but the upstream
/// may delete it (a leaked secret, a withdrawn release), and a pull through the proxy should
/// not outlive that for long. A week, as distribution's own pull-through cache keeps what it
/// fetched (its `proxy.ttl`, 168h by default).
pub const MANIFEST_SECONDS: u64 = 7 * 24 * 3600;

/// How long the upstream's `/v2/` answer (its challenge) is trusted.
pub const BASE_SECONDS: u64 = 300;

/// The longest a blob's redirect is kept, whatever its URL claims (S3 signs for up to 7
/// days): storage may revoke a URL long before (STS session credentials, as ECR's are;
/// rotated signing keys).
pub const MAX_REDIRECT_SECONDS: u64 = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Tag,
    Base,
    AnonymousToken,
    Redirect,
    /// A route's own upstream token for a scope.
    OwnToken,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Tag => "tag",
            Kind::Base => "base",
            Kind::AnonymousToken => "anonymous-token",
            Kind::Redirect => "redirect",
            Kind::OwnToken => "own-token",
        }
    }

    /// Entries a bucket holds: few manifests (they are the large ones), more of the rest.
    pub fn ways(self) -> usize {
        match self {
            Kind::Manifest => 4,
            _ => 16,
        }
    }

    /// Buckets of the kind (see `MAX_BUCKETS`): fewer for tokens, which are few per route.
    pub fn buckets(self) -> u64 {
        match self {
            Kind::Base => 1,
            Kind::AnonymousToken | Kind::OwnToken => 64,
            Kind::Tag => 128,
            Kind::Manifest | Kind::Redirect => 192,
        }
    }

    /// The kinds kept in buckets (`Base` has a key per route).
    pub const BUCKETED: [Kind; 5] = [
        Kind::Manifest,
        Kind::Tag,
        Kind::AnonymousToken,
        Kind::Redirect,
        Kind::OwnToken,
    ];
}

/// The identity of an entry: what it is about, in full, and who saw it. What a route's own
/// account fetched is that account's alone (bound to a digest of the account itself, so a
/// changed password starts empty): another route to the same upstream (say, its plain
/// mirror) may serve only what an anonymous request returned.
pub fn identity(route: &Route, kind: Kind, parts: &[&str]) -> String {
    let upstream = route.upstream.to_string();
    let viewer = match route.account() {
        Some(account) => format!("account {account}"),
        None => "anonymous".to_string(),
    };
    let mut all = vec![kind.name(), upstream.as_str(), viewer.as_str()];
    all.extend_from_slice(parts);
    digest::of_parts(&all)
}

/// The key of the bucket an identity lives in, chosen by a MAC under the store's secret: a
/// client cannot compute which names share a bucket, so it cannot aim requests at one.
pub fn key(secret: &StoreSecret, kind: Kind, identity: &str) -> String {
    let mac = secret.mac(&[kind.name().as_bytes(), identity.as_bytes()]);
    let mut first = [0u8; 8];
    first.copy_from_slice(&mac[..8]);
    let bucket = u64::from_be_bytes(first) % kind.buckets();
    format!("spin-registry-proxy:{}:{bucket}", kind.name())
}

/// The key of a route account's `/v2/` answer: one per route account, so no bucket.
pub fn base_key(identity: &str) -> String {
    format!("spin-registry-proxy:{}:{identity}", Kind::Base.name())
}

/// The value of `identity` in a stored bucket, if it is there and still good at `now`.
pub fn find<T: for<'de> Deserialize<'de>>(
    bucket: Option<&[u8]>,
    identity: &str,
    now: u64,
) -> Option<T> {
    /// An entry read in place: only the one found is parsed (a bucket holds several kept
    /// manifests, each a few KiB of base64).
    #[derive(Deserialize)]
    struct Borrowed<'a> {
        #[serde(borrow)]
        identity: std::borrow::Cow<'a, str>,
        until: u64,
        #[serde(borrow)]
        value: &'a serde_json::value::RawValue,
    }
    let entries: Vec<Borrowed> = serde_json::from_slice(bucket?).ok()?;
    let e = entries
        .into_iter()
        .find(|e| e.identity == identity && now < e.until)?;
    serde_json::from_str(e.value.get()).ok()
}

/// A stored bucket with `entry` in it: in place of the same identity's, and of what has ended;
/// the entry that ends first gives way when the bucket is full. An entry that has already
/// ended only takes its identity's out.
pub fn merge(bucket: Option<&[u8]>, entry: &[u8], now: u64, ways: usize) -> Option<Vec<u8>> {
    let new: Entry<serde_json::Value> = serde_json::from_slice(entry).ok()?;
    let mut entries: Vec<Entry<serde_json::Value>> = bucket
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    entries.retain(|e| e.identity != new.identity && now < e.until);
    if now < new.until {
        while entries.len() >= ways.max(1) {
            let first = entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.until)
                .map(|(i, _)| i)?;
            entries.remove(first);
        }
        entries.push(new);
    }
    serde_json::to_vec(&entries).ok()
}

/// Whether a stored bucket holds `entry`, as it is: an entry of the same identity and end
/// that says something else (damaged, or a tag that moved within the second) is replaced.
pub fn holds(bucket: Option<&[u8]>, entry: &[u8]) -> bool {
    let parse = |b: &[u8]| serde_json::from_slice::<Entry<serde_json::Value>>(b).ok();
    let stored = |b: &[u8]| serde_json::from_slice::<Vec<Entry<serde_json::Value>>>(b).ok();
    match (parse(entry), bucket.and_then(stored)) {
        (Some(new), Some(entries)) => entries
            .iter()
            .any(|e| e.identity == new.identity && e.until == new.until && e.value == new.value),
        _ => false,
    }
}

/// The manifest types whose admission decides what a registry answers a manifest request
/// with (an index or one platform's manifest; OCI or Docker; schema 1 only when asked).
const MANIFEST_TYPES: [&str; 7] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.oci.artifact.manifest.v1+json",
];

/// `Accept` as a cache key part: which manifest types it names, the one thing in it that
/// decides a registry's answer. So the client's other text (order, parameters, other types)
/// makes no new key, and one tag has a handful of entries at most, whatever clients send.
/// `None`: it names none (such a client is never served from the store). A wildcard admits
/// no type here: registries answer `*/*` alone each their own way (distribution 2.8: a
/// schema 2 image as schema 1, an OCI one not at all), so only the upstream can. Nor does a
/// type in other letter cases: distribution 2.8 matches them exactly (an upper-case OCI type
/// is a 404 there), so only the upstream can say, and a kept answer would differ from a cold
/// one.
pub fn accept_key(accepts: &[String]) -> Option<String> {
    let mut admitted = [false; MANIFEST_TYPES.len()];
    for t in named_types(accepts) {
        if let Some(i) = MANIFEST_TYPES.iter().position(|m| t == *m) {
            admitted[i] = true;
        }
    }
    admitted.contains(&true).then(|| {
        admitted
            .iter()
            .map(|a| if *a { '1' } else { '0' })
            .collect()
    })
}

/// Whether a client that sent these `Accept` values names `media_type` (with no `Accept`, or
/// a wildcard alone, registries choose differently: such a client is never served from the
/// store).
pub fn accepts(accepts: &[String], media_type: &str) -> bool {
    named_types(accepts).any(|t| t == media_type)
}

/// The media types `Accept` values name, without their parameters.
fn named_types(accepts: &[String]) -> impl Iterator<Item = &str> {
    accepts
        .iter()
        .flat_map(|a| a.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim())
}

/// One kept answer: its identity, until when it is good, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<T> {
    pub identity: String,
    /// Unix seconds.
    pub until: u64,
    pub value: T,
}

impl<T: Serialize + for<'de> Deserialize<'de>> Entry<T> {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The entry stored in a slot, if it is this identity's and still good at `now`.
    pub fn decode(bytes: &[u8], identity: &str, now: u64) -> Option<T> {
        serde_json::from_slice::<Entry<T>>(bytes)
            .ok()
            .filter(|e| e.identity == identity && now < e.until)
            .map(|e| e.value)
    }
}

/// A manifest as the upstream sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub media_type: String,
    pub digest: String,
    /// The bytes, in base64 (the entry is JSON).
    pub bytes: String,
    /// How many there are: a HEAD, which neither decodes nor hashes them, tells this only
    /// while the text still holds as many (entries kept before it was written have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
}

impl Manifest {
    pub fn new(media_type: String, bytes: &[u8]) -> Self {
        Self {
            media_type,
            digest: sha256(bytes),
            bytes: crate::base64::encode(bytes),
            length: Some(bytes.len() as u64),
        }
    }

    /// The bytes, if they still hash to the digest.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        let bytes = crate::base64::decode(&self.bytes)?;
        (sha256(&bytes) == self.digest).then_some(bytes)
    }

    /// How many bytes there are, without decoding or hashing them: what a HEAD tells. The GET
    /// that follows checks them, and goes upstream if they no longer hash to the digest.
    pub fn length(&self) -> Option<u64> {
        crate::base64::decoded_len(&self.bytes)
            .filter(|&n| n <= MAX_MANIFEST)
            .map(|n| n as u64)
            .filter(|&n| self.length.is_none_or(|l| l == n))
    }
}

/// What a tag pointed at, for clients whose `Accept` admits the manifest types `accept` names
/// (`accept_key`): a registry answers those with the same manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub media_type: String,
    pub digest: String,
    pub length: u64,
    pub accept: String,
}

/// The upstream's `/v2/` answer: its status and challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub status: u16,
    pub challenge: Option<String>,
}

/// An anonymous token of the upstream's realm, and when the realm said it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnonymousToken {
    pub token: String,
    pub expires_at: u64,
}

/// When a signed blob URL stops working: S3's `X-Amz-Date` + `X-Amz-Expires`, Cloud Storage's
/// `X-Goog-Date` + `X-Goog-Expires`, CloudFront's and Azure's `Expires`/`se`, Cloudflare's
/// (Docker Hub) `verify=<expiry>-<signature>`. `None`: the URL says nothing, so it is not kept.
pub fn signed_until(url: &url::Url) -> Option<u64> {
    let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let get = |name: &str| {
        q.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    for (date, expires) in [
        ("X-Amz-Date", "X-Amz-Expires"),
        ("X-Goog-Date", "X-Goog-Expires"),
    ] {
        if let (Some(d), Some(e)) = (get(date), get(expires)) {
            return civil_time::iso_basic_to_unix(d)?.checked_add(e.parse::<u64>().ok()?);
        }
    }
    if let Some(e) = get("Expires") {
        return e.parse().ok();
    }
    if let Some(se) = get("se") {
        return civil_time::iso_extended_to_unix(se);
    }
    if let Some(v) = get("verify") {
        return v.split('-').next()?.parse().ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_manifest_tells_its_length_only_while_its_text_holds_as_many() {
        let m = Manifest::new("t".into(), b"0123456789");
        assert_eq!(m.length(), Some(10));
        let cut = Manifest {
            bytes: m.bytes[..m.bytes.len() - 4].to_string(),
            ..m.clone()
        };
        assert_eq!(cut.length(), None);
        // Kept before lengths were written: the text alone.
        let old: Manifest =
            serde_json::from_str(r#"{"media_type":"t","digest":"d","bytes":"MDEyMzQ1Njc4OQ=="}"#)
                .unwrap();
        assert_eq!(old.length(), Some(10));
    }

    #[test]
    fn signed_urls_say_when_they_end() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(
            signed_until(&u("https://b.s3.amazonaws.com/x?X-Amz-Date=20261130T120000Z&X-Amz-Expires=600&X-Amz-Signature=s")),
            Some(1_796_040_600)
        );
        assert_eq!(
            signed_until(&u(
                "https://storage.googleapis.com/x?X-Goog-Date=20261130T120000Z&X-Goog-Expires=60"
            )),
            Some(1_796_040_060)
        );
        assert_eq!(
            signed_until(&u(
                "https://d1.cloudfront.net/x?Expires=1796040000&Signature=s"
            )),
            Some(1_796_040_000)
        );
        assert_eq!(
            signed_until(&u(
                "https://a.blob.core.windows.net/x?se=2026-11-30T12:00:00Z&sig=s"
            )),
            Some(1_796_040_000)
        );
        assert_eq!(
            signed_until(&u(
                "https://production.cloudflare.docker.com/x?verify=1796040000-abc%3D"
            )),
            Some(1_796_040_000)
        );
        assert_eq!(
            signed_until(&u("http://127.0.0.3:5002/docker/registry/v2/blobs/x/data")),
            None
        );
        assert_eq!(
            signed_until(&u("https://s3/x?X-Amz-Date=garbage&X-Amz-Expires=60")),
            None
        );
        assert_eq!(
            signed_until(&u(
                "https://s3/x?X-Amz-Date=20261130T120000Z&X-Amz-Expires=18446744073709551615"
            )),
            None
        );
    }

    #[test]
    fn entries_are_used_only_by_their_identity_and_until_they_end() {
        let e = Entry {
            identity: "abc".into(),
            until: 100,
            value: Tag {
                media_type: "t".into(),
                digest: "sha256:0".into(),
                length: 1,
                accept: "1".into(),
            },
        };
        let bucket = merge(None, &e.encode(), 0, 8).unwrap();
        assert_eq!(find::<Tag>(Some(&bucket), "abc", 99), Some(e.value.clone()));
        assert_eq!(find::<Tag>(Some(&bucket), "abc", 100), None);
        assert_eq!(find::<Tag>(Some(&bucket), "abd", 0), None);
        assert_eq!(find::<Tag>(Some(b"garbage"), "abc", 0), None);
        assert_eq!(Entry::<Tag>::decode(&e.encode(), "abc", 0), Some(e.value));
    }

    #[test]
    fn buckets_keep_the_newest_and_drop_what_ended_first() {
        let entry = |id: &str, until: u64| {
            Entry {
                identity: id.into(),
                until,
                value: 1u8,
            }
            .encode()
        };
        let mut b = None;
        for (i, until) in [50u64, 10, 40, 30].into_iter().enumerate() {
            b = merge(b.as_deref(), &entry(&format!("e{i}"), until), 0, 3);
        }
        let b = b.unwrap();
        assert_eq!(
            find::<u8>(Some(&b), "e1", 0),
            None,
            "the one that ends first gave way"
        );
        for id in ["e0", "e2", "e3"] {
            assert_eq!(find::<u8>(Some(&b), id, 0), Some(1), "{id}");
        }
        let b = merge(Some(&b), &entry("e9", 99), 45, 3).unwrap();
        assert_eq!(find::<u8>(Some(&b), "e0", 45), Some(1));
        assert_eq!(find::<u8>(Some(&b), "e2", 45), None, "ended");
        assert!(merge(Some(b"garbage"), &entry("x", 1), 0, 3).is_some());
    }

    #[test]
    fn manifests_keep_their_bytes_and_prove_them() {
        let bytes = br#"{"schemaVersion":2}"#;
        let m = Manifest::new("application/vnd.oci.image.manifest.v1+json".into(), bytes);
        assert_eq!(m.bytes().unwrap(), bytes);
        let mut bad = m.clone();
        bad.bytes = crate::base64::encode(b"{}");
        assert_eq!(bad.bytes(), None);
    }

    #[test]
    fn accept_lists_that_admit_the_same_manifest_types_share_a_key() {
        const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
        const INDEX: &str = "application/vnd.oci.image.index.v1+json";
        let a = accept_key(&[format!("{INDEX}, {OCI}")]);
        assert!(a.is_some());
        assert_eq!(a, accept_key(&[OCI.into(), format!("{INDEX};q=0.9")]));
        assert_eq!(
            a,
            accept_key(&[format!("{OCI}, x/y{}", "z".repeat(9)), INDEX.into()])
        );
        assert_ne!(a, accept_key(&[OCI.into()]));
        assert_eq!(accept_key(&["text/html".into()]), None);
        assert_eq!(accept_key(&[]), None);
        // Wildcards name no type: containerd's list keys as its types do, `*/*` alone not.
        assert_eq!(accept_key(&["*/*".into()]), None);
        assert_eq!(accept_key(&["application/*".into()]), None);
        // distribution 2.8 matches a type exactly: only the upstream answers another case.
        assert_eq!(accept_key(&[OCI.to_ascii_uppercase()]), None);
        assert_eq!(a, accept_key(&[format!("{INDEX}, {OCI}, */*")]));
        assert!(accepts(&["a/y;q=0.5, b/x".into()], "a/y"));
        assert!(!accepts(&["a/y".into()], "b/x"));
        assert!(!accepts(&[], "b/x"));
        assert!(!accepts(&["*/*".into()], "b/x"));
        assert!(!accepts(&["B/X".into()], "b/x"));
    }

    #[test]
    fn a_bucket_holds_what_was_merged_into_it() {
        let entry = |id: &str, until: u64| {
            let e = Entry {
                identity: id.to_string(),
                until,
                value: 1,
            };
            e.encode()
        };
        let a = entry("a", 100);
        let bucket = merge(None, &a, 0, 8).unwrap();
        assert!(holds(Some(&bucket), &a));
        assert!(!holds(Some(&bucket), &entry("a", 200)));
        assert!(!holds(Some(&bucket), &entry("b", 100)));
        assert!(!holds(None, &a));
        // The same identity and end saying something else: damaged, or a tag moved.
        let other = Entry {
            identity: "a".to_string(),
            until: 100,
            value: 2,
        };
        assert!(!holds(Some(&bucket), &other.encode()));
        // Another instance's write in between: the merge again keeps both.
        let theirs = merge(None, &entry("b", 100), 0, 8).unwrap();
        assert!(!holds(Some(&theirs), &a));
        let again = merge(Some(&theirs), &a, 0, 8).unwrap();
        assert!(holds(Some(&again), &a) && holds(Some(&again), &entry("b", 100)));
    }

    #[test]
    fn buckets_are_bounded_and_chosen_under_the_secret() {
        let secret = StoreSecret::new([3; 32]);
        let k = key(&secret, Kind::Manifest, "ffffffffffffffff");
        assert!(k.starts_with("spin-registry-proxy:manifest:"));
        let bucket: u64 = k.rsplit(':').next().unwrap().parse().unwrap();
        assert!(bucket < Kind::Manifest.buckets());
        let all: u64 = Kind::BUCKETED.iter().map(|k| k.buckets()).sum();
        assert_eq!(all, MAX_BUCKETS);
        // Another secret spreads the same identities over other buckets.
        let other = StoreSecret::new([4; 32]);
        let moved = (0..64)
            .map(|i| format!("{i:064x}"))
            .filter(|id| key(&secret, Kind::Tag, id) != key(&other, Kind::Tag, id))
            .count();
        assert!(moved > 48, "{moved}");
    }
}
