"""Fixtures for the end-to-end tests.

Session-scoped: the upstream registries (anonymous, Basic, token + CDN), the images (built once
and cached, pushed into every registry), containerd and dockerd. Function-scoped: proxies (one
test-host process each), podman stores, containerd namespaces, docker configs.

E2E_DIRECT=1 points the clients straight at the registries instead of the proxy (only for
working on the harness itself; tests about proxy-only behaviour are skipped then). Without it
the proxy binaries must exist, or every test that needs a proxy fails saying which is missing.
"""
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients  # noqa: E402
import harness  # noqa: E402
import images  # noqa: E402
import upstreams  # noqa: E402
from upstream_double import UpstreamDouble  # noqa: E402

WASM = harness.ROOT / "target" / "wasm32-wasip2" / "release" / "spin_registry_proxy.wasm"
DIRECT = os.environ.get("E2E_DIRECT") == "1"


def missing_binaries():
    runtime = [] if harness.SPIN_BIN else [harness.HOST_BIN]
    return [str(p) for p in (*runtime, WASM) if not p.exists()]


class Target:
    """Where a client sends its requests: a proxy in front of `registry`, or (E2E_DIRECT=1) the
    registry itself. Names passed to the helpers are client names (without the prefix)."""

    def __init__(self, registry, prefix, blob_redirect, seeded, proxy=None):
        self.registry = registry
        self.prefix = prefix.strip("/")
        self.blob_redirect = blob_redirect
        self.seeded = seeded
        self.proxy = proxy
        self.direct = proxy is None

    @property
    def hostport(self):
        return self.registry.hostport if self.direct else f"{self.proxy.host}:{self.proxy.port}"

    @property
    def url(self):
        return "http://" + self.hostport

    def upstream_name(self, name):
        return f"{self.prefix}/{name}" if self.prefix else name

    def name(self, name):
        """The repository name a client uses."""
        return self.upstream_name(name) if self.direct else name

    def ref(self, name, tag="latest"):
        return f"{self.hostport}/{self.name(name)}:{tag}"

    def digest(self, name, tag="latest"):
        return self.seeded[self.registry.kind][(self.upstream_name(name), tag)]

    def http(self, creds=None):
        return clients.RegistryHTTP(self.url, creds)

    def log(self):
        return self.proxy.log() if self.proxy else "(direct mode: no proxy)"

    def __repr__(self):
        mode = "direct" if self.direct else f"proxy {self.hostport}"
        return (f"<Target {mode} -> {self.registry.kind} {self.registry.url} "
                f"prefix={self.prefix!r} blob_redirect={self.blob_redirect}>")


@pytest.fixture(scope="session")
def ups():
    u = upstreams.Upstreams()
    yield u
    u.stop()


@pytest.fixture(scope="session")
def built():
    return images.build_all()


@pytest.fixture(scope="session")
def seeded(ups, built):
    with ThreadPoolExecutor(3) as pool:
        futures = {kind: pool.submit(images.seed, reg, built) for kind, reg in ups.registries.items()}
        return {kind: f.result() for kind, f in futures.items()}


@pytest.fixture
def make_target(request, ups, seeded):
    """make_target(kind, prefix="", blob_redirect="pass", **variables) -> Target."""
    started = []
    request.node.e2e_proxies = started

    def make(kind, prefix="", blob_redirect="pass", paged_tags=False, front=None, **extra):
        """paged_tags: put tagpager.py between proxy and registry (distribution 2.8 does not
        paginate tags/list); front="gzip": nginx compressing JSON in front of the registry."""
        front = "paged" if paged_tags else front
        reg = ups.front(kind, front) if front else ups.registries[kind]
        if DIRECT:
            return Target(reg, prefix, blob_redirect, seeded)
        missing = missing_binaries()
        if missing:
            pytest.fail("the proxy is not built; missing: " + ", ".join(missing) +
                        " (build the component with `cargo build --target wasm32-wasip2 "
                        "--release` and the host in tests/host; or set E2E_DIRECT=1 to run the "
                        "harness against the registries directly)", pytrace=False)
        variables = {
            "upstream": reg.url,
            "upstream_auth": ups.token_server.url,
            "upstream_cdn": ups.token.cdn.url,
            "repository_prefix": prefix,
            "public_url": "",
            "blob_redirect": blob_redirect,
            "home": "",
        }
        variables.update(extra)
        proxy = harness.start_proxy(variables)
        started.append(proxy)
        return Target(reg, prefix, blob_redirect, seeded, proxy)

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def needs_proxy():
    """For tests of what only the proxy does (realm, prefix rewriting, redirect handling)."""
    if DIRECT:
        pytest.skip("checks proxy behaviour; E2E_DIRECT=1 talks to the registry")


