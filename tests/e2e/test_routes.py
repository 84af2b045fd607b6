"""Many registries behind one domain: a route table with routes by host, by path and by
containerd's `ns` (mirror), in every auth mode (anonymous, the client's credentials, the
route's own credentials), pulled by skopeo, podman, docker, containerd's ctr and oras.

Host routes need two names for one listener: `localhost` and `127.0.0.1`. Mirror routes are
reached the way containerd reaches a mirror, through a hosts.toml (`?ns=`); dockerd's
`registry-mirrors`, which sends Docker Hub names without `ns`, gets its own dockerd. podman,
skopeo and oras send no `ns`: they reach a route by host or path only.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

import clients
import harness
import images
from clients import call, oci_error_of
from upstreams import ALICE

PULLED = list(images.IMAGE_REPOS.items())  # (image key, repository)
PUBLIC = [(k, n) for k, n in PULLED if not n.startswith("private/")]


def allowed(ups) -> list:
    return [ups.anon.url, ups.basic.url, ups.token.url, ups.token_server.url, ups.token.cdn.url]


def token_route(ups, **extra) -> dict:
    route = {"upstream": ups.token.url, "auth": ups.token_server.url, "cdn": ups.token.cdn.url}
    route.update(extra)
    return route


OWN = {"username": ALICE[0], "password": ALICE[1], "public": True}


def main_table(ups) -> list:
    return [
        {"name": "byhost", "host": "localhost", "upstream": ups.anon.url},
        {"name": "tok", "host": "127.0.0.1", "path": "tok", **token_route(ups, blob_redirect="pass")},
        {"name": "own", "host": "127.0.0.1", "path": "own",
         **token_route(ups, blob_redirect="follow", **OWN)},
        {"name": "mirror", "mirrors": ["registry.e2e.test"], **token_route(ups, blob_redirect="follow")},
        {"name": "mirror-own", "mirrors": ["own.e2e.test"], **token_route(ups, **OWN)},
    ]


def hosts_table(ups) -> list:
    """Host routes in the modes with credentials."""
    return [
        {"name": "basic-host", "host": "localhost", "upstream": ups.basic.url,
         "prefix": images.PREFIX},
        {"name": "own-host", "host": "127.0.0.1", **token_route(ups, blob_redirect="follow", **OWN)},
    ]


def start(ups, table, **kw):
    return harness.start_proxy({"routes": json.dumps(table)}, allowed_hosts=allowed(ups),
                               name="routes-proxy", **kw)


@pytest.fixture(scope="module")
def routed(ups, seeded):
    p = start(ups, main_table(ups))
    yield p
    p.stop()


@pytest.fixture(scope="module")
def hosted(ups, seeded):
    p = start(ups, hosts_table(ups))
    yield p
    p.stop()


class Where:
    """How a client reaches one route: registry host:port, repository prefix, the upstream
    registry and prefix (for the digests), credentials, and how oras authenticates."""

    def __init__(self, hostport, path, kind, prefix="", creds=None, basic=False):
        self.hostport, self.path, self.kind = hostport, path, kind
        self.prefix, self.creds, self.basic = prefix, creds, basic

    def ref(self, name, tag="latest"):
        return f"{self.hostport}/{self.path}{name}:{tag}"

    def digest(self, seeded, name):
        up = f"{self.prefix}/{name}" if self.prefix else name
        return seeded[self.kind][(up, "latest")]


def where(proxy, host, path, kind, **kw):
    return Where(f"{host}:{proxy.port}", path, kind, **kw)


def pull_with_every_client(w: Where, pulled, seeded, built, podman, docker, containerd, ns):
    cfg = docker.new_config()
    if w.creds:
        docker.login(cfg, w.hostport, w.creds)
    for key, name in pulled:
        ref, want = w.ref(name), w.digest(seeded, name)
        raw = clients.skopeo_inspect_raw(ref, w.creds)
        assert clients.sha256_bytes(raw.stdout.encode()) == want, f"skopeo {ref}"
        copy = clients.skopeo_copy_all(ref, w.creds)
        clients.verify_dir_image(copy.dest, built[key])
        podman.pull(ref, w.creds)
        assert want in podman("image", "inspect", "--format", "{{.RepoDigests}}", ref).stdout, ref
        p = docker.pull(cfg, ref)
        assert f"Digest: {want}" in p.stdout, f"docker pull {ref}:\n{p.stdout}"
        containerd.pull(ns, ref, user=w.creds)
        assert containerd.image_digest(ns, ref) == want, f"ctr {ref}"
        assert clients.oras_pull(ref, w.creds, basic=w.basic) == want, f"oras {ref}"


def test_three_routing_kinds_pull_every_image(routed, ups, seeded, built, podman, docker,
                                              containerd, ctr_ns, tmp_path):
    """The issue's acceptance: host, path and mirror routes in one table; every test image;
    digests equal to the registries'."""
    by_host = where(routed, "localhost", "", "anon")
    by_path = where(routed, "127.0.0.1", "tok/", "token")
    pull_with_every_client(by_host, PULLED[:-1], seeded, built, podman, docker, containerd, ctr_ns)
    pull_with_every_client(by_path, PUBLIC, seeded, built, podman, docker, containerd, ctr_ns)
    hosts = mirror_hosts(tmp_path, "registry.e2e.test", routed)
    for key, name in PUBLIC:
        ref = f"registry.e2e.test/{name}:latest"
        p = containerd.pull(ctr_ns, ref, hosts_dir=hosts)
        assert containerd.image_digest(ctr_ns, ref) == seeded["token"][(name, "latest")], p.stdout
        assert "ns=registry.e2e.test" in p.stdout + p.stderr, "ctr did not send ns to the mirror"


