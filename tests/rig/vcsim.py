"""vCenter for tests: govmomi's simulator (vcsim) built from Debian's source.

Debian's `golang-github-vmware-govmomi-dev` is the library only, so the rig
compiles its own command, tests/rig/vcsim/main.go, offline. It imports the
simulator package from an overlay GOPATH: a copy of Debian's simulator
sources plus tests/rig/vcsim/overlay/sendense_*.go (fixes for two 0.24.2 bugs
that break pyVmomi, and Changed Block Tracking with QueryChangedDiskAreas,
kept cheap by a journal of the writes tests make, see vmware_vms.fill).
The binary is cached in tests/rig/bin/ under a hash of those sources.

    with Vcsim(tmp_path) as vc:
        si = vc.connect()

The server is stopped by PID in every outcome; it also exits by itself when
this process dies (EOF on its stdin).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import selectors
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from pyVim import connect as pyvim_connect

from tests.rig.procs import stop

RIG = Path(__file__).resolve().parent
GO_SOURCES = RIG / "vcsim"
BIN_DIR = RIG / "bin"
GOVMOMI = Path("/usr/share/gocode/src/github.com/vmware/govmomi")
DEBIAN_GOPATH = Path("/usr/share/gocode")
DEFAULT_BLOCK_SIZE = 64 * 1024
# Like vSphere, one QueryChangedDiskAreas answer covers as much of the disk as
# a bounded list of areas describes; 0 is "no limit".
DEFAULT_MAX_SPAN = 0
DEFAULT_MAX_AREAS = 2048

# pyVim is untyped: the vSphere boundary is Any.
SmartConnect: Any = pyvim_connect.SmartConnect
Disconnect: Any = pyvim_connect.Disconnect


def _go() -> Path:
    found = shutil.which("go")
    if not found:
        raise RuntimeError("Go is not installed (Debian package golang-go)")
    return Path(found)


def _go_files() -> list[Path]:
    return sorted(p for p in GO_SOURCES.rglob("*.go") if p.is_file())


def source_hash() -> str:
    """What the binary is built from: our Go files, Debian's simulator sources
    (names and sizes: a package upgrade changes them) and the Go release."""
    h = hashlib.sha256()
    for path in _go_files():
        h.update(str(path.relative_to(GO_SOURCES)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(repr(PATCHES).encode())
    for path in sorted((GOVMOMI / "simulator").rglob("*.go")):
        h.update(f"{path.relative_to(GOVMOMI)}:{path.stat().st_size}\0".encode())
    version = _go().resolve().parent.parent / "VERSION"
    if version.exists():
        h.update(version.read_bytes())
    return h.hexdigest()[:16]


# Edits to our copy of a Debian simulator file (Debian's stays untouched):
# (file, text, replacement); the text must be there exactly once.
PATCHES = (
    # layoutEx reports a thin disk's extent by its allocated bytes, as vSphere
    # does, not the sparse file's apparent size (sendense_layout.go).
    (
        "virtual_machine.go",
        "fileSize = dFileInfo.Size()",
        "fileSize = sendenseAllocated(dFileInfo)",
    ),
)


def _patch(simulator: Path) -> None:
    for name, text, replacement in PATCHES:
        path = simulator / name
        source = path.read_text()
        if source.count(text) != 1:
            raise RuntimeError(f"{name}: {text!r} is not there once (another govmomi?)")
        path.write_text(source.replace(text, replacement))


def _make_overlay(root: Path) -> Path:
    """A GOPATH in which github.com/vmware/govmomi is Debian's, except for the
    simulator package: a copy of Debian's files plus ours. Everything else is
    a symlink; Go's GOPATH lookup stops at the first root holding a package's
    directory, so the overlay must carry the whole govmomi tree."""
    gopath = root / "gopath"
    govmomi = gopath / "src" / "github.com" / "vmware" / "govmomi"
    simulator = govmomi / "simulator"
    simulator.mkdir(parents=True)
    for entry in GOVMOMI.iterdir():
        if entry.name != "simulator":
            (govmomi / entry.name).symlink_to(entry)
    for entry in (GOVMOMI / "simulator").iterdir():
        if entry.is_dir():
            (simulator / entry.name).symlink_to(entry)
        elif entry.suffix == ".go" and not entry.name.endswith("_test.go"):
            shutil.copyfile(entry, simulator / entry.name)
    for ours in sorted((GO_SOURCES / "overlay").glob("*.go")):
        if (simulator / ours.name).exists():
            raise RuntimeError(f"{ours.name} would replace a Debian simulator file")
        shutil.copyfile(ours, simulator / ours.name)
    _patch(simulator)
    return gopath


def build(force: bool = False) -> Path:
    """The vcsim binary for the current sources, built if missing. Concurrent
    callers (parallel test runs) wait for one build under a file lock."""
    if not (GOVMOMI / "simulator").is_dir():
        raise RuntimeError(f"{GOVMOMI} missing (Debian package golang-github-vmware-govmomi-dev)")
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    binary = BIN_DIR / f"vcsim-{source_hash()}"
    if binary.exists() and not force:
        return binary
    with (BIN_DIR / ".vcsim-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists() and not force:
            return binary
        with tempfile.TemporaryDirectory(dir=BIN_DIR, prefix=".vcsim-build-") as tmp:
            gopath = _make_overlay(Path(tmp))
            out = Path(tmp) / "vcsim"
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GOPATH": f"{gopath}:{DEBIAN_GOPATH}",
                "GO111MODULE": "off",  # GOPATH lookup: Debian ships no module proxy
                "GOFLAGS": "",
                "GOPROXY": "off",
                "CGO_ENABLED": "0",
                "GOCACHE": _go_cache(),
            }
            result = subprocess.run(
                [str(_go()), "build", "-trimpath", "-ldflags=-s -w", "-o", str(out), "."],
                cwd=GO_SOURCES,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0:
                raise RuntimeError(f"building vcsim failed:\n{result.stdout}{result.stderr}")
            os.replace(out, binary)
        _prune(keep=binary)
    return binary


def _go_cache() -> str:
    """Go's own build cache (~/.cache/go-build) makes rebuilds after an edit
    quick; without a home directory, one under tests/rig/bin/."""
    if os.environ.get("GOCACHE"):
        return os.environ["GOCACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or (
        os.path.join(os.environ["HOME"], ".cache") if os.environ.get("HOME") else None
    )
    return os.path.join(base, "go-build") if base else str(BIN_DIR / "gocache")


def _prune(keep: Path, age: float = 3600.0) -> None:
    """Drop binaries of older sources (unused for an hour: a parallel run of
    another checkout state may still be starting one)."""
    now = time.time()
    for old in BIN_DIR.glob("vcsim-*"):
        with contextlib.suppress(OSError):  # a parallel prune got there first
            if old != keep and now - old.stat().st_mtime > age:
                old.unlink()


class VcsimError(RuntimeError):
    pass


class Vcsim:
    """One simulated vCenter: datacenter DC0, cluster DC0_C0 with one host, no
    VMs, local datastores (default LocalDS_0) as directories under
    `datastore_root`. Login accepts only `username`/`password`."""

    def __init__(
        self,
        datastore_root: Path,
        *,
        username: str = "sendense@vsphere.local",
        password: str | None = None,
        datastores: tuple[str, ...] = ("LocalDS_0",),
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_span: int = DEFAULT_MAX_SPAN,
        max_areas: int = DEFAULT_MAX_AREAS,
        port: int = 0,
        start_timeout: float = 30.0,
    ) -> None:
        self.datastore_root = Path(datastore_root).resolve()
        self.username = username
        self.password = password or secrets.token_urlsafe(18)
        self.datastores = datastores
        self.block_size = block_size
        self.max_span = max_span
        self.max_areas = max_areas
        self.requested_port = port
        self.start_timeout = start_timeout
        self.log_path = self.datastore_root / "vcsim.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready: dict[str, Any] | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Vcsim:
        if self._proc is not None:
            raise VcsimError("already started")
        binary = build()
        self.datastore_root.mkdir(parents=True, exist_ok=True)
        # Neither argv nor the environment (both readable in /proc): a file
        # only its owner can read, removed once the server has read it.
        password_file = self.datastore_root / f".vcsim-password-{secrets.token_hex(4)}"
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password)
        try:
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    self._argv(binary, password_file),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
            self._ready = self._read_ready_line(self._proc)
        except BaseException:
            self.stop()
            raise
        finally:
            password_file.unlink(missing_ok=True)
        return self

    def _argv(self, binary: Path, password_file: Path) -> list[str]:
        return [
            str(binary),
            "-port",
            str(self.requested_port),
            "-username",
            self.username,
            "-password-file",
            str(password_file),
            "-datastore-root",
            str(self.datastore_root),
            "-datastores",
            ",".join(self.datastores),
            "-cbt-block-size",
            str(self.block_size),
            "-cbt-max-span",
            str(self.max_span),
            "-cbt-max-areas",
            str(self.max_areas),
            # Exit when this process dies, even by SIGKILL: stdin hits EOF.
            "-exit-on-stdin-eof",
        ]

    def _read_ready_line(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        assert proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VcsimError(
                        f"vcsim not ready after {self.start_timeout}s{self._log_tail()}"
                    )
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    proc.wait(5)
                    raise VcsimError(f"vcsim exited with {proc.returncode}{self._log_tail()}")
                buf += chunk
        ready: dict[str, Any] = json.loads(buf.split(b"\n", 1)[0])
        return ready

    def _log_tail(self) -> str:
        try:
            return "\n" + self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, a timed wait, then SIGKILL: the process is gone afterwards."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            stop(proc, timeout)
        finally:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    def __enter__(self) -> Vcsim:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what clients need -------------------------------------------------

    @property
    def ready(self) -> dict[str, Any]:
        if self._ready is None:
            raise VcsimError("not started")
        return self._ready

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running server process (None once stopped)."""
        return self._proc

    @property
    def pid(self) -> int:
        return int(self.ready["pid"])

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def host(self) -> str:
        """ "127.0.0.1:PORT"."""
        return str(self.ready["host"])

    @property
    def url(self) -> str:
        """The SDK endpoint, "https://127.0.0.1:PORT/sdk"."""
        return str(self.ready["url"])

    @property
    def cert_pem(self) -> str:
        return str(self.ready["cert_pem"])

    @property
    def thumbprint(self) -> str:
        """SHA-256 of the server certificate (DER), colon-separated upper hex."""
        der = ssl.PEM_cert_to_DER_cert(self.cert_pem)
        return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())

    def datastore_dir(self, name: str = "LocalDS_0") -> Path:
        """The local directory backing datastore `name`."""
        return Path(self.ready["datastores"][name])

    def connect(self) -> Any:
        """A logged-in pyVmomi vim.ServiceInstance; the certificate is pinned by
        thumbprint instead of verified. Disconnect() it when done."""
        context = ssl._create_unverified_context()
        return SmartConnect(
            host="127.0.0.1",
            port=self.port,
            user=self.username,
            pwd=self.password,
            sslContext=context,
            thumbprint=self.thumbprint,
        )

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        si = self.connect()
        try:
            yield si
        finally:
            Disconnect(si)


@contextlib.contextmanager
def running_vcsim(datastore_root: Path, **options: Any) -> Iterator[Vcsim]:
    """A started Vcsim for a fixture: `with running_vcsim(path) as vc: yield vc`."""
    server = Vcsim(datastore_root, **options)
    with server:
        yield server