@pytest.fixture(autouse=True, scope="session")
def _no_proxy_outlives_the_session():
    """A proxy a test forgot to stop is stopped here (by PID), so none outlives the run."""
    yield
    for p in harness.PROXIES:
        if p.running():
            p.stop()


@pytest.fixture(autouse=True)
def _proxies_never_crash():
    """Every proxy running after a test (the test's own and shared ones) shows no crash."""
    yield
    for p in harness.PROXIES:
        marker = harness.crash_in(p)
        assert not marker, f"{p.name} {p.url}: '{marker}' in the host log:\n{p.log()[-3000:]}"
    harness.PROXIES[:] = [p for p in harness.PROXIES if p.running()]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for p in getattr(item, "e2e_proxies", []):
            try:
                text = p.log()
            except Exception as e:  # log closed
                text = p.log_path.read_text(errors="replace") if p.log_path.exists() else str(e)
            rep.sections.append((f"proxy log {p.host}:{p.port} ({p.log_path})", text[-12000:]))


@pytest.fixture(autouse=True)
def _remove_test_dirs():
    """Remove the temporary directories (skopeo copies, docker configs) a test made."""
    before = len(clients.CREATED)
    yield
    while len(clients.CREATED) > before:
        shutil.rmtree(clients.CREATED.pop(), ignore_errors=True)


@pytest.fixture(scope="session")
def containerd():
    c = clients.Containerd()
    yield c
    c.stop()


@pytest.fixture(scope="session")
def dockerd(containerd):
    d = clients.Docker(containerd)
    yield d
    d.stop()


@pytest.fixture
def docker(dockerd):
    """The session's dockerd with no images left from other tests (so every pull downloads)."""
    yield from dockerd.emptied()


@pytest.fixture
def ctr_ns(containerd):
    ns = containerd.new_namespace()
    yield ns
    containerd.drop_namespace(ns)


@pytest.fixture
def redis_server():
    """A Redis of its own (Spin's key-value store for several instances)."""
    exe = shutil.which("redis-server")
    if not exe:
        pytest.fail("redis-server not installed (apt-get install redis-server)")
    port = harness.Reserved()  # redis-server takes `--port 0` for "no TCP at all"
    with harness.Service("redis", [exe, "--port", str(port.port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no"], port=port) as svc:
        yield svc


@pytest.fixture
def podman():
    p = clients.Podman()
    yield p
    p.cleanup()


# ---------------------------------------------------------------- upstream doubles


class Doubles:
    """Upstream doubles on four loopback addresses: the upstream, its token realm, its blob
    storage, and a host configuration never names."""

    def __init__(self):
        self.up = UpstreamDouble("127.0.0.1", name="upstream").start()
        self.auth = UpstreamDouble("127.0.0.2", name="auth").start()
        self.cdn = UpstreamDouble("127.0.0.3", name="cdn").start()
        self.evil = UpstreamDouble("127.0.0.4", name="unconfigured").start()
        self.all = [self.up, self.auth, self.cdn, self.evil]

    def variables(self, **over) -> dict:
        v = {"upstream": self.up.url, "upstream_auth": self.auth.url, "upstream_cdn": self.cdn.url,
             "blob_redirect": "follow", "upstream_timeout": "10"}
        v.update(over)
        return {k: val for k, val in v.items() if val is not None}


@pytest.fixture(scope="module")
def doubles():
    d = Doubles()
    yield d
    for x in d.all:
        x.stop()


@pytest.fixture
def env(doubles):
    for x in doubles.all:
        x.reset()
    yield doubles


class ProxyPool:
    """Starts proxies on demand; the module-wide ones are reused across tests."""

    def __init__(self):
        self.started = []

    def start(self, variables, name="proxy"):
        p = harness.start_proxy(variables, name=name)
        self.started.append(p)
        return p

    def stop_all(self):
        for p in self.started:
            p.stop()


@pytest.fixture(scope="module")
def shared(doubles):
    """Module-wide proxies: blob_redirect=follow and =pass, against the doubles; each test
    gets them with an empty store, as the doubles are reset for each test."""
    pool = ProxyPool()
    cache = {}

    def get(mode="follow"):
        if mode not in cache:
            cache[mode] = pool.start(doubles.variables(blob_redirect=mode), name=f"proxy-{mode}")
        harness.forget(cache[mode])
        return cache[mode]

    yield get
    pool.stop_all()


@pytest.fixture
def proxy(env, shared):
    """The shared follow-mode proxy; checked for panics after each test."""
    return shared("follow")


@pytest.fixture
def fresh():
    """Start a dedicated proxy with given variables; stopped (and checked) after the test."""
    pool = ProxyPool()
    yield pool.start
    pool.stop_all()
