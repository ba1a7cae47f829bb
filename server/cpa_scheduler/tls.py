"""TLS on the gRPC listener: the server's certificate, reloaded without a restart, and the
client CA of mutual TLS (docs/SECURITY.md, "Transport security (TLS)").

gRPC asks `_fetch` for a new certificate configuration at each TLS handshake (from its own
threads, so it is cheap and takes a lock). A configuration staged by `reload()` (SIGHUP) or
found by the file check (the files' identity changed, looked at no more than once per
`check_interval_s`) is handed over there: new connections get the new certificate, open
connections keep theirs and are not dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .settings import Settings

log = logging.getLogger(__name__)


class TlsConfigError(RuntimeError):
    """A TLS setting or file is wrong: the message names the setting or file and why."""


@dataclass(frozen=True, slots=True)
class _Loaded:
    """One consistent read of the files: what gRPC gets, and what the log says about it."""

    configuration: grpc.ServerCertificateConfiguration
    identity: tuple[tuple[int, int, int], ...]
    subject: str
    not_after: str


def _identity(path: Path) -> tuple[int, int, int]:
    """What changes when a file is replaced or rewritten (a renamed-in copy gets a new inode)."""
    stat = path.stat()
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _read(path: Path, setting: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TlsConfigError(f"{setting}: cannot read {path}: {error.strerror or error}") from None
    if not data.strip():
        raise TlsConfigError(f"{setting}: {path} is empty")
    return data


class ServerTls:
    """The listener's credentials; `from_settings` gives None when TLS is off."""

    def __init__(
        self,
        *,
        cert_file: Path,
        key_file: Path,
        client_ca_file: Path | None = None,
        check_interval_s: float = 5.0,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self._check_interval_s = check_interval_s
        self._lock = threading.Lock()
        self._current = self._load()  # a bad file stops the start, with its reason
        self._staged: grpc.ServerCertificateConfiguration | None = None
        self._next_check_s = time.monotonic() + check_interval_s
        self.reloads = 0
        """Configurations handed to gRPC after the first (for tests and logs)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerTls | None:
        cert, key, client_ca = (
            settings.tls_cert_file,
            settings.tls_key_file,
            settings.tls_client_ca_file,
        )
        if cert is None and key is None:
            if client_ca is not None:
                raise TlsConfigError(
                    "CPA_TLS_CLIENT_CA_FILE needs CPA_TLS_CERT_FILE and CPA_TLS_KEY_FILE: "
                    "client certificates are checked only on a TLS listener"
                )
            return None
        if cert is None or key is None:
            raise TlsConfigError(
                "CPA_TLS_CERT_FILE and CPA_TLS_KEY_FILE go together: set both for TLS, or neither"
            )
        return cls(
            cert_file=cert,
            key_file=key,
            client_ca_file=client_ca,
            check_interval_s=settings.tls_reload_check_s,
        )

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    def credentials(self) -> grpc.ServerCredentials:
        """For add_secure_port: the current certificate, then whatever _fetch hands over.

        gRPC's Python API offers a client CA only with client certificates required (without
        the requirement it asks for none), so a client CA means mutual TLS for every caller."""
        return grpc.dynamic_ssl_server_credentials(
            self._current.configuration,
            self._fetch,  # type: ignore[arg-type]  # grpc-stubs: it may return None (keep)
            require_client_authentication=self.mutual,
        )

    def reload(self) -> bool:
        """Read the files now (SIGHUP); the next handshake uses them. False, with a warning
        logged, when they are unusable: the current certificate stays."""
        try:
            loaded = self._load()
        except TlsConfigError as error:
            log.warning("TLS reload failed, keeping the current certificate: %s", error)
            return False
        with self._lock:
            self._stage(loaded)
        return True

    def _stage(self, loaded: _Loaded) -> None:
        self._current = loaded
        self._staged = loaded.configuration
        log.info(
            "TLS certificate loaded for new connections: %s, valid until %s",
            loaded.subject,
            loaded.not_after,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration, or None to keep the one it has. Never raises
        (a raise would fail the handshake)."""
        with self._lock:
            try:
                self._check_files()
            except Exception:  # a surprise here must not cost the caller its connection
                log.exception("checking the TLS files failed")
            staged, self._staged = self._staged, None
            if staged is not None:
                self.reloads += 1
            return staged

    def _check_files(self) -> None:
        """Under the lock: reload when a file changed, at most once per interval."""
        now = time.monotonic()
        if now < self._next_check_s:
            return
        self._next_check_s = now + self._check_interval_s
        try:
            identity = self._identities()
        except OSError:
            return  # mid-replacement; the next check sees the new files
        if identity == self._current.identity:
            return
        try:
            self._stage(self._load())
        except TlsConfigError as error:
            # Often a half-done rotation (the certificate new, the key not yet): next check.
            log.warning("TLS files changed but cannot be used yet: %s", error)

    def _identities(self) -> tuple[tuple[int, int, int], ...]:
        paths = (self.cert_file, self.key_file, self.client_ca_file)
        return tuple(_identity(path) for path in paths if path is not None)

    def _load(self) -> _Loaded:
        try:
            identity = self._identities()
        except OSError as error:
            raise TlsConfigError(f"cannot read {error.filename}: {error.strerror}") from None
        chain = _read(self.cert_file, "CPA_TLS_CERT_FILE")
        key = _read(self.key_file, "CPA_TLS_KEY_FILE")
        client_ca = None
        if self.client_ca_file is not None:
            client_ca = _read(self.client_ca_file, "CPA_TLS_CLIENT_CA_FILE")
            _certificates(client_ca, "CPA_TLS_CLIENT_CA_FILE", self.client_ca_file)
        leaf = _certificates(chain, "CPA_TLS_CERT_FILE", self.cert_file)[0]
        _check_key_matches(leaf, key, self.key_file)
        return _Loaded(
            configuration=grpc.ssl_server_certificate_configuration(
                [(key, chain)], root_certificates=client_ca
            ),
            identity=identity,
            subject=leaf.subject.rfc4514_string(),
            not_after=leaf.not_valid_after_utc.isoformat(),
        )


def _certificates(pem: bytes, setting: str, path: Path) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as error:
        raise TlsConfigError(f"{setting}: {path} holds no PEM certificate ({error})") from None
    return certificates


def _check_key_matches(leaf: x509.Certificate, key_pem: bytes, path: Path) -> None:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise TlsConfigError(
            f"CPA_TLS_KEY_FILE: {path} holds no unencrypted PEM private key ({error})"
        ) from None
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != leaf.public_key().public_bytes(*public):
        raise TlsConfigError(
            f"CPA_TLS_KEY_FILE: {path} is not the key of the certificate in CPA_TLS_CERT_FILE"
        )
