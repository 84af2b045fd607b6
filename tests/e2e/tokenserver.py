"""A small imitation of auth.docker.io for distribution's token auth.

    python3 tokenserver.py --listen 127.0.0.2:0 --key key.pem --cert cert.pem \
        --issuer e2e-issuer --service e2e-registry

Users come from the environment: TOKEN_USERS="alice:pw,seeder:pw2".

    GET  /token?service=S&scope=A&scope=B[&account=U]    (optional Basic auth)
    POST /token   (form: grant_type=password&username&password | grant_type=refresh_token
                   &refresh_token; scope space-separated; service; client_id)

Grants (Docker Hub-like):
  anonymous  -> pull on repositories that have no "private" path segment
  alice      -> pull on every repository, and registry:catalog:*
  seeder     -> everything (used by the fixtures to push images)

Tokens are RS256 JWTs whose header carries `x5c` (the self-signed signing cert), which is what
distribution 2.8 verifies against `auth.token.rootcertbundle`.

Every request is logged to stdout as one line `TOKENLOG {json}` with method, path, grant type,
scopes, service, client_id, account and status; passwords and tokens are never logged.

`python3 tokenserver.py --gen-cert cert.pem key.pem` writes a fresh key and certificate.
"""
import argparse
import base64
import datetime
import json
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

EXPIRES_IN = 300


