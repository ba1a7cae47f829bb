"""Pieces every `cpa` subcommand shares: the CLI's own error, KEY=VALUE options, --server, stdout.

Rendering jobs and events lives in output.py; this module is about arguments and plumbing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cpa_client import ClientTls, TlsFileError

DEFAULT_SERVER = "127.0.0.1:50051"
SERVER_ENV = "CPA_SERVER"


class CliError(Exception):
    """A problem the user can fix (bad option, unreadable file): `cpa: <message>`, exit 2."""


def pairs(values: Sequence[str], option: str) -> dict[str, str]:
    """`["k=v", ...]` as a mapping; a value without '=' or with an empty key is a CliError."""
    result: dict[str, str] = {}
    for value in values:
        key, separator, item = value.partition("=")
        if not separator or not key:
            raise CliError(f"{option} needs KEY=VALUE, got {value!r}")
        result[key] = item
    return result


def add_pair_option(parser: argparse.ArgumentParser, option: str, help_text: str) -> None:
    parser.add_argument(
        option, action="append", default=[], metavar="KEY=VALUE", help=f"{help_text}; repeatable"
    )


def add_server_option(parser: argparse.ArgumentParser) -> None:
    """--server HOST:PORT, defaulting to $CPA_SERVER or 127.0.0.1:50051, and the TLS options
    of the connection to it (client_tls)."""
    parser.add_argument(
        "--server",
        default=os.environ.get(SERVER_ENV) or DEFAULT_SERVER,
        metavar="HOST:PORT",
        help=f"scheduler address (default: ${SERVER_ENV} or {DEFAULT_SERVER})",
    )
    add_tls_options(parser)


# TLS options of every command that dials a scheduler: (flag, environment variable, help).
TLS_OPTIONS = (
    (
        "--ca-file",
        "CPA_TLS_CA_FILE",
        "speak TLS; trust the server certificate only if this PEM CA file signed it",
    ),
    (
        "--cert-file",
        "CPA_TLS_CLIENT_CERT_FILE",
        "client certificate (PEM) for a server with mutual TLS; with --key-file",
    ),
    ("--key-file", "CPA_TLS_CLIENT_KEY_FILE", "private key (PEM) of --cert-file"),
    (
        "--tls-server-name",
        "CPA_TLS_SERVER_NAME",
        "name the server certificate must carry when it differs from the host dialled",
    ),
)
TLS_ENV = "CPA_TLS"


def add_tls_options(parser: argparse.ArgumentParser) -> None:
    for flag, variable, help_text in TLS_OPTIONS:
        parser.add_argument(
            flag, default=os.environ.get(variable) or None, help=f"{help_text} (${variable})"
        )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get(TLS_ENV, "").lower() in ("1", "true", "yes"),
        help=f"speak TLS, trusting the system's CAs (implied by --ca-file and --cert-file; "
        f"${TLS_ENV}=1)",
    )


def client_tls(arguments: argparse.Namespace) -> ClientTls | None:
    """The TLS of the connection the options ask for; None: plaintext."""
    ca, cert, key = arguments.ca_file, arguments.cert_file, arguments.key_file
    if not (arguments.tls or ca or cert or key):
        if arguments.tls_server_name:
            raise CliError("--tls-server-name goes with TLS (--ca-file or --tls)")
        return None
    try:
        return ClientTls(
            ca_file=Path(ca) if ca else None,
            cert_file=Path(cert) if cert else None,
            key_file=Path(key) if key else None,
            server_name=arguments.tls_server_name or "",
        )
    except TlsFileError:
        raise CliError("--cert-file and --key-file go together") from None


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help=f"print {what} as protobuf JSON instead of aligned text",
    )


def emit(line: str = "") -> None:
    """One line to stdout, flushed at once: tests and pipes read lines as they happen."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def warn(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def split_host_port(address: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) into host and port; a CliError when it is neither."""
    host, separator, port = address.rpartition(":")
    if not separator or not port.isdigit():
        raise CliError(f"expected HOST:PORT, got {address!r}")
    return host, int(port)


def dialable_host(listen_host: str) -> str:
    """The host a local client dials to reach a server listening on `listen_host`."""
    return "127.0.0.1" if listen_host in ("", "0.0.0.0", "[::]", "::") else listen_host
