"""Client wrappers for the end-to-end tests: raw HTTP, skopeo, podman, docker, containerd/ctr."""
import base64
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

from harness import WORK, Service

import images

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


# ---------------------------------------------------------------- processes

def run(argv, env=None, timeout=600, input=None, check=True, cwd=None):
    """Run a command; on failure raise AssertionError showing the command and its output."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    argv = [str(a) for a in argv]
    started = time.monotonic()
    try:
        p = subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=timeout,
                           input=input, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"timed out after {timeout}s: {' '.join(argv)}\n"
                             f"stdout:\n{(e.stdout or b'')[-4000:]}\nstderr:\n{(e.stderr or b'')[-4000:]}")
    p.elapsed = time.monotonic() - started
    if check and p.returncode != 0:
        raise AssertionError(f"command failed ({p.returncode}, {p.elapsed:.1f}s): {' '.join(argv)}\n"
                             f"stdout:\n{p.stdout[-6000:]}\nstderr:\n{p.stderr[-6000:]}")
    return p


CREATED = []  # temporary directories made for one test; conftest removes them afterwards


def tmpdir(prefix: str, track=True) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=WORK))
    if track:
        CREATED.append(d)
    return d


# ---------------------------------------------------------------- HTTP

class Response:
    def __init__(self, status, reason, headers, body, url, method):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body
        self.url, self.method = url, method

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        hdrs = "\n".join(f"  {k}: {v}" for k, v in self.headers)
        body = self.body[:1500]
        return f"<{self.method} {self.url} -> {self.status} {self.reason}\n{hdrs}\n  body: {body!r}>"


def http_request(method, url, headers=None, body=None, timeout=120, read_body=True) -> Response:
    """One HTTP request, redirects not followed."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read() if read_body else b""
        return Response(r.status, r.reason, r.getheaders(), data, url, method)
    finally:
        conn.close()


class Resp:
    """One raw exchange's answer (see `call`)."""

    def __init__(self, status, headers, body, elapsed):
        self.status, self.headers, self.body, self.elapsed = status, headers, body, elapsed

    def header(self, name):
        vals = self.header_all(name)
        return vals[0] if vals else None

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def describe(self):
        return f"{self.status} {self.headers} {self.body[:400]!r}"

    __repr__ = describe


def call(base: str, method: str, path: str, headers=(), body=None, timeout: float = 30.0) -> Resp:
    """One request on a fresh connection, headers sent exactly as given (none added but
    Host and, with a body, Content-Length)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.putrequest(method, path, skip_accept_encoding=True,
                        skip_host=any(k.lower() == "host" for k, _ in headers))
        for k, v in headers:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, r.getheaders(), data, time.monotonic() - t0)
    finally:
        conn.close()


def oci_error_of(resp) -> dict:
    """Assert `resp` is an OCI error body with application/json and return its first error."""
    ctype = resp.header("Content-Type") or ""
    assert ctype.startswith("application/json"), f"error not JSON: {resp!r}"
    doc = resp.json()
    assert isinstance(doc.get("errors"), list) and doc["errors"], repr(resp)
    err = doc["errors"][0]
    assert isinstance(err.get("code"), str) and err["code"], repr(resp)
    assert isinstance(err.get("message"), str), repr(resp)
    return err


def parse_challenges(value: str) -> list:
    """Parse a WWW-Authenticate value into [(scheme_lower, {param: value})] (RFC 7235)."""
    out = []
    i, n = 0, len(value)

    def skip_ws(j):
        while j < n and value[j] in " \t,":
            j += 1
        return j

    i = skip_ws(i)
    while i < n:
        j = i
        while j < n and value[j] not in " \t,":
            j += 1
        scheme = value[i:j]
        params = {}
        i = j
        while True:
            k = i
            while k < n and value[k] in " \t":
                k += 1
            # token68 or auth-param: look for name=
            m = k
            while m < n and value[m] not in "= \t,":
                m += 1
            if m < n and value[m] == "=" and m > k:
                name = value[k:m].lower()
                m += 1
                while m < n and value[m] in " \t":
                    m += 1
                if m < n and value[m] == '"':
                    m += 1
                    buf = []
                    while m < n and value[m] != '"':
                        if value[m] == "\\" and m + 1 < n:
                            m += 1
                        buf.append(value[m])
                        m += 1
                    m += 1
                    params[name] = "".join(buf)
                else:
                    s = m
                    while m < n and value[m] not in " \t,":
                        m += 1
                    params[name] = value[s:m]
                while m < n and value[m] in " \t":
                    m += 1
                if m < n and value[m] == ",":
                    i = m + 1
                    continue
                i = m
                break
            i = k
            break
        out.append((scheme.lower(), params))
        i = skip_ws(i)
    return out


def bearer_challenge(resp: Response) -> dict:
    for value in resp.header_all("WWW-Authenticate"):
        for scheme, params in parse_challenges(value):
            if scheme == "bearer":
                return params
    return None


def only_bearer(resp) -> dict:
    """The params of a response's one challenge, which must be Bearer."""
    values = resp.header_all("WWW-Authenticate")
    assert len(values) == 1, f"want exactly one WWW-Authenticate: {resp!r}"
    challenges = parse_challenges(values[0])
    assert len(challenges) == 1 and challenges[0][0] == "bearer", f"{challenges}: {resp!r}"
    return challenges[0][1]


