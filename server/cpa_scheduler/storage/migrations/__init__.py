"""Schema migrations of the PostgreSQL store (Alembic), and the functions that run and check them.

The store refuses to start unless the database is at the head revision this code knows, so a
schema change is always an explicit step: `cpa migrate --database-url URL`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import conninfo

from cpa_scheduler.storage.interface import StoreUnavailableError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = [
    "ADVISORY_LOCK_KEY",
    "CONNECT_TIMEOUT_S",
    "MIGRATIONS_DIR",
    "REVISION_QUERY",
    "DatabaseUnavailableError",
    "InvalidDatabaseUrlError",
    "SchemaMismatchError",
    "check_revision",
    "connect_kwargs",
    "head_revision",
    "libpq_url",
    "migrate",
    "redact_url",
    "revision_of",
    "schema_revision",
    "unreachable",
]

MIGRATIONS_DIR: Final = Path(__file__).parent
# One key for every migrator: two replicas (or an operator and a deploy job) migrating at once
# take turns instead of both creating the same tables.
ADVISORY_LOCK_KEY: Final = 0x43504153_43484544  # "CPASCHED"
REVISION_QUERY: Final = "SELECT version_num FROM alembic_version"
# libpq waits for ever on a host that drops packets; a command and a starting server should not.
CONNECT_TIMEOUT_S: Final = 10
# Alembic's `context` is one module-level proxy: two migrations in one process must take turns.
_IN_PROCESS = threading.Lock()

# SQLAlchemy spells the driver into the scheme; libpq knows only postgresql:// and postgres://.
_DRIVER_SCHEME = re.compile(r"^postgres(?:ql)?\+psycopg(?:2)?://", re.IGNORECASE)


class InvalidDatabaseUrlError(ValueError):
    """The database URL is not a PostgreSQL connection string libpq understands."""


class DatabaseUnavailableError(StoreUnavailableError):
    """PostgreSQL could not be reached, or the connection broke during a call."""


class SchemaMismatchError(RuntimeError):
    """The database's schema is not the revision this code was written for."""


def libpq_url(url: str) -> str:
    """`url` as libpq takes it (`postgresql+psycopg://` becomes `postgresql://`), validated."""
    text = url.strip()
    if not text:
        raise InvalidDatabaseUrlError("the database URL is empty")
    text = _DRIVER_SCHEME.sub("postgresql://", text)
    if "://" in text and not text.lower().startswith(("postgresql://", "postgres://")):
        scheme = text.split("://", 1)[0]
        raise InvalidDatabaseUrlError(
            f"{scheme}:// is not a PostgreSQL URL: use postgresql://USER@HOST:PORT/DATABASE"
        )
    try:
        conninfo.conninfo_to_dict(text)
    except psycopg.ProgrammingError as error:
        reason = str(error).strip().splitlines()[0]
        raise InvalidDatabaseUrlError(f"invalid database URL: {reason}") from None
    return text


def redact_url(url: str) -> str:
    """`url` without its password, for messages and logs."""
    if "://" not in url:
        try:
            params = conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            return "<unparsable connection string>"
        if "password" in params:
            params["password"] = "***"
        return conninfo.make_conninfo("", **params)
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, separator, _password = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if separator else netloc
    query = urlencode(
        [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, True)],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def connect_kwargs(url: str, **defaults: Any) -> dict[str, Any]:
    """Options for psycopg.connect that the URL does not set itself (the URL always wins):
    a connect timeout, and `defaults`."""
    params = conninfo.conninfo_to_dict(url)
    wanted = {"connect_timeout": CONNECT_TIMEOUT_S, **defaults}
    return {key: value for key, value in wanted.items() if key not in params}


def _config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Handed over as an attribute, not as sqlalchemy.url: ConfigParser would read the '%' of a
    # percent-encoded password as interpolation.
    config.attributes["database_url"] = url
    return config


def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(""))


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _scripts().get_current_head()
    if head is None:  # pragma: no cover - the package always ships revision 0001
        raise RuntimeError(f"no migrations found under {MIGRATIONS_DIR}")
    return head


def check_revision(found: str | None, url: str) -> None:
    """Raise SchemaMismatchError, saying what to do, unless `found` is the head revision."""
    head = head_revision()
    if found == head:
        return
    shown = redact_url(url)
    if found is None:
        raise SchemaMismatchError(
            f"the database {shown} has no CPA schema (it was never migrated): run "
            f"`cpa migrate --database-url {shown}` first"
        )
    known = {script.revision for script in _scripts().walk_revisions()}
    if found in known:
        raise SchemaMismatchError(
            f"the database {shown} has schema revision {found}, older than this server's "
            f"{head}: run `cpa migrate --database-url {shown}`"
        )
    raise SchemaMismatchError(
        f"the database {shown} has schema revision {found}, which this server does not know "
        f"(its newest is {head}): the server is older than the schema; upgrade the server"
    )


def unreachable(url: str, error: BaseException) -> DatabaseUnavailableError:
    """The error for a failed connection attempt: where, and libpq's first line of why."""
    text = str(error).strip()
    reason = text.splitlines()[0] if text else type(error).__name__
    return DatabaseUnavailableError(f"cannot reach PostgreSQL at {redact_url(url)}: {reason}")


def schema_revision(url: str) -> str | None:
    """The revision the database is at; None when it was never migrated."""
    url = libpq_url(url)
    try:
        with psycopg.connect(url, autocommit=True, **connect_kwargs(url)) as connection:
            return _read_revision(connection)
    except psycopg.OperationalError as error:
        raise unreachable(url, error) from error


def _read_revision(connection: psycopg.Connection[Any]) -> str | None:
    try:
        rows = connection.execute(REVISION_QUERY).fetchall()
    except psycopg.errors.UndefinedTable:
        return None
    return revision_of(rows)


def revision_of(rows: Sequence[Sequence[Any]]) -> str | None:
    """The revision in the rows of REVISION_QUERY; None for none (an empty version table)."""
    return str(rows[0][0]) if len(rows) == 1 else None


def migrate(url: str) -> str:
    """Upgrade the database to the head revision (a no-op when it is there); returns it.

    Raises InvalidDatabaseUrlError, DatabaseUnavailableError, or SchemaMismatchError when the
    database is at a revision newer than this code.
    """
    from alembic import command

    url = libpq_url(url)
    found = schema_revision(url)
    head = head_revision()
    if found is not None and found != head:
        known = {script.revision for script in _scripts().walk_revisions()}
        if found not in known:
            raise SchemaMismatchError(
                f"the database {redact_url(url)} has schema revision {found}, newer than this "
                f"cpa knows (its newest is {head}): upgrade cpa"
            )
    try:
        with _IN_PROCESS:
            command.upgrade(_config(url), "head")
    except Exception as error:
        original = getattr(error, "orig", None)  # SQLAlchemy wraps the driver's error
        if isinstance(error, psycopg.OperationalError) or isinstance(
            original, psycopg.OperationalError
        ):
            raise unreachable(url, original or error) from error
        raise
    return schema_revision(url) or head
