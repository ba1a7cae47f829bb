"""`cpa demo`: the forward_invoice job end to end (default), or `--minimal`: built-in actions only.

The full demo needs the browser executor and Chromium, the mail executor, the loopback Graph,
artifacts and the forward_invoice intent; `cpa demo` names whatever of them is missing (and the
one command that installs Chromium) and exits 2. `--or-minimal` runs the minimal demo instead,
after saying why: `make demo` uses it, so the README's first command works on any checkout.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cpa_client.telemetry import configure_logging

from ..common import CliError, emit, warn
from .forward_invoice import DEFAULT_RECIPIENT, DemoOptions, previous_month, run_forward_invoice
from .invoice_pdf import UnknownMonthError, parse_month
from .minimal import run_minimal
from .parts import missing_parts

EXIT_MISSING_PARTS = 2


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run the portal → PDF → mail demo (or --minimal: built-in actions only)",
        description="Start the embedded scheduler (temporary store, free port on 127.0.0.1), "
        "the demo supplier portal, a loopback Microsoft Graph, a browser agent and a mail "
        "agent (two processes), submit the forward_invoice intent, show its progress live and "
        "print the delivered mail (its PDF checked against the portal's by sha256) and where "
        "the screenshots of the browser steps are. With --minimal: one in-process agent with "
        "the built-in actions runs a portal-style job of parallel branches and a join. Exits "
        "0 if the job SUCCEEDED (and the mail carries the portal's PDF).",
    )
    parser.add_argument(
        "--minimal",
        action="store_true",
        help="run the no-browser demo: built-in actions on one in-process agent",
    )
    parser.add_argument(
        "--or-minimal",
        action="store_true",
        help="run the minimal demo when a part of the full one is missing (after naming it)",
    )
    parser.add_argument(
        "--month",
        metavar="YYYY-MM",
        help="the invoice to forward (default: last month's)",
    )
    parser.add_argument(
        "--recipient",
        default=DEFAULT_RECIPIENT,
        metavar="ADDRESS",
        help=f"who receives the invoice (default {DEFAULT_RECIPIENT})",
    )
    parser.add_argument(
        "--screenshots-dir",
        type=Path,
        metavar="DIR",
        help="where the screenshots go (default: a new directory in the system's temp dir)",
    )
    parser.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the temporary data directory (store, agent logs) and print its path",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="give up when the job has not ended after this long (default 30, full demo 120)",
    )
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    if arguments.timeout is not None and arguments.timeout <= 0:
        raise CliError("demo: --timeout must be > 0")
    # The demo's own output tells the story; the components' INFO logs would drown it. Their
    # warnings go through the same redacting renderer as `cpa serve`'s (an executor's error
    # may quote an IBAN or an address from the job), as console lines.
    configure_logging("WARNING", json_lines=False)
    if arguments.minimal:
        return run_minimal(timeout_s=arguments.timeout or 30.0, keep_data=arguments.keep_data)
    month = arguments.month or previous_month()
    try:
        parse_month(month)
    except UnknownMonthError as error:
        raise CliError(f"demo: --month: {error}") from None
    missing = missing_parts()
    if missing:
        warn("cpa demo: the portal → PDF → mail demo cannot run here:")
        for part in missing:
            warn(f"  - {part}")
        if not arguments.or_minimal:
            warn("run `cpa demo --minimal` for the demo of the built-in actions")
            return EXIT_MISSING_PARTS
        warn("running the minimal demo (built-in actions) instead")
        emit()
        return run_minimal(timeout_s=arguments.timeout or 30.0, keep_data=arguments.keep_data)
    options = DemoOptions(
        month=month,
        recipient=arguments.recipient,
        timeout_s=arguments.timeout or 120.0,
        keep_data=arguments.keep_data,
        output_dir=arguments.screenshots_dir,
    )
    return run_forward_invoice(options)