def basic_header(creds) -> str:
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


class RegistryHTTP:
    """A minimal OCI distribution client that answers Basic and Bearer challenges like docker.

    `base` is the registry (or proxy) origin. Tokens are fetched with GET and Basic credentials.
    Every response is appended to `self.log`.
    """

    def __init__(self, base: str, creds=None):
        self.base = base.rstrip("/")
        self.creds = creds
        self.auth = None
        self.log = []
        self.token_responses = []

    def _token(self, challenge: dict, scope=None):
        q = []
        if "service" in challenge:
            q.append(("service", challenge["service"]))
        scopes = [scope] if scope else ([challenge["scope"]] if challenge.get("scope") else [])
        for s in scopes:
            q.append(("scope", s))
        url = challenge["realm"] + ("?" + urlencode(q) if q else "")
        headers = {"Authorization": basic_header(self.creds)} if self.creds else {}
        r = http_request("GET", url, headers)
        self.token_responses.append(r)
        assert r.status == 200, f"token request failed: {r!r}"
        body = r.json()
        tok = body.get("token") or body.get("access_token")
        assert tok, f"token response without token: {r!r}"
        return "Bearer " + tok

    def request(self, method, path, headers=None, body=None, scope=None, absolute=False):
        url = path if absolute else self.base + path
        hdrs = dict(headers or {})
        if self.auth:
            hdrs["Authorization"] = self.auth
        r = http_request(method, url, hdrs, body)
        self.log.append(r)
        if r.status != 401:
            return r
        challenges = []
        for v in r.header_all("WWW-Authenticate"):
            challenges += parse_challenges(v)
        for scheme, params in challenges:
            if scheme == "bearer" and "realm" in params:
                self.auth = self._token(params, scope)
                break
            if scheme == "basic" and self.creds:
                self.auth = basic_header(self.creds)
                break
        else:
            return r
        hdrs["Authorization"] = self.auth
        r = http_request(method, url, hdrs, body)
        self.log.append(r)
        return r


def walk_links(client: RegistryHTTP, first_path: str, scope=None, limit=100):
    """Follow `Link: <...>; rel="next"` from first_path; returns the list of responses."""
    pages = []
    path = first_path
    while path and len(pages) < limit:
        r = client.request("GET", path, scope=scope)
        assert r.status == 200, f"page {len(pages)} failed: {r!r}"
        pages.append(r)
        link = r.header("Link")
        if not link:
            break
        target = link.split(";")[0].strip()
        assert target.startswith("<") and target.endswith(">"), f"malformed Link {link!r}"
        target = target[1:-1]
        assert 'rel="next"' in link, f"Link without rel=next: {link!r}"
        nxt = urljoin(client.base + path, target)
        assert nxt.startswith(client.base + "/"), (
            f"Link leaves {client.base}: {link!r} (from {path})")
        path = nxt[len(client.base):]
    return pages


# ---------------------------------------------------------------- digests

def sha256_bytes(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def verify_dir_image(dest: Path, expected: dict):
    """A skopeo dir: copy must hold exactly the expected manifests and blobs, each file's sha256
    matching its name."""
    got = images.describe(dest)
    assert got["digest"] == expected["digest"], (
        f"top manifest digest {got['digest']} != registry's {expected['digest']}\n"
        f"{(dest / 'manifest.json').read_text()[:2000]}")
    assert set(got["instances"]) == set(expected["instances"]), (
        f"instances {sorted(got['instances'])} != {sorted(expected['instances'])}")
    for dgst in got["instances"]:
        if dgst == got["digest"]:
            continue
        f = dest / (dgst.split(":")[1] + ".manifest.json")
        assert images.sha256_file(f) == dgst, f"instance manifest {f} does not hash to {dgst}"
    assert got["blobs"] == expected["blobs"], f"blobs {got['blobs']} != {expected['blobs']}"
    for b in got["blobs"]:
        f = dest / b.split(":")[1]
        assert f.exists(), f"blob {b} missing from {dest}"
        assert images.sha256_file(f) == b, f"blob file {f} does not hash to {b}"


# ---------------------------------------------------------------- skopeo

def _creds_args(flag, creds):
    return [flag, f"{creds[0]}:{creds[1]}"] if creds else []


def skopeo_inspect_raw(ref: str, creds=None, check=True):
    return run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                *_creds_args("--creds", creds), f"docker://{ref}"], check=check, timeout=120)


