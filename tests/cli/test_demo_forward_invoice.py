"""`cpa demo` end to end: the forward_invoice job from the portal's PDF to the delivered mail.

Everything is real: the scheduler, two `cpa agent` processes (browser with Chromium, mail with
MSAL), the demo portal over HTTP and the loopback Graph over HTTPS. The test reads only what the
demo prints and the files it leaves, and checks them against the portal's own PDF.

It needs the browser and mail executors, the loopback Graph, artifacts and the forward_invoice
intent; while one of them is not installed it is skipped, naming what is missing (Chromium
missing under CI=true is a failure: CI installs it).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path

import pytest

from cpa_cli.demo.invoice_pdf import invoice_for, render_pdf
from cpa_cli.demo.parts import missing_parts

from .conftest import StartCli

MONTH = "2026-11"
RECIPIENT = "accounting@example.com"
# Chromium's start, a login, a download and a mail through MSAL: seconds, bounded generously.
DEMO_TIMEOUT_S = 150.0
TASK_ROW = re.compile(
    r"^\s+(?P<task>\S+)\s+(?P<action>\S+)\s+(?P<state>[A-Z]+)\s+\d+\s+(?P<agent>\S+)"
)


@pytest.fixture
def demo_parts() -> None:
    missing = missing_parts()
    chromium_only = all("chromium" in part.lower() for part in missing)
    if missing and chromium_only and os.environ.get("CI") == "true":
        pytest.fail("; ".join(missing))
    if missing:
        pytest.skip("the full demo's parts are not all here: " + "; ".join(missing))


@pytest.mark.timeout(DEMO_TIMEOUT_S + 30)
@pytest.mark.usefixtures("demo_parts")
def test_cpa_demo_forwards_the_portal_pdf_by_mail(start_cli: StartCli, tmp_path: Path) -> None:
    screenshots = tmp_path / "screenshots"
    password = f"pw-{secrets.token_hex(8)}"
    demo = start_cli(
        "demo",
        *("--month", MONTH, "--recipient", RECIPIENT, "--screenshots-dir", str(screenshots)),
        *("--timeout", str(DEMO_TIMEOUT_S), "--keep-data"),
        env={"CPA_DEMO_PORTAL_PASSWORD": password},
    )

    lines = demo.rest_of_output(DEMO_TIMEOUT_S + 20)
    assert demo.exit_code(timeout_s=30) == 0, demo.report()
    text = "\n".join(lines)

    assert re.search(r"^job [0-9a-f]{32} SUCCEEDED in ", text, re.MULTILINE), text
    rows = {m["task"]: m for line in lines if (m := TASK_ROW.match(line))}
    for task in ("login", "open_invoices", "download"):
        assert (rows[task]["action"], rows[task]["state"]) == ("playwright", "SUCCEEDED")
        assert rows[task]["agent"] == "demo-browser"
    assert (rows["send"]["action"], rows["send"]["agent"]) == ("send_mail", "demo-mail")

    pdf = render_pdf(invoice_for(MONTH))
    assert f"  to         {RECIPIENT}" in lines
    assert any(line.startswith("  subject    ") and MONTH in line for line in lines)
    assert f"  attachment invoice.pdf (application/pdf, {len(pdf)} bytes)" in lines
    assert f"  sha256     {hashlib.sha256(pdf).hexdigest()} = the portal's PDF" in lines

    saved = sorted(screenshots.glob("*.png"))
    assert {path.name.split("-")[0] for path in saved} >= {"login", "download"}, saved
    assert all(path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for path in saved)
    assert re.search(
        rf"screenshots of the browser steps in {re.escape(str(screenshots))}$", text, re.MULTILINE
    )

    # The portal password went to the browser agent's environment only: it is in no line the
    # demo printed, no file of the run (the store and its WAL, the artifacts, the agents' logs,
    # the screenshots) and no screenshot's name.
    kept = re.search(r"^data kept in (\S+)$", text, re.MULTILINE)
    assert kept, text
    data_dir = Path(kept[1])
    assert (data_dir / "cpa.sqlite3").exists()
    assert password not in text + demo.report()
    files = [path for path in [*data_dir.rglob("*"), *saved] if path.is_file()]
    assert any(path.parent.name == "logs" for path in files), files
    leaks = [path for path in files if password.encode() in path.read_bytes()]
    assert leaks == []
    assert not any(password in path.name for path in files)
    shutil.rmtree(data_dir)
