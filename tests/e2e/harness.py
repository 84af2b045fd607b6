"""Process and port helpers shared by the end-to-end tests and the benchmarks.

Every server a test starts listens on a port the kernel chose, and the harness learns that port
from the server (the line it prints once it listens) or from the OS: a port picked here and
bound later by another process could be taken meanwhile by anything else on a busy machine.
Every process is stopped by PID.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPIN_TOML = ROOT / "spin.toml"
HOST_BIN = ROOT / "tests" / "host" / "target" / "release" / "spin-test-host"
WORK = Path(os.environ.get("E2E_WORK", "/tmp/spin-registry-proxy-e2e"))
# The real Spin CLI, when set: the suite and the benchmarks run the component on it instead of
# the test host (the README's commands never need it).
SPIN_BIN = os.environ.get("SPIN_BIN") or None


def runtime() -> str:
    """The runtime proxies run on, as the benchmarks print it."""
    if not SPIN_BIN:
        return "test host (wasmtime 48.0.8)"
    out = subprocess.run([SPIN_BIN, "--version"], capture_output=True, text=True)
    return out.stdout.strip() or SPIN_BIN

# What a server prints once it listens, group 1 the port: `Serving http://127.0.0.1:PORT` (the
# test host, and `spin up` with --listen 127.0.0.1:0), `listening on http://HOST:PORT` (the
# Python servers here), `msg="listening on HOST:PORT"` (distribution, at log level info).
ANNOUNCED = r"(?:Serving|listening on) (?:http://)?[\w.-]+:(\d+)"

_HELD = []


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on (for tests of a refused connection): bound and kept, never
    listening, for the whole run, so that connecting to it is refused and no other server can
    be given it meanwhile."""
    s = socket.socket()
    s.bind((host, 0))
    _HELD.append(s)
    return s.getsockname()[1]


class Reserved:
    """A port for a program that cannot listen on port 0 (nginx and redis-server refuse it):
    the kernel's choice, held bound but not listening until the program listens on it. Linux
    lets a socket with SO_REUSEADDR (nginx and redis set it) bind beside one that does not
    listen, and hands a bound port to no other bind(0) or connect() meanwhile."""

    def __init__(self, host: str = "127.0.0.1"):
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port = self._sock.getsockname()[1]

    def release(self) -> None:
        self._sock.close()


def descendants(pid: int) -> list:
    """Every process below `pid` (`spin up` serves from a child, nginx from a worker)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError, ValueError):
                kids = []
            out.extend(kids)
            todo.extend(kids)
    return out


def listening_ports(pid: int, host: str) -> set:
    """The TCP ports `pid` or a process below it listens on at `host` (or every address), from
    /proc: listening sockets in its network namespace whose inodes the processes hold open."""
    inodes = set()
    for p in [pid, *descendants(pid)]:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    try:
        table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return ports
    for line in table:
        f = line.split()
        addr, port = f[1].split(":")
        # The address is a native-endian u32 of the network-order bytes; 0A is LISTEN.
        ip = socket.inet_ntoa(int(addr, 16).to_bytes(4, sys.byteorder))
        if f[3] == "0A" and f[9] in inodes and ip in (host, "0.0.0.0"):
            ports.add(int(port, 16))
    return ports


class Service:
    """A background process with its log file; stopped by PID."""

    def __init__(self, name: str, argv, env=None, cwd=None, host="127.0.0.1", port=None,
                 announce=None, wait=30.0):
        """`port`: None for a process that serves no TCP port (containerd and dockerd serve
        unix sockets); 0 for one that listens on a port the kernel chooses, learned from the
        first line of its log matching `announce` (a regex, group 1 the port: ANNOUNCED) or,
        without it, from the OS; a `Reserved` port for a program that cannot listen on port 0
        (the OS shows when this process listens there). Once started, `port` is the real one."""
        WORK.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.host = host
        self.port = None
        fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=WORK)
        self.log_path = Path(path)
        self._log = os.fdopen(fd, "wb")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            [str(a) for a in argv], stdout=self._log, stderr=subprocess.STDOUT,
            env=full_env, cwd=cwd, start_new_session=True,
        )
        self.pid = self.proc.pid
        try:
            self.port = self._listening(port, announce, wait)
        except BaseException:
            self.stop()
            raise

    def _listening(self, port, announce, wait):
        """The port the process listens on, once it does."""
        if port is None:
            return None
        reserved = port if isinstance(port, Reserved) else None
        assert reserved or port == 0, "a port chosen before the server binds it can be taken"
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline:
                if announce and not reserved:
                    m = re.search(announce, self.log())
                    if m:
                        return int(m.group(1))
                else:
                    # From the OS, even for a reserved port: connecting would not tell this
                    # process from a stranger listening there.
                    ports = listening_ports(self.pid, self.host)
                    if reserved:
                        if reserved.port in ports:
                            return reserved.port
                    elif len(ports) > 1:
                        raise RuntimeError(f"{self.name} listens on {sorted(ports)}: which one?")
                    elif ports:
                        return ports.pop()
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                       f"it listened:\n{self.log()[-3000:]}")
                time.sleep(0.05)
        finally:
            if reserved:
                reserved.release()
        raise TimeoutError(f"{self.name} did not listen on {self.host} within {wait}s:\n"
                           f"{self.log()[-3000:]}")

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
    """Run the exact .wasm that spin.toml names in the test host (or `spin up`, with SPIN_BIN).

    `variables` maps Spin variable names (lower snake case) to values; they are passed as
    SPIN_VARIABLE_<NAME>, exactly as `spin up` reads them. `allowed_hosts` replaces spin.toml's
    `allowed_outbound_hosts`, as a user serving a route table edits it (the manifest copy names
    the same .wasm). Each proxy keeps its key-value store in its own state directory unless
    `state_dir` or a `runtime_config` file (Redis) says otherwise.
    """
    env = {f"SPIN_VARIABLE_{k.upper()}": v for k, v in variables.items()}
    WORK.mkdir(parents=True, exist_ok=True)
    state = Path(state_dir or tempfile.mkdtemp(prefix="spin-state-", dir=WORK))
    manifest = SPIN_TOML if allowed_hosts is None else manifest_with_hosts(allowed_hosts, state)
    argv = [SPIN_BIN, "up"] if SPIN_BIN else [HOST_BIN]
    argv += ["--from", manifest, "--listen", f"{host}:0", "--state-dir", state]
    if runtime_config:
        argv += ["--runtime-config-file", runtime_config]
    proxy = Service(name, argv, env=env, host=host, port=0, announce=ANNOUNCED)
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
    write that ends with the OUTBOUND line, so once that line is there, so is the rest.
    Spin has no such counts: under SPIN_BIN a test that needs them is skipped, saying so."""
    import json
    if SPIN_BIN:
        import pytest
        pytest.skip("counts what the test host counts (SIGUSR1); SPIN_BIN runs real Spin")
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