def skopeo_copy_all(ref: str, creds=None, check=True):
    dest = tmpdir("skopeo-copy-")
    shutil.rmtree(dest)
    p = run(["skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
             *_creds_args("--src-creds", creds), f"docker://{ref}", f"dir:{dest}"],
            check=check, timeout=300)
    p.dest = dest
    return p


def skopeo_list_tags(repo_ref: str, creds=None):
    p = run(["skopeo", "list-tags", "--tls-verify=false", *_creds_args("--creds", creds),
             f"docker://{repo_ref}"], timeout=120)
    return json.loads(p.stdout)


def skopeo_push(src_dir: Path, ref: str, creds=None):
    run(["skopeo", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
         *_creds_args("--dest-creds", creds), f"dir:{src_dir}", f"docker://{ref}"], timeout=300)


# ---------------------------------------------------------------- oras

def oras_pull(ref: str, creds=None, basic=False, platform="amd64") -> str:
    """Pull an image with oras-py (the ORAS project's Python SDK; PyPI `oras` has no CLI):
    the manifest (the `platform` instance of an index), the config and every layer, each
    checked against its digest. `basic`: the registry asks for Basic credentials, which oras
    sends with each request (its token backend expects a Bearer challenge). Returns the top
    manifest's digest. One client per pull: oras keeps one token for every repository."""
    import oras.provider
    host, rest = ref.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    reg = oras.provider.Registry(hostname=host, insecure=True,
                                 auth_backend="basic" if basic else "token")
    if creds:
        reg.auth.set_basic_auth(*creds)
    base = f"http://{host}/v2/{repo}"

    def get(url, accept=None, stream=False):
        r = reg.do_request(url, headers={"Accept": accept} if accept else {}, stream=stream)
        assert r.status_code == 200, f"oras GET {url}: {r.status_code} {r.text[:500]}"
        return r

    raw = get(f"{base}/manifests/{tag}", MANIFEST_ACCEPT).content
    top = sha256_bytes(raw)
    doc = json.loads(raw)
    if "manifests" in doc:
        inst = next(m for m in doc["manifests"]
                    if m.get("platform", {}).get("architecture") == platform)
        raw = get(f"{base}/manifests/{inst['digest']}", MANIFEST_ACCEPT).content
        assert sha256_bytes(raw) == inst["digest"], f"{ref}: instance manifest digest"
        doc = json.loads(raw)
    for blob in [doc["config"]] + doc["layers"]:
        h = hashlib.sha256()
        for chunk in get(f"{base}/blobs/{blob['digest']}", stream=True).iter_content(1 << 20):
            h.update(chunk)
        assert "sha256:" + h.hexdigest() == blob["digest"], f"{ref}: blob {blob['digest']}"
    return top


# ---------------------------------------------------------------- podman