@pytest.mark.parametrize("cell", ["path-bearer", "host-basic"])
def test_client_credentials_every_client(cell, routed, hosted, seeded, built, podman, docker,
                                         containerd, ctr_ns):
    w = {
        "path-bearer": where(routed, "127.0.0.1", "tok/", "token", creds=ALICE),
        "host-basic": where(hosted, "localhost", "", "basic", prefix=images.PREFIX, creds=ALICE,
                            basic=True),
    }[cell]
    pulled = [p for p in PULLED if p[0] in ("multiarch", "private")]
    pull_with_every_client(w, pulled, seeded, built, podman, docker, containerd, ctr_ns)
    # And without them, the private repository stays private.
    p = clients.skopeo_inspect_raw(w.ref("private/secret"), check=False)
    assert p.returncode != 0, f"{cell}: private/secret served anonymously"


@pytest.mark.parametrize("cell", ["path-own", "host-own"])
def test_route_credentials_serve_anonymous_clients(cell, routed, hosted, seeded, built, podman,
                                                   docker, containerd, ctr_ns):
    w = {
        "path-own": where(routed, "127.0.0.1", "own/", "token"),
        "host-own": where(hosted, "127.0.0.1", "", "token"),
    }[cell]
    pulled = [p for p in PULLED if p[0] in ("multiarch", "private")]
    pull_with_every_client(w, pulled, seeded, built, podman, docker, containerd, ctr_ns)


def test_mirror_routes_in_every_auth_mode(routed, seeded, containerd, ctr_ns, tmp_path):
    """ctr through hosts.toml: anonymous, the client's credentials (its realm carries `ns`),
    and the route's own."""
    for registry, name, user in [("registry.e2e.test", "multiarch", None),
                                 ("registry.e2e.test", "private/secret", ALICE),
                                 ("own.e2e.test", "private/secret", None)]:
        hosts = mirror_hosts(tmp_path / registry.split(".")[0], registry, routed)
        ref = f"{registry}/{name}:latest"
        p = containerd.pull(ctr_ns, ref, user=user, hosts_dir=hosts)
        assert containerd.image_digest(ctr_ns, ref) == seeded["token"][(name, "latest")], p.stdout
    # Anonymous, the private repository of the plain mirror route stays private.
    hosts = mirror_hosts(tmp_path / "anon", "registry.e2e.test", routed)
    p = containerd.pull(ctr_ns, "registry.e2e.test/private/secret:latest", hosts_dir=hosts,
                        check=False)
    assert p.returncode != 0


