"""Argument parsing for `cpa`: each subcommand lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cpa_scheduler.domain import DomainError

from . import plan_command

EXIT_OK = 0
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpa",
        description="CPA Scheduler: plan requests into task graphs, run them on agents.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plan_command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        code: int = arguments.run(arguments)
    except DomainError as error:
        where = f" (field {error.field})" if error.field else ""
        print(f"cpa: {error.reason.value}: {error.message}{where}", file=sys.stderr)
        return EXIT_USAGE
    return code