def gen_cert(cert_path, key_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "e2e token signer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def parse_scope(scope):
    """`type[(class)]:name:actions` -> (type, name, [actions]) or None."""
    first = scope.find(":")
    last = scope.rfind(":")
    if first < 0 or last == first:
        return None
    typ = scope[:first]
    if "(" in typ:
        typ = typ[:typ.index("(")]
    return typ, scope[first + 1:last], [a for a in scope[last + 1:].split(",") if a]


def is_private(name):
    return "private" in name.split("/")[:-1]


def granted(user, typ, name, actions):
    if user == "seeder":
        return actions
    if typ == "repository":
        allowed = {"pull"} if (user == "alice" or not is_private(name)) else set()
    elif typ == "registry" and name == "catalog":
        allowed = {"*"} if user == "alice" else set()
    else:
        allowed = set()
    return [a for a in actions if a in allowed]


class State:
    def __init__(self, key_pem, cert_der, issuer, service, users):
        self.key_pem = key_pem
        self.x5c = base64.b64encode(cert_der).decode()
        self.issuer = issuer
        self.service = service
        self.users = users
        self.refresh = {}
        self.lock = threading.Lock()

    def issue(self, user, scopes):
        now = int(time.time())
        access = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            typ, name, actions = parsed
            access.append({"type": typ, "name": name, "actions": granted(user, typ, name, actions)})
        claims = {
            "iss": self.issuer, "sub": user or "", "aud": self.service,
            "exp": now + EXPIRES_IN, "nbf": now - 10, "iat": now,
            "jti": secrets.token_hex(16), "access": access,
        }
        token = jwt.encode(claims, self.key_pem, algorithm="RS256",
                           headers={"x5c": [self.x5c], "typ": "JWT"})
        issued = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        return {"token": token, "access_token": token, "expires_in": EXPIRES_IN,
                "issued_at": issued.strftime("%Y-%m-%dT%H:%M:%SZ")}, access


STATE = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "e2e-token/1"

    def log_message(self, fmt, *args):
        pass

    def _log(self, entry):
        sys.stdout.write("TOKENLOG " + json.dumps(entry, sort_keys=True) + "\n")
        sys.stdout.flush()

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _basic(self):
        h = self.headers.get("Authorization", "")
        if not h.lower().startswith("basic "):
            return None
        try:
            user, _, pw = base64.b64decode(h[6:].strip()).decode().partition(":")
        except Exception:
            return ("", "")
        return user, pw

    def do_GET(self):
        u = urlsplit(self.path)
        q = parse_qs(u.query, keep_blank_values=True)
        entry = {"method": "GET", "path": u.path, "scopes": q.get("scope", []),
                 "service": q.get("service", [None])[0], "account": q.get("account", [None])[0],
                 "client_id": q.get("client_id", [None])[0], "grant_type": None,
                 "basic_auth": False, "user": None,
                 "offline_token": q.get("offline_token", [None])[0]}
        if u.path != "/token":
            entry["status"] = 404
            self._log(entry)
            return self._send(404, {"details": "not found"})
        user = None
        creds = self._basic()
        if creds is not None:
            entry["basic_auth"] = True
            if STATE.users.get(creds[0]) != creds[1] or not creds[0]:
                entry["status"] = 401
                entry["user"] = creds[0]
                self._log(entry)
                return self._send(401, {"details": "incorrect username or password"})
            user = creds[0]
        entry["user"] = user
        offline = creds is not None and entry["offline_token"] == "true"
        self._grant(entry, user, secrets.token_urlsafe(24) if offline else None)

    def do_POST(self):
        u = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode(errors="replace") if length else ""
        form = parse_qs(raw, keep_blank_values=True)

        def f(k):
            return form.get(k, [None])[0]

        scope_field = f("scope") or ""
        entry = {"method": "POST", "path": u.path, "grant_type": f("grant_type"),
                 "scopes": [s for s in scope_field.split(" ") if s], "service": f("service"),
                 "client_id": f("client_id"), "access_type": f("access_type"),
                 "user": f("username"), "content_type": self.headers.get("Content-Type")}
        if u.path != "/token":
            entry["status"] = 404
            self._log(entry)
            return self._send(404, {"details": "not found"})
        gt = f("grant_type")
        if gt == "password":
            user = f("username") or ""
            if not user or STATE.users.get(user) != f("password"):
                entry["status"] = 401
                self._log(entry)
                return self._send(401, {"details": "incorrect username or password"})
        elif gt == "refresh_token":
            with STATE.lock:
                user = STATE.refresh.get(f("refresh_token") or "")
            entry["user"] = user
            if user is None:
                entry["status"] = 401
                self._log(entry)
                return self._send(401, {"details": "invalid refresh token"})
        else:
            entry["status"] = 400
            self._log(entry)
            return self._send(400, {"details": "unsupported grant_type"})
        self._grant(entry, user,
                    f("refresh_token") if gt == "refresh_token" else secrets.token_urlsafe(24))

    def _grant(self, entry, user, refresh_token):
        """Answer 200 with a token for `user`, and a refresh token when one is given."""
        body, access = STATE.issue(user, entry["scopes"])
        if refresh_token is not None:
            with STATE.lock:
                STATE.refresh[refresh_token] = user
            body["refresh_token"] = refresh_token
        entry["status"] = 200
        entry["access"] = access
        self._log(entry)
        self._send(200, body)


def main():
    global STATE
    ap = argparse.ArgumentParser()
    ap.add_argument("--gen-cert", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--listen")
    ap.add_argument("--key")
    ap.add_argument("--cert")
    ap.add_argument("--issuer", default="e2e-issuer")
    ap.add_argument("--service", default="e2e-registry")
    a = ap.parse_args()
    if a.gen_cert:
        gen_cert(*a.gen_cert)
        return
    import os
    users = {}
    for pair in filter(None, os.environ.get("TOKEN_USERS", "").split(",")):
        name, _, pw = pair.partition(":")
        users[name] = pw
    with open(a.key, "rb") as fh:
        key_pem = fh.read()
    with open(a.cert, "rb") as fh:
        cert = x509.load_pem_x509_certificate(fh.read())
    STATE = State(key_pem, cert.public_bytes(serialization.Encoding.DER), a.issuer, a.service, users)
    host, _, port = a.listen.rpartition(":")
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    srv.daemon_threads = True
    # --listen HOST:0: the kernel chooses the port, printed for the harness to read.
    print(f"token server listening on http://{host}:{srv.server_port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
