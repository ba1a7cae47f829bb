"""The demo supplier portal over real HTTP: login, cookie, redirects, the invoice table, the PDF.

An aiohttp client checks the wire behaviour (statuses, headers, cookie flags); real Chromium
(Playwright, Debian's /usr/bin/chromium) walks the same path the forward_invoice intent plans,
with the intent's own selectors, and downloads the PDF by clicking the row's link.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import async_playwright

from cpa_cli.demo.invoice_pdf import invoice_for, money, render_pdf
from cpa_cli.demo.portal import LOGIN_ERROR, SESSION_COOKIE, DemoPortal, default_months

PASSWORD = "correct horse battery staple"
CHROMIUM = os.environ.get("CPA_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
async def portal() -> AsyncIterator[DemoPortal]:
    async with DemoPortal(password=PASSWORD, months=("2026-10", "2026-11", "2026-12")) as running:
        yield running


def _client() -> aiohttp.ClientSession:
    # aiohttp's default jar ignores cookies of IP hosts; browsers keep them.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _login(session: aiohttp.ClientSession, portal: DemoPortal, password: str) -> str:
    async with session.post(
        f"{portal.base_url}/login", data={"user": portal.user, "password": password}
    ) as response:
        assert response.status == 200
        return await response.text()


@pytest.mark.parametrize("path", ["/", "/invoices", "/invoices/2026-11/pdf"])
async def test_every_page_redirects_to_the_login_without_the_cookie(
    portal: DemoPortal, path: str
) -> None:
    async with (
        _client() as session,
        session.get(f"{portal.base_url}{path}", allow_redirects=False) as response,
    ):
        assert response.status == 303
        assert response.headers["Location"] == "/login"
    assert portal.log.downloads == []


async def test_a_wrong_password_shows_an_error_on_the_page_with_status_200(
    portal: DemoPortal,
) -> None:
    async with _client() as session:
        page = await _login(session, portal, "wrong")
        assert LOGIN_ERROR in page
        assert 'role="alert"' in page
        assert not [c for c in session.cookie_jar if c.key == SESSION_COOKIE]
        async with session.get(f"{portal.base_url}/invoices", allow_redirects=False) as response:
            assert response.status == 303
    assert (portal.log.logins, portal.log.failed_logins) == (0, 1)


async def test_login_sets_an_http_only_cookie_and_the_list_has_a_row_per_month(
    portal: DemoPortal,
) -> None:
    async with _client() as session:
        async with session.post(
            f"{portal.base_url}/login",
            data={"user": portal.user, "password": PASSWORD},
            allow_redirects=False,
        ) as response:
            assert response.status == 303
            cookie = response.cookies[SESSION_COOKIE]
            assert cookie["httponly"] is True
            assert cookie["samesite"] == "Lax"
        async with session.get(f"{portal.base_url}/invoices") as response:
            page = await response.text()
    for month in portal.months:
        assert f'data-testid="invoice-{month}"' in page
        assert f'data-testid="download-{month}"' in page
        assert f'aria-label="Download invoice {month}"' in page
        assert money(invoice_for(month).total) in page
    assert portal.user in page


async def test_the_pdf_is_an_attachment_with_the_same_bytes_every_time(portal: DemoPortal) -> None:
    async with _client() as session:
        await _login(session, portal, PASSWORD)
        url = f"{portal.base_url}/invoices/2026-11/pdf"
        async with session.get(url) as first, session.get(url) as second:
            assert first.headers["Content-Type"] == "application/pdf"
            assert (
                first.headers["Content-Disposition"] == "attachment; filename=invoice-2026-11.pdf"
            )
            body = await first.read()
            assert await second.read() == body
        async with session.get(f"{portal.base_url}/invoices/2027-05/pdf") as missing:
            assert missing.status == 404
    assert body.startswith(b"%PDF-")
    assert body == portal.pdf_bytes("2026-11")
    assert portal.pdf_bytes("2026-10") != body
    assert portal.log.downloads == ["2026-11", "2026-11"]


def test_the_pdf_names_supplier_customer_lines_totals_number_and_month() -> None:
    invoice = invoice_for("2026-11")
    text = _pdf_text(render_pdf(invoice))
    for expected in (
        "Northwind Office Supplies GmbH",
        "ACME Accounting Ltd",
        f"Invoice {invoice.number}",
        "Billing period",
        "2026-11",
        "Toner cartridge, black, TN-2420",
        "Total due",
        money(invoice.total),
    ):
        assert expected in text, expected
    assert invoice.total == invoice.net + invoice.vat
    assert invoice.net == sum(line.amount for line in invoice.lines)


def test_the_pdf_bytes_do_not_depend_on_the_process() -> None:
    """Another interpreter (other hash seed, other clock) renders the same bytes."""
    code = (
        "import hashlib, sys; from cpa_cli.demo.invoice_pdf import invoice_for, render_pdf; "
        "sys.stdout.write(hashlib.sha256(render_pdf(invoice_for('2026-11'))).hexdigest())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "1234", "TZ": "Pacific/Kiritimati"},
        timeout=30,
    )
    assert other.stdout == hashlib.sha256(render_pdf(invoice_for("2026-11"))).hexdigest()


def test_the_default_list_covers_the_documented_month_and_runs_to_today() -> None:
    from datetime import date

    months = default_months(date(2031, 3, 15))
    assert months[0] == "2031-03"
    assert months[-1] == "2025-01"
    assert "2026-11" in default_months(date(2025, 6, 1))


async def test_chromium_logs_in_and_downloads_with_the_intent_selectors(
    portal: DemoPortal, tmp_path: Path
) -> None:
    """The path forward_invoice plans, driven by Playwright directly: cookies kept from the
    login to the download, the file named by the portal, the bytes the portal rendered."""
    _require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            context = await browser.new_context(accept_downloads=True)
            page = await context.new_page()
            await page.goto(f"{portal.base_url}/login")
            await page.get_by_test_id("login-user").fill(portal.user)
            await page.get_by_test_id("login-password").fill("wrong")
            await page.get_by_test_id("login-submit").click()
            assert await page.get_by_role("alert").inner_text() == LOGIN_ERROR
            await page.get_by_test_id("login-password").fill(PASSWORD)
            await page.get_by_test_id("login-submit").click()
            assert await page.get_by_test_id("signed-in-user").inner_text() == portal.user
            await page.get_by_role("link", name="Invoices").click()
            await page.get_by_test_id("invoice-table").wait_for()
            async with page.expect_download() as download_info:
                await page.get_by_test_id("download-2026-11").click()
            download = await download_info.value
            assert download.suggested_filename == "invoice-2026-11.pdf"
            saved = tmp_path / download.suggested_filename
            await download.save_as(saved)
        finally:
            await browser.close()
    assert saved.read_bytes() == portal.pdf_bytes("2026-11")
    assert portal.log.downloads == ["2026-11"]
    assert (portal.log.logins, portal.log.failed_logins) == (1, 1)


def _require_chromium() -> None:
    if shutil.which(CHROMIUM) is None:
        message = f"Chromium is not installed at {CHROMIUM} (run `make chromium`)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _pdf_text(pdf: bytes) -> str:
    """The text drawn in a PDF made of Flate streams of simple `(text) Tj` operators."""
    text = []
    start = 0
    while (begin := pdf.find(b"stream\n", start)) != -1:
        end = pdf.index(b"endstream", begin)
        data = pdf[begin + len(b"stream\n") : end]
        with contextlib.suppress(zlib.error):
            text.append(zlib.decompress(data).decode("latin-1"))
        start = end + len(b"endstream")
    content = "\n".join(text)
    return content.replace("\\(", "(").replace("\\)", ")")
