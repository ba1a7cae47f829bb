"""`cpa migrate`: upgrades and prints the revision (exit 0), or says what is wrong (exit 2)."""

from __future__ import annotations

import psycopg
import pytest

from cpa_cli.main import main
from cpa_scheduler.storage import head_revision, schema_revision


@pytest.mark.parametrize("database", ["postgres_database", "pgvector_database"])
def test_migrate_upgrades_then_reports_the_schema_current(
    database: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    # On the machine's PostgreSQL and on the one with pgvector (migration 0012 differs there).
    postgres_database = request.getfixturevalue(database)
    assert main(["migrate", "--database-url", postgres_database]) == 0
    first = capsys.readouterr()
    assert main(["migrate", "--database-url", postgres_database]) == 0
    second = capsys.readouterr()

    head = head_revision()
    assert first.out == f"{postgres_database}: schema at revision {head} (was unmigrated)\n"
    assert second.out == f"{postgres_database}: schema at revision {head} (already current)\n"
    assert first.err == second.err == ""
    assert schema_revision(postgres_database) == head


def test_the_url_comes_from_the_environment_by_default(
    postgres_database: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CPA_DATABASE_URL", postgres_database)

    assert main(["migrate"]) == 0

    assert f"schema at revision {head_revision()}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@127.0.0.1/cpa", "cpa: migrate: mysql:// is not a PostgreSQL URL"),
        ("no such thing", 'cpa: migrate: invalid database URL: missing "="'),
        (
            "postgresql://postgres:secret@127.0.0.1:1/cpa",
            "cpa: migrate: cannot reach PostgreSQL at postgresql://postgres:***@127.0.0.1:1/cpa",
        ),
    ],
    ids=["not-postgres", "unparsable", "unreachable"],
)
def test_a_bad_or_unreachable_database_is_a_clear_error(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--database-url", url]) == 2

    output = capsys.readouterr()
    assert output.out == ""
    assert output.err.startswith(message), output.err
    assert "secret" not in output.err
    assert output.err.count("\n") == 1


def test_without_a_url_it_says_where_to_give_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CPA_DATABASE_URL", raising=False)

    assert main(["migrate"]) == 2

    assert "--database-url or $CPA_DATABASE_URL" in capsys.readouterr().err


def test_a_schema_newer_than_this_cpa_is_refused(
    postgres_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--database-url", postgres_database]) == 0
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999_future'")
    capsys.readouterr()

    assert main(["migrate", "--database-url", postgres_database]) == 2

    assert "newer than this cpa knows" in capsys.readouterr().err
