"""The one way this repository's clients reach a scheduler: a channel, plaintext or TLS that
verifies the server (and, for mutual TLS, presents a client certificate), and the credential
every call carries as metadata (`credential_metadata`).

The SDK (SchedulerClient, AdminClient), the CLI and the executor agent all call `open_channel`
and `credential_metadata`, so they verify servers and present credentials the same way and fail
the same way (docs/SECURITY.md). The credential is call metadata rather than gRPC call
credentials: those are refused on plaintext channels, and the loopback default is plaintext.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

ChannelOptions = Sequence[tuple[str, Any]]
Metadata = tuple[tuple[str, str], ...]

AUTHORIZATION_KEY = "authorization"


class TlsFileError(ValueError):
    """A TLS file of the client cannot be used: the message names the file and why."""


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How a client speaks TLS to the scheduler.

    `ca_file`: PEM CA certificates the server's certificate must chain to; None trusts the
    system's roots. `cert_file` and `key_file` (together): the client certificate a server
    with mutual TLS asks for. `server_name`: the name the server's certificate must carry when
    it differs from the host dialled (tests, an address reached through a tunnel)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise TlsFileError("a client certificate needs both its certificate and key file")

    def credentials(self) -> grpc.ChannelCredentials:
        """Reads the files now (a renewed client certificate is used by the next channel)."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA"),
            private_key=_read(self.key_file, "client key"),
            certificate_chain=_read(self.cert_file, "client certificate"),
        )

    def options(self) -> list[tuple[str, Any]]:
        if not self.server_name:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TlsFileError(f"cannot read the {what} file {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise TlsFileError(f"the {what} file {path} holds no PEM data")
    return data


def open_channel(
    target: str, *, tls: ClientTls | None = None, options: ChannelOptions = ()
) -> grpc.aio.Channel:
    """An asyncio channel to `target`: TLS when `tls` is given, else plaintext."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, tls.credentials(), options=[*options, *tls.options()])


def credential_metadata(
    credential: str | None, metadata: Mapping[str, str] | None = None
) -> Metadata:
    """The metadata of every call: `metadata`, and `authorization: Bearer <credential>` (an API
    key, a JWT or an agent token) when there is one."""
    pairs = [(key, value) for key, value in (metadata or {}).items()]
    if credential:
        pairs.append((AUTHORIZATION_KEY, f"Bearer {credential}"))
    return tuple(pairs)


# Substrings of gRPC's UNAVAILABLE details (BoringSSL and gRPC core texts) -> what they mean.
_TLS_FAILURES = (
    (
        "CERTIFICATE_VERIFY_FAILED",
        "the server's certificate is not trusted (not signed by the CA the client trusts, "
        "expired, or not naming the address dialled)",
    ),
    (
        "WRONG_VERSION_NUMBER",
        "the server does not speak TLS (a plaintext listener?)",
    ),
    (
        "Ssl handshake failed",
        "the TLS handshake failed",
    ),
    (
        "Tls handshake failed",
        "the TLS handshake failed",
    ),
)


def tls_failure(details: str) -> str:
    """What a failed connection's details say about TLS, in words; "" when nothing."""
    for marker, meaning in _TLS_FAILURES:
        if marker in details:
            return meaning
    return ""


# Calls gRPC may repeat by itself after UNAVAILABLE (the scheduler unreachable, a connection
# reset): reads, and the submissions the SDK always sends with request ids (a repeat returns
# the job the first attempt created). CancelJob, RetryJob, RetryJobs, RetryCallbacks and
# SendMessage are not repeated: a repeat is not the same request to the server.
SCHEDULER_SERVICE = "cpa.scheduler.v1.SchedulerService"
RETRYABLE_METHODS = (
    "ScheduleJob",
    "BatchScheduleJobs",
    "GetJob",
    "ListJobs",
    "WatchJob",
    "PreviewPlan",
    "ListAgents",
    "ListArtifacts",
    "DownloadArtifact",
    "ListCallbacks",
    "ListAuditEntries",
)


def retry_options(
    *, service: str = SCHEDULER_SERVICE, methods: Sequence[str] = RETRYABLE_METHODS
) -> list[tuple[str, Any]]:
    """Channel options whose service config (gRPC's retry policy, A6) repeats `methods` after
    UNAVAILABLE: up to 5 attempts, backing off 0.1 s doubling to 2 s. A stream is repeated only
    before its first answer (gRPC's rule), so a watch resumes through SchedulerClient.watch."""
    config = {
        "methodConfig": [
            {
                "name": [{"service": service, "method": method} for method in methods],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(config)),
        # gRPC's first reconnect waits 1 s by default: a restarted scheduler is seen sooner.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