def test_a_registry_no_route_mirrors_is_refused(routed, ups, containerd, ctr_ns, tmp_path):
    mark = ups.token_server.mark()
    hosts = mirror_hosts(tmp_path, "ghcr.io", routed)
    p = containerd.pull(ctr_ns, "ghcr.io/owner/app:latest", hosts_dir=hosts, check=False)
    assert p.returncode != 0
    assert "mirrors no registry" in p.stdout + p.stderr or "not found" in (p.stdout + p.stderr).lower()
    r = call(routed.url, "GET", "/v2/owner/app/manifests/latest?ns=ghcr.io")
    assert r.status == 404 and oci_error_of(r)["message"].startswith("this proxy mirrors no"), r
    for host, path in [("elsewhere.example", "/v2/multiarch/manifests/latest"),
                       ("127.0.0.1", "/v2/nowhere/multiarch/manifests/latest")]:
        r = call(routed.url, "GET", path, headers=[("Host", f"{host}:{routed.port}")])
        assert r.status == 404, r
    assert not ups.token_server.since(mark), "an unrouted request reached a realm"


def test_login_on_a_path_routed_domain(routed, docker):
    """`/v2/` there is the proxy's own (a challenge on its own realm): no one registry checks
    a login, so docker stores it unchecked, and the route checks it at each pull."""
    cfg = docker.new_config()
    host = f"127.0.0.1:{routed.port}"
    p = docker.login(cfg, host, ("alice", "wrong-password"))
    assert "Login Succeeded" in p.stdout
    p = docker.pull(cfg, f"{host}/tok/private/secret:latest", check=False)
    assert p.returncode != 0, "a wrong password pulled a private image"
    r = call(routed.url, "GET", "/v2/", headers=[("Host", host)])
    assert r.status == 401 and clients.only_bearer(r)["realm"] == f"http://{host}/token", r


def test_a_login_goes_only_to_the_registry_it_is_for(ups, seeded, docker, podman):
    """Two registries by path on one host, and a client with one login for the host: the route
    that says `client_credentials` gets it (a private pull works), the other takes the client
    as anonymous (its images pull, where the login used to be refused as unused, and the
    login never leaves for it)."""
    table = [{"name": "tok", "path": "tok", "client_credentials": True, **token_route(ups)},
             {"name": "open", "path": "open", "upstream": ups.anon.url}]
    p = start(ups, table)
    try:
        host = f"127.0.0.1:{p.port}"
        cfg = docker.new_config()
        docker.login(cfg, host, ALICE)
        mark = ups.token_server.mark()
        docker.pull(cfg, f"{host}/tok/private/secret:latest")
        private = seeded["token"][("private/secret", "latest")]
        assert any(d.endswith(private) for d in docker.repo_digests(cfg, f"{host}/tok/private/secret:latest"))
        docker.pull(cfg, f"{host}/open/multiarch:latest")
        public = seeded["anon"][("multiarch", "latest")]
        assert any(d.endswith(public) for d in docker.repo_digests(cfg, f"{host}/open/multiarch:latest"))
        podman.pull(f"{host}/open/multiarch:latest", creds=ALICE)
        asked = ups.token_server.since(mark)
        assert any(e.get("user") == ALICE[0] for e in asked), asked
        r = call(p.url, "GET", "/token?scope=repository:open/multiarch:pull&service=x",
                 headers=[("Host", host), ("Authorization", clients.basic_header(ALICE))])
        assert r.status == 200, r.describe()
    finally:
        p.stop()


def test_a_login_no_route_may_take_is_refused_saying_what_to_set(ups, seeded, podman):
    """Two registries by path on one host, neither saying `client_credentials`: a client's
    login reaches neither. skopeo with --creds for the token registry got an anonymous token,
    then "denied: requested access to the resource is denied", and nothing told the user or
    the operator why. Now the token request is refused with what to set, and the log says it;
    the open route still serves the same client."""
    table = [{"name": "tok", "path": "tok", **token_route(ups)},
             {"name": "open", "path": "open", "upstream": ups.anon.url}]
    p = start(ups, table)
    try:
        host = f"127.0.0.1:{p.port}"
        mark = ups.token_server.mark()
        out = clients.run(["skopeo", "inspect", "--tls-verify=false", "--creds", ":".join(ALICE),
                           f"docker://{host}/tok/private/secret:latest"], check=False)
        assert out.returncode != 0
        assert "client_credentials" in out.stderr, out.stderr
        assert not ups.token_server.since(mark), "the realm heard of the client"
        log = p.wait_log(lambda t: "client_credentials" in t)
        assert "/token status=401" in log and "client_credentials" in log, log[-2000:]
        # The open registry's images still pull for the same client.
        podman.pull(f"{host}/open/multiarch:latest", creds=ALICE)
    finally:
        p.stop()


