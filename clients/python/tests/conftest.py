"""Fixtures: real pbkv clusters started from the built binary, stopped by pid.

The binary is $PBKV_BIN (`make python-test` sets it), else `$(swift build --show-bin-path)/pbkv`
of the checkout. Every process gets a random free loopback port and a temporary directory;
every wait polls with a deadline.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from pbkv import TLS, Connection, PbkvError, View, pbkv_pb2

REPO = Path(__file__).resolve().parents[3]
PROTO_VARIANTS = Path(__file__).resolve().parent / "proto"
GOLDEN = REPO / "proto" / "golden"


def wait_for(condition: Callable[[], object], *, within: float, what: str, every: float = 0.02) -> object:
    """Polls `condition` until it returns something truthy; fails the test after `within` s."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pbkv_binary() -> Path:
    path = os.environ.get("PBKV_BIN")
    if not path:
        try:
            bin_dir = subprocess.run(
                ["swift", "build", "--show-bin-path"], cwd=REPO, capture_output=True, text=True, timeout=120,
                check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError) as error:
            pytest.fail(f"set PBKV_BIN to the pbkv binary (swift build --show-bin-path failed: {error})")
        path = str(Path(bin_dir) / "pbkv")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not an executable pbkv: build it first (swift build, or make test)")
    return Path(path)


class Process:
    """One pbkv process; its output goes to a log file in the test's directory."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, by pid, and reap it."""
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 5 s."""
        if self.running():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._log.close()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


ETCD = "/usr/bin/etcd"


class Cluster:
    """View services and KV servers, as processes on loopback: one view service with a data
    directory, or (`etcd=True`) an etcd member and `viewservices` view services replicated on it.
    With `tls=True` the cluster gets a CA of its own (`pbkv certs init`), every process a server
    certificate for its address, and `client_tls` is a client certificate of that CA."""

    def __init__(
        self, binary: Path, directory: Path, *, etcd: bool = False, viewservices: int = 1, tls: bool = False
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.processes: list[Process] = []
        self.servers: dict[str, Process] = {}
        self.viewservices: dict[str, Process] = {}
        self.certs: Optional[Path] = None
        self.client_tls: Optional[TLS] = None
        try:
            if tls:
                self.certs = directory / "certs"
                self.certs_command("init", str(self.certs))
                self.certs_command("issue", str(self.certs), "tester", "--role", "client")
                self.client_tls = TLS.from_dir(self.certs, "tester")
            self._start(etcd, viewservices)
        except BaseException:
            self.stop()  # what did start, by pid
            raise

    def _start(self, etcd: bool, viewservices: int) -> None:
        directory = self.directory
        store: list[str] = []
        if etcd:
            if not os.access(ETCD, os.X_OK):
                pytest.fail(f"{ETCD} not found: run `make deps` (it installs Debian's etcd-server)")
            client, peer = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
            self.processes.append(Process("etcd", [
                ETCD, "--name", "m1", "--data-dir", str(directory / "etcd"),
                "--listen-client-urls", f"http://{client}", "--advertise-client-urls", f"http://{client}",
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"m1={peer}",
                "--initial-cluster-state", "new", "--initial-cluster-token", f"pbkv-python-{os.getpid()}"], directory))
            wait_for(lambda: _etcd_healthy(client), within=30, what="etcd to serve")
            store = ["--etcd", client, "--etcd-prefix", "pbkv-python"]
        for i in range(viewservices):
            address = f"127.0.0.1:{free_port()}"
            data = store or ["--data-dir", str(directory / f"viewservice-{i + 1}")]
            self.viewservices[address] = self._spawn(
                f"viewservice-{i + 1}", ["viewservice", "--listen", address, *data, *self._identity(f"viewservice-{i + 1}", address)])
        for address in self.viewservices:
            host, port = address.split(":")
            wait_for(lambda: _accepts(host, int(port)), within=20, what=f"the view service at {address} to listen")
        self.viewservice_address = ",".join(self.viewservices)

    def certs_command(self, *args: str) -> None:
        """Runs `pbkv certs ARGS…`; fails the test with its output if it fails."""
        result = subprocess.run([str(self.binary), "certs", *args], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            pytest.fail(f"pbkv certs {' '.join(args)} failed: {result.stdout}{result.stderr}")

    def _identity(self, name: str, address: str) -> list[str]:
        """The flags that make a process present a server certificate for `address` (none in plaintext)."""
        if self.certs is None:
            return []
        self.certs_command("issue", str(self.certs), name, "--role", "server", "--host", address)
        return ["--tls", str(self.certs), "--tls-name", name]

    def _spawn(self, name: str, args: list[str]) -> Process:
        process = Process(name, [str(self.binary), *args], self.directory)
        self.processes.append(process)
        return process

    def start_server(self, *extra: str) -> str:
        """Starts a KV server; returns its address (its identity in views)."""
        address = f"127.0.0.1:{free_port()}"
        name = f"server-{len(self.servers) + 1}"
        self.servers[address] = self._spawn(
            name, ["server", "--listen", address, "--viewservice", self.viewservice_address,
                   *self._identity(name, address), *extra])
        return address

    def view(self) -> Optional[View]:
        """The view, asked of the view services directly (None when none answers with one)."""
        for address in self.viewservices:
            response = self.get_view_response(address)
            if response is not None and response.code == pbkv_pb2.OK:
                v = response.view
                return View(v.viewnum, v.primary, v.backup, v.acknowledged)
        return None

    def get_view_response(self, address: str) -> Optional[object]:
        """One GetView call to one view service (None when it cannot be reached)."""
        try:
            factory = self.client_tls.socket_factory() if self.client_tls else None
            with Connection(address, deadline=time.monotonic() + 1, socket_factory=factory) as connection:
                pb = connection.schema
                return connection.call(pb.Request(get_view=pb.GetViewArgs()), time.monotonic() + 1)
        except PbkvError:
            return None

    def wait_for_view(self, condition: Callable[[View], bool], what: str, within: float = 30) -> View:
        def check() -> Optional[View]:
            for process in self.processes:
                if not process.running() and process.popen.returncode not in (None, -signal.SIGKILL):
                    pytest.fail(f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}")
            view = self.view()
            return view if view is not None and condition(view) else None
        return wait_for(check, within=within, what=what)  # type: ignore[return-value]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def _etcd_healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{endpoint}/health", timeout=1) as answer:
            return b'"health":"true"' in answer.read()
    except OSError:
        return False


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def binary() -> Path:
    return pbkv_binary()


@pytest.fixture
def make_cluster(binary: Path, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Starts view services for this test only; every process is stopped by pid afterwards."""
    clusters: list[Cluster] = []

    def make(**options: object) -> Cluster:
        directory = tmp_path / f"cluster-{len(clusters) + 1}"
        directory.mkdir()
        cluster = Cluster(binary, directory, **options)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


