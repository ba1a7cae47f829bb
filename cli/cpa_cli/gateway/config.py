"""Renders the gateway's Envoy config from deploy/envoy/envoy.yaml.j2.

The template is the one source of truth; this module only turns settings and flags into its
variables, checked (ports are integers, hosts carry no brackets or quotes), so a user changes
ports or upstreams with flags and never edits YAML. A wheel install carries the template and
api.binpb as data files (pyproject.toml), so `cpa gateway` needs no repository.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from cpa_client.errors import ERROR_DOMAIN
from cpa_scheduler.settings import Settings

from ..common import CliError, split_host_port
from .http_rules import rest_paths

TEMPLATE = Path("envoy") / "envoy.yaml.j2"
DESCRIPTOR = Path("api.binpb")
# The API reference Envoy serves itself, generated from the descriptor set (tools/apidoc):
# (URL path, file under deploy/, content type).
API_DOCS = (
    ("/openapi.json", Path("openapi") / "cpa-scheduler.openapi.json", "application/json"),
    ("/docs", Path("openapi") / "cpa-scheduler.html", "text/html; charset=utf-8"),
)
# An origin as browsers send it (RFC 6454): scheme://host[:port], nothing after.
_ORIGIN = re.compile(
    r"^https?://[A-Za-z0-9.\-]+(:\d{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?$"
)
# The services REST callers reach; ExecutorService (bidi agent streams) stays native gRPC only.
# A new connection to a replica; longer means a dead host holds calls that long.
CONNECT_TIMEOUT_S = 2.0
TRANSCODED_SERVICES = ("cpa.scheduler.v1.SchedulerService",)
# The repository's deploy/ seen from cli/cpa_cli/gateway/ (an editable or source install).
_SOURCE_DEPLOY_DIR = Path(__file__).resolve().parents[3] / "deploy"
# Where a wheel install puts deploy/'s files (pyproject.toml [tool.setuptools.data-files]).
DISTRIBUTION = "cpa-scheduler"
INSTALLED_DEPLOY_DIR = "share/cpa-scheduler/deploy"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, address: str, what: str, *, allow_port_zero: bool = False) -> Endpoint:
        try:
            host, port = split_host_port(address)
        except CliError:
            raise CliError(f"{what}: expected HOST:PORT, got {address!r}") from None
        host = host.removeprefix("[").removesuffix("]")  # Envoy wants IPv6 bare
        if not host or any(c.isspace() or c in "\"'[]{}," for c in host):
            raise CliError(f"{what}: bad host in {address!r}")
        if port > 65535 or (port == 0 and not allow_port_zero):
            raise CliError(f"{what}: port out of range in {address!r}")
        return cls(host, port)

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UpstreamTls:
    """How the gateway speaks TLS to the schedulers: the CA it trusts, the name it requires
    (empty: any the CA signed), and a client certificate for schedulers with mutual TLS."""

    ca_file: Path
    server_name: str = ""
    client_cert: tuple[Path, Path] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> UpstreamTls | None:
        cert, key = settings.gateway_upstream_tls_cert_file, settings.gateway_upstream_tls_key_file
        client_cert = _pair(
            cert, key, "CPA_GATEWAY_UPSTREAM_TLS_CERT_FILE", "CPA_GATEWAY_UPSTREAM_TLS_KEY_FILE"
        )
        if settings.gateway_upstream_tls_ca_file is None:
            if client_cert is not None or settings.gateway_upstream_tls_server_name:
                raise CliError(
                    "gateway: CPA_GATEWAY_UPSTREAM_TLS_CERT_FILE, …_KEY_FILE and …_SERVER_NAME "
                    "go with CPA_GATEWAY_UPSTREAM_TLS_CA_FILE (TLS to the schedulers)"
                )
            return None
        return cls(
            ca_file=_tls_file(
                settings.gateway_upstream_tls_ca_file, "CPA_GATEWAY_UPSTREAM_TLS_CA_FILE"
            ),
            server_name=settings.gateway_upstream_tls_server_name,
            client_cert=client_cert,
        )


def _pair(
    cert: Path | None, key: Path | None, cert_setting: str, key_setting: str
) -> tuple[Path, Path] | None:
    """A certificate and its key, both existing, or neither; a CliError for one alone."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise CliError(f"gateway: {cert_setting} and {key_setting} go together")
    return _tls_file(cert, cert_setting), _tls_file(key, key_setting)


