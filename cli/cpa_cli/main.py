"""Argument parsing for `cpa`: each subcommand lives in its own module and registers itself here.

Errors end here too, each as one `cpa: ...` line on stderr and exit code 2: the domain's own
(`cpa plan`), the scheduler's (CpaError: code, reason, message, one line per bad field), an
unreachable scheduler (with a hint naming the address), and the CLI's (bad options or files).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from pydantic import ValidationError

from cpa_client import CpaError, TlsFileError
from cpa_client.channels import tls_failure
from cpa_scheduler.domain import DomainError

from . import (
    agent_command,
    agents_command,
    artifacts_command,
    audit_command,
    callbacks_command,
    gateway_command,
    health_command,
    intents_command,
    jobs_command,
    keys_command,
    memory_command,
    migrate_command,
    plan_command,
    policy_command,
    serve_command,
    submit_command,
    top_command,
)
from .common import SERVER_ENV, CliError
from .demo import command as demo_command

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpa",
        description="CPA Scheduler: plan requests into task graphs, run them on agents.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plan_command.register(commands)
    serve_command.register(commands)
    gateway_command.register(commands)
    agent_command.register(commands)
    submit_command.register(commands)
    jobs_command.register(commands)
    agents_command.register(commands)
    intents_command.register(commands)
    artifacts_command.register(commands)
    callbacks_command.register(commands)
    audit_command.register(commands)
    memory_command.register(commands)
    demo_command.register(commands)
    migrate_command.register(commands)
    health_command.register(commands)
    keys_command.register(commands)
    policy_command.register(commands)
    top_command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        code: int = arguments.run(arguments)
    except DomainError as error:
        where = f" (field {error.field})" if error.field else ""
        _error(f"cpa: {error.reason.value}: {error.message}{where}")
        return EXIT_USAGE
    except CpaError as error:
        _error(*render_cpa_error(error, server=getattr(arguments, "server", None)))
        return EXIT_USAGE
    except grpc.RpcError as error:
        # A call the SDK did not wrap (or a channel failure): still a report, never a traceback.
        _error(*render_cpa_error(CpaError.from_rpc_error(error), server=None))
        return EXIT_USAGE
    except (CliError, TlsFileError) as error:
        _error(f"cpa: {error}")
        return EXIT_USAGE
    except ValidationError as error:
        _error(f"cpa: invalid configuration: {_validation_text(error)}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`cpa watch ID | head`): stop quietly, and keep Python's exit
        # flush from failing again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


def render_cpa_error(error: CpaError, *, server: str | None) -> list[str]:
    """`cpa: NOT_FOUND: JOB_NOT_FOUND: job 'x' not found`, then one line per bad field."""
    if error.code == grpc.StatusCode.UNAVAILABLE and server is not None:
        if meaning := tls_failure(error.message):
            return [
                f"cpa: UNAVAILABLE: no TLS connection to the scheduler at {server}: {meaning}",
                f"  ({error.message})",
                "  Give --ca-file (or $CPA_TLS_CA_FILE) the CA that signed the server's "
                "certificate, and --cert-file/--key-file if it asks for a client certificate.",
            ]
        return [
            f"cpa: UNAVAILABLE: cannot reach the scheduler at {server} ({error.message})",
            f"  is `cpa serve` running there? Point --server or ${SERVER_ENV} at it.",
        ]
    head = f"cpa: {error.code.name}: " + (f"{error.reason}: " if error.reason else "")
    lines = [head + error.message]
    # A violation's description often repeats the message; then the field alone says it all.
    lines += [
        f"  field {v.field}" + ("" if v.description == error.message else f": {v.description}")
        for v in error.field_violations
    ]
    return lines


def _validation_text(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: {item['msg']}"
        for item in error.errors()
    )


def _error(*lines: str) -> None:
    for line in lines:
        print(line, file=sys.stderr)