def test_ten_pulls_through_a_credentialed_route_cost_one_token(ups, seeded):
    p = start(ups, main_table(ups))
    try:
        mark = ups.token_server.mark()
        for _ in range(10):
            clients.skopeo_copy_all(f"127.0.0.1:{p.port}/own/multiarch:latest")
        asked = [e for e in ups.token_server.since(mark) if e.get("user") == ALICE[0]]
        print(f"\nupstream token requests for 10 pulls through a credentialed route: {len(asked)}")
        assert len(asked) == 1, asked
    finally:
        p.stop()


def test_two_instances_on_one_redis_share_one_token(ups, seeded, redis_server, tmp_path):
    """Several instances (SpinKube replicas) with their key-value store on one Redis, through
    Spin's runtime config: one upstream token serves them all."""
    rc = tmp_path / "runtime-config.toml"
    rc.write_text(f'[key_value_store.default]\ntype = "redis"\nurl = "redis://127.0.0.1:{redis_server.port}"\n')
    a = start(ups, main_table(ups), runtime_config=rc)
    b = start(ups, main_table(ups), runtime_config=rc)
    try:
        mark = ups.token_server.mark()
        for proxy in (a, b, a, b):
            ref = f"127.0.0.1:{proxy.port}/own/private/secret:latest"
            raw = clients.skopeo_inspect_raw(ref)
            assert clients.sha256_bytes(raw.stdout.encode()) == seeded["token"][("private/secret", "latest")]
        asked = [e for e in ups.token_server.since(mark) if e.get("user") == ALICE[0]]
        assert len(asked) == 1, asked
        keys = subprocess.run(["redis-cli", "-p", str(redis_server.port), "--scan"],
                              capture_output=True, text=True).stdout.split()
        assert any(k.startswith("spin-registry-proxy:own-token:") for k in keys), keys
    finally:
        a.stop()
        b.stop()


def test_dockerd_registry_mirror(ups, seeded, containerd):
    """dockerd's `registry-mirrors` sends Docker Hub names (`library/...`) with no `ns`: a
    route for the host that mirrors docker.io, whose upstream stands in for Docker Hub."""
    table = [{"name": "hub", "host": "127.0.0.1", "preset": "dockerhub", "upstream": ups.anon.url,
              "auth": [], "cdn": [], "mirrors": ["docker.io"]}]
    p = start(ups, table)
    # A second dockerd beside the session's: its own containerd namespaces.
    d = clients.Docker(containerd, extra=[f"--registry-mirror=http://127.0.0.1:{p.port}",
                                          "--containerd-namespace=e2e-mirror",
                                          "--containerd-plugins-namespace=e2e-mirror-plugins"])
    try:
        cfg = d.new_config()
        out = d.pull(cfg, "e2e-small:latest")
        want = seeded["anon"][("library/e2e-small", "latest")]
        assert f"Digest: {want}" in out.stdout, out.stdout
        log = p.wait_log(lambda t: "/v2/library/e2e-small/manifests/" in t)
        assert "/v2/library/e2e-small/manifests/" in log
    finally:
        d.stop()
        p.stop()


def test_podman_reaches_a_path_route_as_its_mirror(routed, seeded, podman, tmp_path):
    """containers/image mirrors send no `ns`; a mirror location with a path reaches the route
    that owns that path."""
    conf = tmp_path / "registries.conf"
    conf.write_text(f'''[[registry]]
location = "registry.e2e.test"
[[registry.mirror]]
location = "127.0.0.1:{routed.port}/tok"
insecure = true
''')
    p = podman.run_with_env({"CONTAINERS_REGISTRIES_CONF": str(conf)}, "pull",
                            "registry.e2e.test/multiarch:latest")
    want = seeded["token"][("multiarch", "latest")]
    digests = podman("image", "inspect", "--format", "{{.Digest}}",
                     "registry.e2e.test/multiarch:latest").stdout
    assert p.returncode == 0 and want in digests + p.stdout, p.stdout + p.stderr