@dataclass(frozen=True)
class GatewayConfig:
    """What one gateway serves: where it listens, which schedulers it fronts, its limits."""

    listen: Endpoint
    upstreams: tuple[Endpoint, ...]
    admin: Endpoint
    descriptor_path: Path
    template_path: Path
    # (URL path, file, content type) of each API_DOCS entry.
    api_docs: tuple[tuple[str, Path, str], ...]
    max_request_bytes: int
    max_response_bytes: int
    stream_idle_timeout_s: float
    health_interval_s: float
    max_connections: int
    access_log_path: str = ""
    services: tuple[str, ...] = field(default=TRANSCODED_SERVICES)
    upstream_tls: UpstreamTls | None = None
    # (certificate chain, private key) of the listener's TLS; None: plaintext.
    downstream_tls: tuple[Path, Path] | None = None
    # Browser origins allowed to call (CORS); ("*",): any; (): none.
    cors_allowed_origins: tuple[str, ...] = ()

    @classmethod
    def build(cls, listen: str, upstreams: list[str], settings: Settings) -> GatewayConfig:
        """From `--listen`/`--upstream` flags and the CPA_* settings; a CliError for bad ones."""
        if not upstreams:
            raise CliError("gateway: at least one --upstream HOST:PORT is needed")
        _check_idle_timeout(settings)
        base = deploy_dir(settings)
        return cls(
            listen=Endpoint.parse(listen, "--listen", allow_port_zero=True),
            upstreams=tuple(Endpoint.parse(u, "--upstream") for u in upstreams),
            admin=Endpoint.parse(
                settings.gateway_admin_address, "CPA_GATEWAY_ADMIN_ADDRESS", allow_port_zero=True
            ),
            descriptor_path=_existing(base / DESCRIPTOR),
            template_path=_existing(base / TEMPLATE),
            api_docs=tuple((url, _existing(base / file), kind) for url, file, kind in API_DOCS),
            max_request_bytes=settings.max_request_bytes,
            max_response_bytes=settings.gateway_max_response_bytes,
            stream_idle_timeout_s=settings.gateway_stream_idle_timeout_s,
            health_interval_s=settings.gateway_health_interval_s,
            max_connections=settings.gateway_max_connections,
            access_log_path=settings.gateway_access_log,
            upstream_tls=UpstreamTls.from_settings(settings),
            downstream_tls=_pair(
                settings.gateway_tls_cert_file,
                settings.gateway_tls_key_file,
                "CPA_GATEWAY_TLS_CERT_FILE",
                "CPA_GATEWAY_TLS_KEY_FILE",
            ),
            cors_allowed_origins=cors_origins(settings.gateway_cors_allowed_origins),
        )


def cors_origins(value: str) -> tuple[str, ...]:
    """CPA_GATEWAY_CORS_ALLOWED_ORIGINS as a tuple of origins, or ("*",); a CliError for an entry
    no browser would send as its Origin (a path, a trailing slash, no scheme): it would never
    match, and the page's calls would fail with nothing said why."""
    origins = tuple(o.strip() for o in value.split(",") if o.strip())
    if "*" in origins:
        if len(origins) > 1:
            raise CliError("gateway: CPA_GATEWAY_CORS_ALLOWED_ORIGINS: * goes alone")
        return origins
    for origin in origins:
        if not _ORIGIN.match(origin):
            raise CliError(
                f"gateway: CPA_GATEWAY_CORS_ALLOWED_ORIGINS: {origin!r} is not an origin "
                "(scheme://host[:port], no path or trailing slash)"
            )
    return origins


