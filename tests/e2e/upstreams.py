"""Real upstream registries for the end-to-end tests.

Three instances of distribution (`docker-registry serve`), each with its own storage:
  anon   127.0.0.1  no auth
  basic  127.0.0.1  htpasswd Basic auth (alice)
  token  127.0.0.1  token auth, realm on 127.0.0.2 (tokenserver.py, like auth.docker.io), and
                    blob GETs redirected (307) to a static server on 127.0.0.3 serving its
                    storage directory (staticserver.py, like Docker Hub's CDN)
"""
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from harness import ANNOUNCED, WORK, Reserved, Service, nginx_config

HERE = Path(__file__).resolve().parent

ALICE = ("alice", "alice-e2e-Secret1")
SEEDER = ("seeder", "seeder-e2e-Secret2")
TOKEN_ISSUER = "e2e-token-issuer"
TOKEN_SERVICE = "e2e-registry"


def log_entries(service: Service, tag: str) -> list:
    """Parse `TAG {json}` lines from a helper server's log."""
    out = []
    for line in service.log().splitlines():
        if line.startswith(tag + " "):
            out.append(json.loads(line[len(tag) + 1:]))
    return out


@dataclass
class LoggingServer:
    """A helper server whose log has one `TAG {json}` line per request it saw."""

    service: Service
    tag = ""

    @property
    def url(self):
        return self.service.url

    def entries(self):
        return log_entries(self.service, self.tag)

    def mark(self):
        return len(self.entries())

    def since(self, mark):
        return self.entries()[mark:]

    def wait_since(self, mark, predicate=lambda entries: bool(entries), timeout=10.0):
        """Entries since `mark` once `predicate(entries)` holds: a server may log a request
        after it has answered it, so a test never reads the log without waiting."""
        deadline = time.monotonic() + timeout
        got = self.since(mark)
        while not predicate(got) and time.monotonic() < deadline:
            time.sleep(0.05)
            got = self.since(mark)
        return got

    def stop(self):
        self.service.stop()


@dataclass
class TokenServer(LoggingServer):
    cert: Optional[Path] = None
    tag = "TOKENLOG"

    @property
    def realm(self):
        return self.service.url + "/token"


@dataclass
class StaticServer(LoggingServer):
    root: Optional[Path] = None
    tag = "CDNLOG"


@dataclass
class Registry:
    kind: str                      # "anon" | "basic" | "token"
    service: Service
    storage: Path
    push_creds: Optional[tuple] = None
    pull_creds: Optional[tuple] = None
    token: Optional[TokenServer] = None
    cdn: Optional[StaticServer] = None
    extra: dict = field(default_factory=dict)

    @property
    def url(self):
        return self.service.url

    @property
    def hostport(self):
        return f"{self.service.host}:{self.service.port}"

    def stop(self):
        self.service.stop()


def start_token_server(workdir: Path, host="127.0.0.2") -> TokenServer:
    cert, key = workdir / "token-cert.pem", workdir / "token-key.pem"
    subprocess.run([sys.executable, HERE / "tokenserver.py", "--gen-cert", cert, key], check=True)
    svc = Service("tokenserver", [sys.executable, HERE / "tokenserver.py",
                                  "--listen", f"{host}:0", "--key", key, "--cert", cert,
                                  "--issuer", TOKEN_ISSUER, "--service", TOKEN_SERVICE],
                  env={"TOKEN_USERS": f"{ALICE[0]}:{ALICE[1]},{SEEDER[0]}:{SEEDER[1]}"},
                  host=host, port=0, announce=ANNOUNCED)
    return TokenServer(svc, cert)


def start_static_server(root: Path, host="127.0.0.3") -> StaticServer:
    svc = Service("cdn", [sys.executable, HERE / "staticserver.py", "--listen", f"{host}:0",
                          "--root", root], host=host, port=0, announce=ANNOUNCED)
    return StaticServer(svc, root)