def test_a_route_with_a_path_is_also_a_mirror(ups, seeded, containerd, ctr_ns, tmp_path):
    """A route with a path that mirrors a registry: containerd's mirror requests (hosts.toml as
    the README shows it, `?ns=`) carry the registry's own names, the path's clients theirs."""
    table = [{"name": "tok", "host": "127.0.0.1", "path": "tok", "mirrors": ["tok.e2e.test"],
              **token_route(ups)},
             {"name": "byhost", "host": "localhost", "upstream": ups.anon.url}]
    p = start(ups, table)
    try:
        want = seeded["token"][("multiarch", "latest")]
        hosts = mirror_hosts(tmp_path, "tok.e2e.test", p)
        ref = "tok.e2e.test/multiarch:latest"
        out = containerd.pull(ctr_ns, ref, hosts_dir=hosts)
        assert containerd.image_digest(ctr_ns, ref) == want, out.stdout
        raw = clients.skopeo_inspect_raw(f"127.0.0.1:{p.port}/tok/multiarch:latest")
        assert clients.sha256_bytes(raw.stdout.encode()) == want
    finally:
        p.stop()


def test_containerd_s_merged_scope_reaches_the_next_route(routed, seeded):
    """containerd and BuildKit keep a host's first challenge and merge its scope into every
    later token request (containerd remotes/docker/authorizer.go: "reuse existing handler",
    `GetTokenScopes(ctx, ah.common.Scopes)`, sorted; a POST form when it has credentials):
    `docker build` with FROM lines on two path routes of one host asks for both routes'
    scopes. No client here keeps one handler across two repositories, so these are its
    requests, made as it makes them; the token it gets must pull the second route's image."""
    import json as _json
    from urllib.parse import urlencode
    base = f"http://127.0.0.1:{routed.port}"
    accept = {"Accept": clients.MANIFEST_ACCEPT}
    # A tag nobody asked for: a kept one is answered without a challenge.
    r = clients.http_request("HEAD", f"{base}/v2/tok/multiarch/manifests/merged-{time.time_ns()}",
                             accept)
    assert r.status == 401, r
    ch = clients.only_bearer(r)
    realm, first = ch["realm"], ch["scope"]
    assert first == "repository:tok/multiarch:pull", ch
    sep = "&" if "?" in realm else "?"
    for name, form in [("tok/multiarch", None), ("own/multiarch", None),
                       ("own/multiarch", {"grant_type": "password", "username": ALICE[0],
                                          "password": ALICE[1], "client_id": "containerd"})]:
        scopes = sorted({first, f"repository:{name}:pull"})
        if form is None:
            q = urlencode([("scope", s) for s in scopes] + [("service", ch["service"])])
            t = clients.http_request("GET", f"{realm}{sep}{q}")
        else:
            body = urlencode({**form, "scope": " ".join(scopes), "service": ch["service"]})
            t = clients.http_request("POST", realm, {"Content-Type":
                                     "application/x-www-form-urlencoded"}, body.encode())
        assert t.status == 200, (name, form, t)
        token = _json.loads(t.body)["token"]
        r = clients.http_request("HEAD", f"{base}/v2/{name}/manifests/latest",
                                 {**accept, "Authorization": f"Bearer {token}"})
        assert r.status == 200, (name, r)
        assert r.header("Docker-Content-Digest") == seeded["token"][("multiarch", "latest")], r


def mirror_hosts(base: Path, registry: str, proxy) -> Path:
    """A containerd hosts directory sending pulls of `registry` to the proxy as a mirror."""
    d = base / "hosts" / registry
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(f'''server = "https://{registry}"

[host."http://127.0.0.1:{proxy.port}"]
  capabilities = ["pull", "resolve"]
''')
    return base / "hosts"