def start_replicated(cluster: Cluster) -> tuple[str, str]:
    """Two servers; returns (primary, backup) once the view with both is acknowledged."""
    primary = cluster.start_server()
    cluster.wait_for_view(lambda v: v.primary == primary and v.acknowledged, "the first server to be primary")
    backup = cluster.start_server()
    cluster.wait_for_view(
        lambda v: v.primary == primary and v.backup == backup and v.acknowledged, "the backup to hold the state")
    return primary, backup


@pytest.fixture(scope="module")
def cluster(binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One view service with a primary and a backup, shared by a module's tests."""
    cluster = Cluster(binary, tmp_path_factory.mktemp("cluster"))
    try:
        start_replicated(cluster)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def compile_variant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], object]]:
    """Compiles tests/proto/<name>.proto with grpcio-tools' protoc and imports it (a schema
    variant: each has its own package and file name, so they share the descriptor pool)."""
    out = tmp_path_factory.mktemp("variants")
    sys.path.insert(0, str(out))
    modules: dict[str, object] = {}

    def compile(name: str) -> object:
        if name not in modules:
            from grpc_tools import protoc  # the test venv has grpcio-tools (make python-venv)
            status = protoc.main([
                "protoc", f"-I{PROTO_VARIANTS}", f"--python_out={out}", str(PROTO_VARIANTS / f"{name}.proto")])
            assert status == 0, f"protoc failed on {name}.proto"
            modules[name] = importlib.import_module(f"{name}_pb2")
        return modules[name]

    yield compile
    sys.path.remove(str(out))
