"""A scriptable stand-in for an upstream registry, for behaviours distribution 2.8 cannot show.

The real registry (`docker-registry serve`) covers the happy path. Public registries misbehave in
ways it never does; each canned response below names the registry it imitates:

* `docker_hub_rate_limit`  - Docker Hub's pull rate limit: 429 TOOMANYREQUESTS with Retry-After.
* `hang`                   - an upstream that accepts the connection and then never answers.
* `quay_challenge`         - Quay's 401: several challenges in one WWW-Authenticate header.
* `artifact_registry_redirect` - Google Artifact Registry's *relative* 302 for blob GETs.
* `docker_hub_cdn_redirect`    - Docker Hub's absolute 307 from a blob GET to its CDN.
* `acr_tags_page`          - Azure Container Registry's *absolute* `Link: <https://...>; rel="next"`.
* `token_response`         - a Bearer token realm answer (`token` + `access_token` + `expires_in`).
* `blob`                   - a blob with Range support (206, Content-Range), as every registry/CDN.
* `Response(drop=True)`    - a keep-alive connection closed as idle by the server (every one does,
                             and load balancers after 60 s) just as a request is sent on it.

Every request is recorded (method, path, query, headers in arrival order, body) before it is
answered, so a test can assert what reached the upstream, including requests that hang.

Two ways to run it:

* In-process, in a thread, on a chosen loopback address and a port the kernel chooses::

      with UpstreamDouble(host="127.0.0.1") as up:
          up.route("/v2/", quay_challenge(up.url + "/v2/auth"))
          ... up.requests ...

* As a subprocess (for harness.Service), with static routes from a JSON file and a JSONL record::

      python3 upstream_double.py --host 127.0.0.1 --port 0 --routes r.json --record rec.jsonl

  r.json: [{"method": "GET", "path": "/v2/", "prefix": false,
            "response": {"status": 401, "headers": [["WWW-Authenticate", "..."]], "body": "...",
                         "hang": false, "delay": 0}}]
  `serve_subprocess()` below does that through harness.Service.
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import gzip
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable, Optional, Union
from urllib.parse import parse_qsl, urlsplit

# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Response:
    """A canned answer. `hang=True` never answers (until the double stops or `hang_for` passes)."""

    status: int = 200
    headers: list = field(default_factory=list)  # [(name, value)], order and repeats kept
    body: bytes = b""
    delay: float = 0.0  # seconds to wait before sending the status line
    hang: bool = False
    hang_for: float = 3600.0
    send_length: bool = True  # add Content-Length when the headers do not carry one
    cut: bool = False  # close the connection after the body, even if shorter than its length
    drip: float = 0.0  # seconds between the body's bytes, sent one at a time (a dripping upstream)
    # Read the request, then close without a byte of answer: what a request meets when sent on
    # a keep-alive connection the server closed as idle just then (hyper: "connection closed
    # before message completed"; Spin 4.0.2 reports it to the component as HttpProtocolError).
    drop: bool = False

    def header(self, name: str) -> Optional[str]:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


@dataclass
class Recorded:
    """One request as it reached the double."""

    method: str
    target: str  # request-target as sent: path plus ?query
    headers: list  # [(name, value)] in arrival order
    body: bytes
    client: tuple
    time: float

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urlsplit(self.target).query

    @property
    def params(self) -> list:
        return parse_qsl(self.query, keep_blank_values=True)

    def header(self, name: str) -> Optional[str]:
        vals = self.header_all(name)
        return vals[0] if vals else None

    def header_all(self, name: str) -> list:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header_names(self) -> set:
        return {k.lower() for k, _ in self.headers}

    def to_json(self) -> dict:
        return {"method": self.method, "target": self.target, "headers": self.headers,
                "body_b64": base64.b64encode(self.body).decode(), "client": list(self.client),
                "time": self.time}


Handler = Union[Response, Callable[[Recorded], Response]]


@dataclass
class Route:
    path: str
    response: Handler
    method: Optional[str] = None  # None: any method
    prefix: bool = False
    regex: bool = False
    times: Optional[int] = None  # answer this many times, then fall through to later routes

    def matches(self, req: Recorded) -> bool:
        if self.method and self.method.upper() != req.method:
            return False
        if self.times is not None and self.times <= 0:
            return False
        if self.regex:
            return re.fullmatch(self.path, req.path) is not None
        if self.prefix:
            return req.path.startswith(self.path)
        return req.path == self.path


# ---------------------------------------------------------------------------------------------
# Canned responses


def oci_error(status: int, code: str, message: str, detail=None, headers: Iterable = ()) -> Response:
    """An OCI error body, as every distribution-spec registry sends it."""
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": detail}]}).encode()
    return Response(status, [("Content-Type", "application/json; charset=utf-8"), *headers], body)


DOCKER_HUB_RATE_LIMIT_MESSAGE = (
    "You have reached your pull rate limit. You may increase the limit by authenticating and "
    "upgrading: https://www.docker.com/increase-rate-limit")


def docker_hub_rate_limit(retry_after: str = "3600") -> Response:
    """Docker Hub's anonymous pull rate limit.

    registry-1.docker.io answers manifest GETs past the limit with 429, an OCI error whose code is
    TOOMANYREQUESTS, the `ratelimit-*` headers and a Retry-After telling the client when to retry.
    """
    return oci_error(429, "TOOMANYREQUESTS", DOCKER_HUB_RATE_LIMIT_MESSAGE, headers=[
        ("Retry-After", retry_after),
        ("RateLimit-Limit", "100;w=21600"),
        ("RateLimit-Remaining", "0;w=21600"),
        ("Docker-RateLimit-Source", "203.0.113.7"),
    ])


def hang(seconds: float = 3600.0) -> Response:
    """An upstream that accepted the TCP connection and never sends a status line.

    Seen when a public registry is overloaded or a middlebox black-holes the reply: only the
    proxy's own upstream timeout ends the request. The handler is released when the double stops.
    """
    return Response(hang=True, hang_for=seconds)


def slow(response: Response, seconds: float) -> Response:
    """`response`, sent after `seconds` (a slow but working upstream)."""
    response.delay = seconds
    return response


def quay_challenge(realm: str, service: str = "quay.io", scope: str = "repository:x:pull",
                   basic_realm: str = "quay.io", style: str = "quay") -> Response:
    """Quay's 401: a Basic and a Bearer challenge in ONE WWW-Authenticate header.

    quay.io sends `Basic realm="quay.io", Bearer realm="https://quay.io/v2/auth",service="quay.io",
    scope="repository:x:pull"`. A regex over `realm="(.*?)"` picks the Basic realm.
    `style` varies the shape, as other registries do:
      "quay"       Basic first, Bearer params in realm/service/scope order (quay.io)
      "reordered"  Bearer first with params in another order, then Basic
      "separate"   the two challenges in two WWW-Authenticate header lines
      "escaped"    Bearer with an extra quoted param holding an escaped quote and a comma
    """
    bearer_params = {"realm": realm, "service": service, "scope": scope}

    def q(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    if style == "quay":
        bearer = "Bearer " + ",".join(f"{k}={q(v)}" for k, v in bearer_params.items())
        headers = [("WWW-Authenticate", f"Basic realm={q(basic_realm)}, {bearer}")]
    elif style == "reordered":
        bearer = f"Bearer scope={q(scope)}, service={q(service)}, realm={q(realm)}"
        headers = [("WWW-Authenticate", f"{bearer}, Basic realm={q(basic_realm)}")]
    elif style == "separate":
        bearer = "Bearer " + ",".join(f"{k}={q(v)}" for k, v in bearer_params.items())
        headers = [("WWW-Authenticate", f"Basic realm={q(basic_realm)}"),
                   ("WWW-Authenticate", bearer)]
    elif style == "escaped":
        tricky = q('say "hi", realm=x')
        bearer = (f'Bearer error="invalid_token",error_description={tricky},'
                  f"realm={q(realm)},service={q(service)},scope={q(scope)}")
        headers = [("WWW-Authenticate", f"Basic realm={q(basic_realm)}, {bearer}")]
    else:
        raise ValueError(style)
    return oci_error(401, "UNAUTHORIZED", "authentication required", headers=headers)


def bearer_challenge(realm: str, service: str, scope: Optional[str] = None) -> Response:
    """The single Bearer challenge of Docker Hub / distribution token auth."""
    params = f'realm="{realm}",service="{service}"' + (f',scope="{scope}"' if scope else "")
    return oci_error(401, "UNAUTHORIZED", "authentication required",
                     headers=[("WWW-Authenticate", f"Bearer {params}")])


def token_response(token: str = "upstream-token", expires_in: int = 300) -> Response:
    """A token realm's answer (Docker Hub's auth.docker.io sends both `token` and `access_token`)."""
    body = json.dumps({"token": token, "access_token": token, "expires_in": expires_in,
                       "issued_at": "2024-01-01T00:00:00Z"}).encode()
    return Response(200, [("Content-Type", "application/json")], body)


def artifact_registry_redirect(location: str = "/artifacts-downloads/namespaces/p/repositories/r/"
                               "downloads/ABCdef123?token=opaque%2Bsig") -> Response:
    """Google Artifact Registry answers blob GETs with a RELATIVE 302 on its own host.

    `Location: /artifacts-downloads/namespaces/<project>/repositories/<repo>/downloads/<id>`;
    it must be resolved against the upstream URL, query kept verbatim.
    """
    return Response(302, [("Location", location), ("Content-Type", "text/html; charset=utf-8")],
                    b'<a href="' + location.encode() + b'">Found</a>.\n')


def docker_hub_cdn_redirect(location: str) -> Response:
    """Docker Hub answers blob GETs with an absolute 307 to its CDN
    (production.cloudflare.docker.com), carrying a signed query string."""
    return Response(307, [("Location", location), ("Content-Type", "text/html; charset=utf-8")],
                    b'<a href="' + location.encode() + b'">Temporary Redirect</a>.\n')


def acr_tags_page(origin: str, name: str, tags: list, next_last: Optional[str], n: int) -> Response:
    """Azure Container Registry's tag list page: an ABSOLUTE Link header on the registry's own
    origin (`<https://x.azurecr.io/v2/<name>/tags/list?last=..&n=..>; rel="next"`), where
    distribution, Docker Hub and Quay send a relative one."""
    headers = [("Content-Type", "application/json; charset=utf-8")]
    if next_last is not None:
        headers.append(("Link", f'<{origin}/v2/{name}/tags/list?last={next_last}&n={n}>; rel="next"'))
    body = json.dumps({"name": name, "tags": tags}).encode()
    return Response(200, headers, body)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# Sample content the double serves in tests.
NAME = "team/app"  # two segments: no Docker Hub `library/` rule can apply
MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
               "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},
    "layers": [],
}, indent=3).encode()  # indent: bytes a re-serializer would change
BLOB = os.urandom(300_000)
BLOB_DIGEST = digest_of(BLOB)


def manifest(body: bytes, media_type: str = "application/vnd.oci.image.manifest.v1+json") -> Response:
    """A manifest answer as distribution sends it: exact bytes, type, digest, length."""
    return Response(200, [("Content-Type", media_type), ("Docker-Content-Digest", digest_of(body)),
                          ("Docker-Distribution-Api-Version", "registry/2.0"),
                          ("Etag", f'"{digest_of(body)}"')], body)


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def blob(data: bytes, content_type: str = "application/octet-stream") -> Callable[[Recorded], Response]:
    """A blob with single-range support (bytes=a-b, bytes=a-, bytes=-n), as registries and CDNs
    (Docker Hub's Cloudflare, S3, GCS) serve them: 206 + Content-Range, or 416."""
    digest = digest_of(data)

    def handle(req: Recorded) -> Response:
        base = [("Content-Type", content_type), ("Docker-Content-Digest", digest),
                ("Accept-Ranges", "bytes"), ("Etag", f'"{digest}"')]
        rng = req.header("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if m and (m.group(1) or m.group(2)):
                size = len(data)
                if m.group(1):
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else size - 1
                else:
                    start, end = max(0, size - int(m.group(2))), size - 1
                end = min(end, size - 1)
                if start >= size or start > end:
                    return Response(416, base + [("Content-Range", f"bytes */{size}")], b"")
                return Response(206, base + [("Content-Range", f"bytes {start}-{end}/{size}")],
                                data[start:end + 1])
        return Response(200, base, data)

    return handle


# ---------------------------------------------------------------------------------------------
# Whole registries, imitated


class ImageStore:
    """Images from skopeo `dir:` copies (images.py), by repository: manifests by tag and by
    digest with their media types, blobs by digest."""

    def __init__(self):
        self.manifests = {}  # (repo, tag or digest) -> (bytes, media type)
        self.blobs = {}      # digest -> path

    def add(self, repo: str, tag: str, image_dir) -> None:
        image_dir = Path(image_dir)
        top = (image_dir / "manifest.json").read_bytes()
        for raw in [top] + [p.read_bytes() for p in image_dir.glob("*.manifest.json")]:
            doc = json.loads(raw)
            mt = doc.get("mediaType") or ("application/vnd.oci.image.index.v1+json"
                                          if "manifests" in doc else
                                          "application/vnd.oci.image.manifest.v1+json")
            self.manifests[(repo, digest_of(raw))] = (raw, mt)
            if raw is top:
                self.manifests[(repo, tag)] = (raw, mt)
            for layer in [doc.get("config")] + doc.get("layers", []):
                if layer:
                    self.blobs[layer["digest"]] = image_dir / layer["digest"].split(":")[1]

    def repos(self):
        return sorted({r for r, _ in self.manifests})


_PATH = re.compile(r"/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


class ImitatedRegistry:
    """A public registry's behaviour around real image bytes, on the doubles of a test:
    `up` is the registry's host, `auth` its token realm's, `storage` where it redirects blobs.
    Every behaviour names the registry it imitates and where that is documented or seen:

    ghcr        GHCR asks for a token even for public images (anonymous token from
                https://ghcr.io/token, scope in the challenge) and redirects blob GETs (307) to
                pkg-containers.githubusercontent.com with a signed query.
    quay        Quay challenges with `Basic realm="quay.io", Bearer realm=".../v2/auth"`, pages
                tags with an opaque `next_page` in its Links (quay/quay endpoints/v2/tag.py),
                and redirects blobs (302) to its CDN / S3.
    k8s         registry.k8s.io (kubernetes/registry.k8s.io, cmd/archeio) redirects every
                /v2/ request (307) to a regional Artifact Registry host under
                /v2/k8s-artifacts-prod/images/, which asks for an anonymous token of its own.
    ecr-public  ECR Public's realm is https://public.ecr.aws/token/ (trailing slash), anonymous
                tokens; blob GETs redirect (307) to CloudFront.
    mcr         MCR asks for no credentials at all and redirects blobs (307) to
                <region>.data.mcr.microsoft.com.
    open-v2     A registry whose /v2/ answers 200 anonymously while repositories challenge
                (ahmetb/serverless-registry-proxy#28).
    harbor      Harbor's challenge carries no scope (`Bearer realm=".../service/token",
                service="harbor-registry"`).
    gzip        A registry (behind a compressing front) that sends manifests gzip-encoded even
                when asked for identity: the bytes must pass untouched.
    """

    def __init__(self, kind: str, up, auth, storage, images: ImageStore):
        self.kind, self.up, self.auth, self.storage, self.images = kind, up, auth, storage, images
        self.tokens = set()
        self.token_requests = 0
        region = {"k8s": auth}.get(kind)  # the Artifact Registry host
        self.serving = region or up       # where the registry API itself answers
        self.api_prefix = "k8s-artifacts-prod/images/" if kind == "k8s" else ""
        realm_host = {"k8s": auth, "ghcr": up, "quay": up, "harbor": up}.get(kind, auth)
        self.realm = realm_host.url + {"ghcr": "/token", "quay": "/v2/auth",
                                       "ecr-public": "/token/", "harbor": "/service/token",
                                       "k8s": "/v2/token"}.get(kind, "/token")
        realm_host.route(urlsplit(self.realm).path, self._token)
        if kind == "k8s":
            up.route("/v2/", self._k8s_redirect, prefix=True)
        self.serving.route("/v2/", self._api, prefix=True)
        storage.route("/storage/", self._storage, prefix=True)

    # -- auth
    def _needs_token(self, req: Recorded) -> bool:
        if self.kind in ("mcr", "gzip"):
            return False
        if self.kind == "open-v2" and req.path == "/v2/":
            return False
        got = (req.header("Authorization") or "")[7:]
        return got not in self.tokens

    def _challenge(self, req: Recorded) -> Response:
        m = _PATH.match(req.path)
        scope = f"repository:{m.group('name')}:pull" if m else None
        bearer = f'Bearer realm="{self.realm}",service="{self.kind}.example"'
        if scope and self.kind != "harbor":
            bearer += f',scope="{scope}"'
        value = f'Basic realm="quay.io", {bearer}' if self.kind == "quay" else bearer
        return oci_error(401, "UNAUTHORIZED", "authentication required",
                         headers=[("WWW-Authenticate", value)])

    def _token(self, req: Recorded) -> Response:
        self.token_requests += 1
        token = f"{self.kind}-anon-{len(self.tokens)}"
        self.tokens.add(token)
        return token_response(token)

    # -- the API
    def _k8s_redirect(self, req: Recorded) -> Response:
        rest = req.path[len("/v2/"):]
        target = f"{self.auth.url}/v2/{self.api_prefix}{rest}" if rest else f"{self.auth.url}/v2/"
        return Response(307, [("Location", target)], b"")

    def _api(self, req: Recorded) -> Response:
        if self._needs_token(req):
            return self._challenge(req)
        if req.path == "/v2/":
            return Response(200, [("Content-Type", "application/json")], b"{}")
        if req.path.endswith("/tags/list"):
            return self._tags(req)
        m = _PATH.match(req.path)
        if not m:
            return oci_error(404, "NAME_UNKNOWN", "repository name not known to registry")
        name = m.group("name")[len(self.api_prefix):] if m.group("name").startswith(self.api_prefix) else None
        if name is None:
            return oci_error(404, "NAME_UNKNOWN", "repository name not known to registry")
        ref = m.group("ref")
        if m.group("kind") == "manifests":
            found = self.images.manifests.get((name, ref))
            if not found:
                return oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            raw, mt = found
            headers = [("Content-Type", mt), ("Docker-Content-Digest", digest_of(raw))]
            if self.kind == "gzip":
                # MTIME 0, as nginx's gzip filter writes it: with a timestamp, two answers a
                # second apart differ (test_registries compares a direct one with a proxied one).
                body = gzip.compress(raw, mtime=0)
                return Response(200, headers + [("Content-Encoding", "gzip")], body)
            return Response(200, headers, raw)
        path = self.images.blobs.get(ref)
        if not path:
            return oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        if self.kind in ("ghcr", "quay", "ecr-public", "mcr", "k8s"):
            # Artifact Registry, behind registry.k8s.io, sends blobs on to Cloud Storage (302).
            status = 302 if self.kind in ("quay", "k8s") else 307
            loc = f"{self.storage.url}/storage/{ref}?sig=" + hashlib.sha256(ref.encode()).hexdigest()[:16]
            return Response(status, [("Location", loc)], b"")
        return blob(path.read_bytes())(req)

    def _tags(self, req: Recorded) -> Response:
        name = req.path[len("/v2/"):-len("/tags/list")][len(self.api_prefix):]
        tags = sorted(t for (r, t) in self.images.manifests if r == name and ":" not in t)
        if not tags:
            return oci_error(404, "NAME_UNKNOWN", "repository name not known to registry")
        q = dict(req.params)
        if self.kind != "quay":
            return Response(200, [("Content-Type", "application/json")],
                            json.dumps({"name": name, "tags": tags}).encode())
        # Quay: pages of n, the next one named by an opaque token.
        n = int(q.get("n", "2"))
        start = int(base64.urlsafe_b64decode(q["next_page"]).decode()) if "next_page" in q else 0
        page = tags[start:start + n]
        headers = [("Content-Type", "application/json")]
        if start + n < len(tags):
            token = base64.urlsafe_b64encode(str(start + n).encode()).decode()
            headers.append(("Link", f'</v2/{name}/tags/list?n={n}&next_page={token}>; rel="next"'))
        return Response(200, headers, json.dumps({"name": name, "tags": page}).encode())

    def _storage(self, req: Recorded) -> Response:
        digest = req.path[len("/storage/"):]
        path = self.images.blobs.get(digest)
        if not path or "sig" not in dict(req.params):
            return Response(403, [("Content-Type", "application/xml")],
                            b"<Error><Code>AccessDenied</Code></Error>")
        return blob(path.read_bytes())(req)


# ---------------------------------------------------------------------------------------------
# Server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, double: "UpstreamDouble"):
        self.double = double
        super().__init__(addr, _Handler)

    def handle_error(self, request, client_address):
        # A peer that hangs up mid-request (tests that cut bodies do this) is not an error.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "upstream-double/1"
    timeout = 60  # idle keep-alive connections end by themselves

    def log_message(self, fmt, *args):  # quiet
        pass

    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline()
                if not line:
                    break
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                out += self.rfile.read(size)
                self.rfile.readline()
            return bytes(out)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self):
        double: UpstreamDouble = self.server.double
        body = self._read_body()
        req = Recorded(self.command, self.path, list(self.headers.items()), body,
                       self.client_address, time.time())
        double._record(req)
        resp = double._resolve(req)
        if resp.drop:
            self.close_connection = True
            return
        if resp.hang:
            double._release.wait(resp.hang_for)
            self.close_connection = True
            return
        if resp.delay:
            if double._release.wait(resp.delay):
                self.close_connection = True
                return
        self.send_response_only(resp.status)
        names = {k.lower() for k, _ in resp.headers}
        for k, v in resp.headers:
            self.send_header(k, v)
        if "date" not in names:
            self.send_header("Date", self.date_time_string())
        if resp.send_length and "content-length" not in names and "transfer-encoding" not in names:
            self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if self.command != "HEAD" and resp.status not in (204, 304) and resp.body:
            try:
                if resp.drip:
                    for i in range(len(resp.body)):
                        if double._release.wait(resp.drip):
                            break
                        self.wfile.write(resp.body[i:i + 1])
                        self.wfile.flush()
                else:
                    self.wfile.write(resp.body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
        if resp.cut:
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle
    do_TRACE = do_CONNECT = _handle


class UpstreamDouble:
    """A threaded HTTP/1.1 server on `host:port` (port 0: a free one) answering from routes.

    Routes are tried in the order added; the first match answers. Unmatched requests get
    `default` (404 NAME_UNKNOWN unless changed). Every request is recorded in `requests`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, name: str = "upstream",
                 default: Optional[Handler] = None, record_path: Optional[Path] = None):
        self.name = name
        self._routes: list[Route] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.requests: list[Recorded] = []
        self.default = default or oci_error(404, "NAME_UNKNOWN", "repository name not known to registry")
        self.record_path = record_path
        self._server = _Server((host, port), self)
        self.host, self.port = self._server.server_address[:2]
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle
    @property
    def url(self) -> str:
        """The origin, e.g. http://127.0.0.1:40123 (what Spin variables take)."""
        return f"http://{self.host}:{self.port}"

    origin = url

    def start(self) -> "UpstreamDouble":
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"double-{self.name}",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # frees hanging handlers
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- configuration
    def route(self, path: str, response: Handler, method: Optional[str] = None, prefix: bool = False,
              regex: bool = False, times: Optional[int] = None) -> "UpstreamDouble":
        with self._lock:
            self._routes.append(Route(path, response, method, prefix, regex, times))
        return self

    def reset(self) -> None:
        """Forget routes and recorded requests (between tests sharing one double)."""
        with self._lock:
            self._routes.clear()
            self.requests.clear()

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- inspection
    def requests_to(self, path: str, method: Optional[str] = None) -> list:
        with self._lock:
            return [r for r in self.requests
                    if r.path == path and (method is None or r.method == method.upper())]

    def wait_for(self, predicate: Callable[[Recorded], bool], timeout: float = 5.0) -> Optional[Recorded]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for r in self.requests:
                    if predicate(r):
                        return r
            time.sleep(0.02)
        return None

    # -- internals
    def _record(self, req: Recorded) -> None:
        with self._lock:
            self.requests.append(req)
        if self.record_path:
            with open(self.record_path, "a") as f:
                f.write(json.dumps(req.to_json()) + "\n")

    def _resolve(self, req: Recorded) -> Response:
        with self._lock:
            chosen = None
            for r in self._routes:
                if r.matches(req):
                    chosen = r
                    if r.times is not None:
                        r.times -= 1
                    break
        handler = chosen.response if chosen else self.default
        resp = handler(req) if callable(handler) else handler
        # a canned Response may be shared between requests: copy the mutable parts
        return dataclasses.replace(resp, headers=list(resp.headers))


# ---------------------------------------------------------------------------------------------
# Subprocess mode


def _response_from_json(d: dict) -> Response:
    body = base64.b64decode(d["body_b64"]) if "body_b64" in d else d.get("body", "").encode()
    return Response(d.get("status", 200), [tuple(h) for h in d.get("headers", [])], body,
                    d.get("delay", 0.0), d.get("hang", False), d.get("hang_for", 3600.0))


def serve_subprocess(name: str, routes: list, host: str = "127.0.0.1"):
    """Start the double as a subprocess through harness.Service, on a port the kernel chooses
    (it prints it); returns (service, record_path).

    Read recorded requests with `read_record(record_path)`.
    """
    import harness  # local import: only this helper needs it

    harness.WORK.mkdir(parents=True, exist_ok=True)
    files = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=harness.WORK))
    routes_path, record_path = files / "routes.json", files / "record.jsonl"
    routes_path.write_text(json.dumps(routes))
    record_path.write_text("")
    svc = harness.Service(name, [sys.executable, Path(__file__).resolve(), "--host", host,
                                 "--port", "0", "--routes", routes_path,
                                 "--record", record_path], host=host, port=0,
                          announce=harness.ANNOUNCED)
    return svc, record_path


def read_record(record_path) -> list:
    out = []
    for line in Path(record_path).read_text().splitlines():
        d = json.loads(line)
        out.append(Recorded(d["method"], d["target"], [tuple(h) for h in d["headers"]],
                            base64.b64decode(d["body_b64"]), tuple(d["client"]), d["time"]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--routes", help="JSON file: list of {method, path, prefix, regex, response}")
    ap.add_argument("--record", help="append every request as one JSON line to this file")
    args = ap.parse_args(argv)
    double = UpstreamDouble(args.host, args.port, record_path=Path(args.record) if args.record else None)
    if args.routes:
        for r in json.loads(Path(args.routes).read_text()):
            double.route(r["path"], _response_from_json(r["response"]), r.get("method"),
                         r.get("prefix", False), r.get("regex", False), r.get("times"))
    print(f"listening on {double.url}", flush=True)
    try:
        double._server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.exit(main())
