"""A throw-away certificate authority and the certificates it signs (servers and clients).

MSAL refuses an authority that is not https, so the loopback Graph and token endpoint need TLS:
clients trust `ca_file` (and nothing else from the system) and the server presents `cert_file`.
Files already in the directory are reused while they are valid for another day.

`LocalCa` is the same authority as a value: the tests of the scheduler's TLS listener (mutual
TLS, certificate rotation) make their CAs, server and client certificates with it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server-key.pem"
VALID_DAYS = 30
# The names every server certificate carries: a loopback server is dialled by any of them.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA clients trust, the server's certificate and its private key (0600)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate signed by a LocalCa and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, cert_file: Path, key_file: Path) -> None:
        """Both files, each written beside and renamed (a reader never sees half a file)."""
        write_file(cert_file, self.cert_pem, 0o644)
        write_file(key_file, self.key_pem, 0o600)


class LocalCa:
    """A certificate authority held in memory: `LocalCa.create(name)`, then `issue(...)`."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert

    @classmethod
    def create(cls, common_name: str, *, valid_days: int = VALID_DAYS) -> LocalCa:
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        hosts: tuple[str, ...] = (),
        client: bool = False,
        valid_days: int = VALID_DAYS,
    ) -> IssuedCertificate:
        """A server certificate for `hosts` (DNS names or IP addresses), or with `client` a
        client certificate (TLS client authentication) naming `common_name`."""
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(host) for host in hosts]),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        return IssuedCertificate(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def ensure_tls_files(directory: Path, *, hosts: tuple[str, ...] = ()) -> TlsFiles:
    """The CA and server certificate in `directory` (created 0700), made anew unless the ones
    there are valid for at least another day. The server certificate names localhost,
    127.0.0.1 and ::1, plus `hosts`."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = TlsFiles(directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE)
    if _still_valid(files, hosts):
        return files
    ca = LocalCa.create("CPA demo loopback CA")
    server = ca.issue("localhost", hosts=(*LOOPBACK_NAMES, *hosts))
    write_file(files.ca_file, ca.cert_pem, 0o644)
    server.write(files.cert_file, files.key_file)
    return files


def _still_valid(files: TlsFiles, hosts: tuple[str, ...]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        ca = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
        if not files.key_file.is_file():
            return False
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=1):
        return False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    present = {str(name) for name in san.get_values_for_type(x509.DNSName)}
    present |= {str(name) for name in san.get_values_for_type(x509.IPAddress)}
    return all(host in present for host in hosts)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Written beside and renamed, so a reader never sees half a file; a key is 0600 from
    birth."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(partial, mode)
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Create a loopback CA and server certificate.")
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    files = ensure_tls_files(args.directory)
    print(f"CA: {files.ca_file}\ncertificate: {files.cert_file}\nkey: {files.key_file}")


if __name__ == "__main__":
    main()