class Podman:
    def __init__(self):
        # podman refuses a runroot path longer than 50 characters
        self.dir = Path(tempfile.mkdtemp(prefix="e2e-podman-", dir="/tmp"))
        self.base = ["podman", "--root", self.dir / "root", "--runroot", self.dir / "rr",
                     "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                     "--events-backend", "none", "--tmpdir", self.dir / "tmp"]
        self.env = {"TMPDIR": str(self.dir / "tmp"), "REGISTRY_AUTH_FILE": str(self.dir / "auth.json")}
        (self.dir / "tmp").mkdir()
        (self.dir / "auth.json").write_text("{}")

    def __call__(self, *args, check=True, timeout=600):
        return run(self.base + list(args), env=self.env, check=check, timeout=timeout)

    def run_with_env(self, env: dict, *args, check=False, timeout=600):
        """podman with more environment (a registries.conf of the test's)."""
        return run(self.base + list(args), env={**self.env, **env}, check=check, timeout=timeout)

    def pull(self, ref, creds=None, check=True, platform=None):
        extra = ["--platform", platform] if platform else []
        return self("pull", "--tls-verify=false", *_creds_args("--creds", creds), *extra, ref,
                    check=check)

    def digest(self, ref):
        return self("image", "inspect", "--format", "{{.Digest}}", ref).stdout.strip()

    def cleanup(self):
        self("rmi", "--all", "--force", check=False)
        run(["podman", "--root", self.dir / "root", "--runroot", self.dir / "rr",
             "--storage-driver", "vfs", "system", "reset", "--force"], env=self.env, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- containerd / ctr

class Containerd:
    """containerd with its own root, state and socket; content isolated per namespace so every
    test namespace downloads every blob itself."""

    def __init__(self):
        self.dir = tmpdir("containerd-", track=False)
        self.address = str(self.dir / "containerd.sock")
        cfg = self.dir / "config.toml"
        cfg.write_text(f'''version = 2
root = "{self.dir / 'root'}"
state = "{self.dir / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.address}"
[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"
''')
        self.service = Service("containerd", ["containerd", "--config", cfg])
        deadline = time.monotonic() + 30
        while not os.path.exists(self.address):
            if self.service.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{self.service.log()[-3000:]}")
            time.sleep(0.1)
        self._n = 0

    def new_namespace(self) -> str:
        self._n += 1
        return f"e2e{os.getpid()}n{self._n}"

    def ctr(self, ns, *args, check=True, timeout=600):
        return run(["ctr", "-a", self.address, "-n", ns, *args], check=check, timeout=timeout,
                   env={"CONTAINERD_SNAPSHOTTER": "native"})

    def pull(self, ns, ref, user=None, all_platforms=False, platform=None, check=True,
             hosts_dir=None):
        """hosts_dir: a containerd hosts directory (hosts.toml per registry, as a node's
        /etc/containerd/certs.d), which decides the registry's hosts and their scheme."""
        args = ["images", "pull", "--http-dump"]
        args += ["--hosts-dir", str(hosts_dir)] if hosts_dir else ["--plain-http"]
        if user:
            args += ["--user", f"{user[0]}:{user[1]}"]
        if all_platforms:
            args += ["--all-platforms"]
        if platform:
            args += ["--platform", platform]
        return self.ctr(ns, *args, ref, check=check)

    def image_digest(self, ns, ref):
        out = self.ctr(ns, "images", "ls").stdout.splitlines()
        for line in out[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                return cols[2]
        raise AssertionError(f"{ref} not in `ctr images ls`:\n" + "\n".join(out))

    def content(self, ns) -> set:
        """Digests in the namespace's content store (`ctr content ls`)."""
        out = self.ctr(ns, "content", "ls").stdout.splitlines()
        return {line.split()[0] for line in out[1:] if line.strip()}

    def drop_namespace(self, ns):
        for ref in self.ctr(ns, "images", "ls", "-q", check=False).stdout.split():
            self.ctr(ns, "images", "rm", "--sync", ref, check=False)
        for d in self.content(ns) if self.service.proc.poll() is None else ():
            self.ctr(ns, "content", "rm", d, check=False)
        self.ctr(ns, "namespaces", "rm", ns, check=False)

    def stop(self):
        self.service.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- docker

class Docker:
    def __init__(self, containerd: Containerd, extra=(), name="dockerd"):
        """extra: more dockerd flags (`--registry-mirror=...`); name: its log's."""
        self.dir = tmpdir("dockerd-", track=False)
        self.sock = f"unix://{self.dir / 'docker.sock'}"
        self.service = Service(name, [
            "dockerd", f"--containerd={containerd.address}", "--data-root", self.dir / "data",
            "--exec-root", self.dir / "exec", "--pidfile", self.dir / "docker.pid",
            "-H", self.sock, "--storage-driver=vfs", "--iptables=false", "--bridge=none",
            "--ip-masq=false", "--userland-proxy=false", *extra,
        ])
        deadline = time.monotonic() + 60
        while True:
            p = run(["docker", "-H", self.sock, "version"], check=False, timeout=30,
                    env={"DOCKER_CONFIG": str(self.dir / "cfg")})
            if p.returncode == 0:
                break
            if self.service.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{self.service.log()[-3000:]}")
            time.sleep(0.3)

    def new_config(self) -> Path:
        """A fresh DOCKER_CONFIG directory (no credentials)."""
        return tmpdir("docker-config-")

    def cli(self, config: Path, *args, check=True, input=None, timeout=600):
        return run(["docker", "-H", self.sock, *args], env={"DOCKER_CONFIG": str(config)},
                   check=check, input=input, timeout=timeout)

    def login(self, config, host, creds, check=True):
        return self.cli(config, "login", "--username", creds[0], "--password-stdin", host,
                        input=creds[1] + "\n", check=check)

    def pull(self, config, ref, check=True, platform=None):
        extra = ["--platform", platform] if platform else []
        return self.cli(config, "pull", *extra, ref, check=check)

    def repo_digests(self, config, ref):
        out = self.cli(config, "image", "inspect", "--format", "{{json .RepoDigests}}", ref).stdout
        return json.loads(out)

    def emptied(self):
        """Itself with no images left from other tests (so every pull downloads), for a
        fixture to yield from; none left after either."""
        self.remove_all_images()
        yield self
        self.remove_all_images()

    def remove_all_images(self):
        cfg = self.dir / "cfg"
        ids = self.cli(cfg, "images", "-aq", check=False).stdout.split()
        if ids:
            self.cli(cfg, "rmi", "-f", *sorted(set(ids)), check=False)
        self.cli(cfg, "image", "prune", "-af", check=False)

    def stop(self):
        self.service.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