def _check_idle_timeout(settings: Settings) -> None:
    """A WatchJob stream with nothing to say carries a heartbeat every watch_heartbeat_s: the
    gateway must wait longer than that before it calls the stream idle, or it cuts every quiet
    watch. (The gateway's own settings stand for the schedulers'; docs/GATEWAY.md says to keep
    them alike.)"""
    idle_s, heartbeat_s = settings.gateway_stream_idle_timeout_s, settings.watch_heartbeat_s
    if heartbeat_s > 0 and idle_s <= heartbeat_s:
        raise CliError(
            f"gateway: CPA_GATEWAY_STREAM_IDLE_TIMEOUT_S ({idle_s:g}) must be larger than "
            f"CPA_WATCH_HEARTBEAT_S ({heartbeat_s:g}), or quiet WatchJob streams are cut; "
            "keep it several heartbeats long"
        )


def deploy_dir(settings: Settings) -> Path:
    """CPA_GATEWAY_DEPLOY_DIR, else the repository's deploy/ next to these sources, else the
    copy a wheel install made (under the environment's prefix)."""
    if settings.gateway_deploy_dir is not None:
        return settings.gateway_deploy_dir
    if (_SOURCE_DEPLOY_DIR / TEMPLATE).is_file():
        return _SOURCE_DEPLOY_DIR
    return _installed_deploy_dir() or _SOURCE_DEPLOY_DIR


def _installed_deploy_dir() -> Path | None:
    """The data files' directory, found in the distribution's own file list (RECORD), so any
    install scheme (virtualenv, --user, --prefix) is right."""
    try:
        files = importlib.metadata.distribution(DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted = f"{INSTALLED_DEPLOY_DIR}/{DESCRIPTOR.as_posix()}"
    for file in files:
        if file.as_posix().endswith(wanted):
            return Path(str(file.locate())).resolve().parent
    return None


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise CliError(
            f"gateway: {path} is missing; set CPA_GATEWAY_DEPLOY_DIR to the repository's deploy/"
        )
    return path.resolve()


def _tls_file(path: Path, setting: str) -> Path:
    if not path.is_file():
        raise CliError(f"gateway: {setting}: {path} is not a readable file")
    return path.resolve()


def _duration(seconds: float) -> str:
    """A protobuf Duration in JSON form ("2.5s"), as Envoy's YAML takes it."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def render_envoy_config(config: GatewayConfig) -> str:
    """The Envoy bootstrap YAML for `config`, from the template."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(config.template_path.parent),
        undefined=jinja2.StrictUndefined,  # a variable the template names but we forgot: error
        autoescape=False,  # YAML, not HTML; values go through `tojson`
        keep_trailing_newline=True,
    )
    template = environment.get_template(config.template_path.name)
    # Health checks time out well inside their interval, and a new connection sooner still.
    health_timeout_s = max(0.1, min(1.0, config.health_interval_s / 2))
    return template.render(
        listen=config.listen,
        admin=config.admin,
        upstreams=config.upstreams,
        all_ip=all(u.is_ip for u in config.upstreams),
        descriptor_path=str(config.descriptor_path),
        services=list(config.services),
        rest_paths=rest_paths(config.descriptor_path, config.services),
        max_request_bytes=config.max_request_bytes,
        max_response_bytes=config.max_response_bytes,
        stream_idle_timeout=_duration(config.stream_idle_timeout_s),
        connect_timeout=_duration(CONNECT_TIMEOUT_S),
        health_timeout=_duration(health_timeout_s),
        health_interval=_duration(config.health_interval_s),
        max_connections=config.max_connections,
        access_log_path=config.access_log_path,
        # The gateway's own errors carry the scheduler's ErrorInfo domain.
        error_domain=ERROR_DOMAIN,
        api_docs=[(url, str(path), kind) for url, path, kind in config.api_docs],
        # Envoy refuses a direct response body over this (4 KiB by default) when it loads.
        api_docs_max_bytes=max((path.stat().st_size for _, path, _ in config.api_docs), default=0),
        upstream_tls=config.upstream_tls,
        downstream_tls=config.downstream_tls,
        cors_allowed_origins=list(config.cors_allowed_origins),
    )