def start_registry(kind: str, workdir: Path, token: TokenServer = None,
                   cdn_host: str = None, host="127.0.0.1") -> Registry:
    """Start distribution in one of the three modes. With cdn_host, blob GETs are redirected
    to a static server on that address which serves the storage directory."""
    storage = Path(tempfile.mkdtemp(prefix=f"registry-{kind}-", dir=workdir))
    (storage / "docker").mkdir()
    cfg = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"{host}:0", "secret": f"e2e-{kind}-secret",
                 "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    reg = dict(kind=kind, storage=storage)
    if kind == "basic":
        htp = workdir / "htpasswd"
        line = subprocess.run(["htpasswd", "-Bbn", ALICE[0], ALICE[1]], check=True,
                              capture_output=True, text=True).stdout.strip()
        htp.write_text(line + "\n")
        cfg["auth"] = {"htpasswd": {"realm": "e2e-basic-realm", "path": str(htp)}}
        reg.update(push_creds=ALICE, pull_creds=ALICE)
    elif kind == "token":
        assert token is not None
        cfg["auth"] = {"token": {"realm": token.realm, "service": TOKEN_SERVICE,
                                 "issuer": TOKEN_ISSUER, "rootcertbundle": str(token.cert),
                                 "autoredirect": False}}
        reg.update(push_creds=SEEDER, pull_creds=ALICE, token=token)
    cdn = None
    if cdn_host:
        # The CDN first: the registry's configuration names its port.
        cdn = start_static_server(storage, host=cdn_host)
        cfg["middleware"] = {"storage": [{"name": "redirect", "options": {
            "baseurl": cdn.url + "/"}}]}
    cfg_path = workdir / f"registry-{kind}.yml"
    cfg_path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    try:
        svc = Service(f"registry-{kind}", ["docker-registry", "serve", cfg_path], host=host,
                      port=0, announce=ANNOUNCED)
    except BaseException:
        if cdn:
            cdn.stop()
        raise
    return Registry(service=svc, cdn=cdn, **reg)


def start_tag_pager(registry: Registry, sign_redirects=None) -> Registry:
    """`registry` behind tagpager.py (tags/list paginated like distribution 3 / Docker Hub;
    with `sign_redirects`, redirects carrying an expiry like CloudFront's signed URLs)."""
    extra = ["--sign-redirects", str(sign_redirects)] if sign_redirects else []
    svc = Service(f"tagpager-{registry.kind}",
                  [sys.executable, HERE / "tagpager.py", "--listen",
                   f"{registry.service.host}:0", "--upstream", registry.url, *extra],
                  host=registry.service.host, port=0, announce=ANNOUNCED)
    return Registry(kind=registry.kind, service=svc, storage=registry.storage,
                    push_creds=registry.push_creds, pull_creds=registry.pull_creds,
                    token=registry.token, cdn=registry.cdn, extra={"pager_of": registry})


NGINX_GZIP = """  gzip on;
  gzip_types application/json;
  gzip_min_length 1;
  gzip_proxied any;
  server {{
    listen {host}:{port};
    location / {{
      proxy_pass {upstream};
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_buffering off;
    }}
  }}"""


def start_gzip_front(registry: Registry) -> Registry:
    """`registry` behind nginx compressing JSON (`gzip_types application/json`), as many
    deployments do: tags lists and catalogs come gzip-encoded to a client that asks for it."""
    host = registry.service.host
    port = Reserved(host)  # nginx refuses `listen HOST:0`
    d = Path(tempfile.mkdtemp(prefix="nginx-gzip-", dir=WORK))
    conf = d / "nginx.conf"
    conf.write_text(nginx_config(d, NGINX_GZIP.format(host=host, port=port.port,
                                                      upstream=registry.url)))
    svc = Service(f"nginx-gzip-{registry.kind}", ["nginx", "-c", conf, "-p", d], host=host,
                  port=port)
    return Registry(kind=registry.kind, service=svc, storage=registry.storage,
                    push_creds=registry.push_creds, pull_creds=registry.pull_creds,
                    token=registry.token, cdn=registry.cdn, extra={"front_of": registry})


class Upstreams:
    """All upstream services for one test session."""

    def __init__(self):
        WORK.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="upstreams-", dir=WORK))
        self._stoppables = []
        try:
            self.token_server = start_token_server(self.workdir)
            self._stoppables.append(self.token_server)
            self.anon = start_registry("anon", self.workdir)
            self._stoppables.append(self.anon)
            self.basic = start_registry("basic", self.workdir)
            self._stoppables.append(self.basic)
            self.token = start_registry("token", self.workdir, token=self.token_server,
                                        cdn_host="127.0.0.3")
            self._stoppables.append(self.token)
            self._stoppables.append(self.token.cdn)
        except BaseException:
            self.stop()
            raise

    @property
    def registries(self):
        return {"anon": self.anon, "basic": self.basic, "token": self.token}

    def front(self, kind: str, what: str) -> Registry:
        """The registry of `kind` behind a front, started on first use: "paged" (tagpager.py),
        "signed" (tagpager.py signing redirects for an hour) or "gzip" (nginx compressing
        JSON)."""
        if not hasattr(self, "_fronts"):
            self._fronts = {}
        if (kind, what) not in self._fronts:
            start = {"paged": start_tag_pager, "gzip": start_gzip_front,
                     "signed": lambda r: start_tag_pager(r, sign_redirects=3600)}[what]
            self._fronts[kind, what] = start(self.registries[kind])
            self._stoppables.append(self._fronts[kind, what])
        return self._fronts[kind, what]

    def stop(self):
        for s in reversed(self._stoppables):
            try:
                s.stop()
            except Exception:
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)
