"""`cpa migrate`: bring a PostgreSQL database to the schema revision this cpa needs.

Servers refuse to start on a database that is not at that revision, so this is the one step
between installing a new version and running it (safe to repeat, and to run from two places).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from cpa_scheduler.storage.migrations import (
    DatabaseUnavailableError,
    InvalidDatabaseUrlError,
    SchemaMismatchError,
    migrate,
    redact_url,
    schema_revision,
)

from .common import CliError, emit

DATABASE_URL_ENV = "CPA_DATABASE_URL"


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "migrate",
        help="upgrade the PostgreSQL schema to this version's revision",
        description="Upgrade the PostgreSQL database of the distributed mode to the newest "
        "schema revision this cpa knows, and print the revision. Does nothing when it is "
        "already there; concurrent runs take turns.",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_URL_ENV) or None,
        metavar="URL",
        help=f"postgresql://USER@HOST:PORT/DATABASE (default: ${DATABASE_URL_ENV})",
    )
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    url: str | None = arguments.database_url
    if not url:
        raise CliError(f"migrate: name the database with --database-url or ${DATABASE_URL_ENV}")
    try:
        before = schema_revision(url)
        after = migrate(url)
    except (InvalidDatabaseUrlError, DatabaseUnavailableError, SchemaMismatchError) as error:
        raise CliError(f"migrate: {error}") from None
    where = redact_url(url)
    if before == after:
        emit(f"{where}: schema at revision {after} (already current)")
    else:
        emit(f"{where}: schema at revision {after} (was {before or 'unmigrated'})")
    return 0
