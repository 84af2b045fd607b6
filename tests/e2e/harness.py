"""Process and port helpers shared by the end-to-end tests.

Every service a test needs is started here on a free loopback port and stopped by PID.
"""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPIN_TOML = ROOT / "spin.toml"
HOST_BIN = ROOT / "tests" / "host" / "target" / "release" / "spin-test-host"
WORK = Path(os.environ.get("E2E_WORK", "/tmp/spin-registry-proxy-e2e"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 30.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {host}:{port} opened")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


class Service:
    """A background process with its log file; stopped by PID."""

    def __init__(self, name: str, argv, env=None, cwd=None, host="127.0.0.1", port=None, wait=30.0):
        WORK.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.host = host
        self.port = port
        self.log_path = WORK / f"{name}-{os.getpid()}-{port or 0}.log"
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            [str(a) for a in argv], stdout=self._log, stderr=subprocess.STDOUT,
            env=full_env, cwd=cwd, start_new_session=True,
        )
        self.pid = self.proc.pid
        if port is not None:
            wait_for_port(host, port, wait, self.proc)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, predicate, timeout: float = 10.0) -> str:
        """The log once `predicate(text)` holds (a line is written after the answer it
        describes: never read it without waiting), or as it is at the deadline."""
        deadline = time.monotonic() + timeout
        text = self.log()
        while not predicate(text) and time.monotonic() < deadline:
            time.sleep(0.05)
            text = self.log()
        return text

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# Every proxy any test started; conftest checks each for crashes after every test.
PROXIES = []

CRASH_MARKERS = ("panicked", "wasm trap", "wasm backtrace", "trapped", "component returned without")


def crash_in(proxy: Service) -> str:
    """The first crash marker in a proxy's log, or ""."""
    text = proxy.log()
    return next((m for m in CRASH_MARKERS if m in text), "")


def start_proxy(variables: dict, host: str = "127.0.0.1", name: str = "proxy",
                allowed_hosts=None, state_dir=None, runtime_config=None) -> Service:
    """Run the exact .wasm that spin.toml names in the test host.

    `variables` maps Spin variable names (lower snake case) to values; they are passed as
    SPIN_VARIABLE_<NAME>, exactly as `spin up` reads them. `allowed_hosts` replaces spin.toml's
    `allowed_outbound_hosts`, as a user serving a route table edits it (the manifest copy names
    the same .wasm). Each proxy keeps its key-value store in its own state directory unless
    `state_dir` or a `runtime_config` file (Redis) says otherwise.
    """
    import tempfile
    port = free_port(host)
    env = {f"SPIN_VARIABLE_{k.upper()}": v for k, v in variables.items()}
    WORK.mkdir(parents=True, exist_ok=True)
    state = Path(state_dir or tempfile.mkdtemp(prefix="spin-state-", dir=WORK))
    manifest = SPIN_TOML if allowed_hosts is None else manifest_with_hosts(allowed_hosts, state)
    argv = [HOST_BIN, "--from", manifest, "--listen", f"{host}:{port}", "--state-dir", state]
    if runtime_config:
        argv += ["--runtime-config-file", runtime_config]
    proxy = Service(name, argv, env=env, host=host, port=port)
    proxy.state_dir = state
    PROXIES.append(proxy)
    return proxy


def nginx_config(d: Path, http: str) -> str:
    """An nginx.conf running in the foreground with everything it writes under `d`; `http` is
    the rest of its `http` block (upstreams, servers)."""
    return f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
{http}
}}
"""


def forget(proxy: Service) -> None:
    """Empties a proxy's key-value store (SQLite in its state directory): a proxy reused
    across tests whose upstream doubles change their answers must not remember the last one."""
    import sqlite3
    db = Path(proxy.state_dir) / "sqlite_key_value.db"
    if db.exists():
        with sqlite3.connect(db, timeout=30) as conn:
            conn.execute("DELETE FROM spin_key_value")


def counters(proxy: Service) -> dict:
    """What the test host has counted so far: `connects` (upstream connections opened),
    `variable_reads`, and `outbound` requests per origin. It prints them on SIGUSR1 in one
    write that ends with the OUTBOUND line, so once that line is there, so is the rest."""
    import json
    before = proxy.log().count("OUTBOUND ")
    os.kill(proxy.pid, signal.SIGUSR1)
    text = proxy.wait_log(lambda t: t.count("OUTBOUND ") > before)
    assert text.count("OUTBOUND ") > before, f"{proxy.name} printed no counts:\n{text[-2000:]}"
    block = text[text.rindex("CONNECTS "):].splitlines()
    last = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in block if " " in ln}
    return {"connects": int(last["CONNECTS"]), "variable_reads": int(last["VARIABLE_READS"]),
            "outbound": json.loads(last["OUTBOUND"])}


def outbound(proxy: Service) -> dict:
    """The test host's outbound requests per origin so far."""
    return counters(proxy)["outbound"]


def manifest_with_hosts(hosts, where: Path) -> Path:
    """spin.toml with `allowed_outbound_hosts` = `hosts`, naming the same component file."""
    import re
    text = SPIN_TOML.read_text()
    wasm = ROOT / re.search(r'^source = "([^"]+)"', text, re.M).group(1)
    text = text.replace(re.search(r'^source = "[^"]+"', text, re.M).group(0), f'source = "{wasm}"')
    entries = ", ".join(f'"{h}"' for h in hosts)
    text = re.sub(r"^allowed_outbound_hosts = \[.*\]$", f"allowed_outbound_hosts = [{entries}]",
                  text, flags=re.M)
    path = where / "spin.toml"
    path.write_text(text)
    return path
