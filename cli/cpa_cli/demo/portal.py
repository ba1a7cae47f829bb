"""The demo supplier portal: a login form, an invoice list and invoice PDFs, on 127.0.0.1.

It behaves the way the portals the forward_invoice intent is written for behave, so the browser
agent meets the real thing: a form login that sets an HttpOnly session cookie; a wrong password
answers 200 with an error on the page (not an HTTP error); every other page redirects to the
login without the cookie; the invoice list is a table with one row per month whose elements carry
test ids and accessible names; the PDF comes with `Content-Disposition: attachment`, so a browser
downloads it. `DemoPortal` runs it inside the caller's event loop (`cpa demo`, tests);
`python -m cpa_cli.demo.portal` runs it alone (see docs/DEMO.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import html
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from aiohttp import web

from .invoice_pdf import CUSTOMER, SUPPLIER, Invoice, UnknownMonthError, invoice_for, money
from .invoice_pdf import render_pdf as _render_pdf
from .web import LoopbackSite

SESSION_COOKIE = "portal_session"
DEFAULT_USER = "accounts@acme.example"
# The first month the portal lists; the list runs to the current month, and at least to the end
# of FIRST_LISTED_YEAR + 1, so the documented examples (2026-11) always exist.
FIRST_LISTED_YEAR = 2025
LOGIN_ERROR = "Wrong user name or password."


def default_months(today: date | None = None) -> tuple[str, ...]:
    """Every month from January FIRST_LISTED_YEAR to the later of this month and December of the
    year after, newest first (as invoice portals list them)."""
    today = today or date.today()
    last = max((today.year, today.month), (FIRST_LISTED_YEAR + 1, 12))
    months = [
        f"{year}-{month:02d}"
        for year in range(FIRST_LISTED_YEAR, last[0] + 1)
        for month in range(1, 13)
        if (year, month) <= last
    ]
    return tuple(reversed(months))


@dataclass
class PortalLog:
    """What the portal saw, for tests and the demo's summary (never the password)."""

    logins: int = 0
    failed_logins: int = 0
    downloads: list[str] = field(default_factory=list)


class DemoPortal(LoopbackSite):
    """The portal as an object: `await start()`, `base_url`, the expected credentials,
    `pdf_bytes(month)` to compare what arrived with what was served, `await stop()`."""

    def __init__(
        self,
        *,
        user: str = DEFAULT_USER,
        password: str | None = None,
        months: Sequence[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """`password` defaults to a fresh random one (the demo hands it to the agent only)."""
        self.user = user
        self.password = password if password is not None else secrets.token_urlsafe(12)
        self.months = tuple(months) if months is not None else default_months()
        for month in self.months:
            invoice_for(month)  # UnknownMonthError now, not on the first page view
        self.log = PortalLog()
        super().__init__(host=host, port=port)
        self._sessions: dict[str, str] = {}
        # None: PDFs are served at once; an Event: held until it is set (hold_pdfs()).
        self._pdf_release: asyncio.Event | None = None
        self.pdf_requested = asyncio.Event()
        """Set when a logged-in browser asked for a PDF (held or not)."""

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> str:
        """Serves on host:port (0: a free port); returns the base URL (`http://127.0.0.1:N`)."""
        app = web.Application()
        app.add_routes(
            [
                web.get("/", self._home),
                web.get("/login", self._login_form),
                web.post("/login", self._login),
                web.post("/logout", self._logout),
                web.get("/invoices", self._invoices),
                web.get("/invoices/{month}/pdf", self._pdf),
            ]
        )
        return await self._serve(app)

    # --- control for tests: a download in flight, as long as the test wants -----------------

    def hold_pdfs(self) -> None:
        """From now on, a PDF request waits (headers unsent) until release_pdfs(): a test can
        act (kill the agent downloading it) while the download is certainly under way."""
        if self._pdf_release is None:
            self._pdf_release = asyncio.Event()

    def release_pdfs(self) -> None:
        """Held PDF requests and every later one are answered at once."""
        if self._pdf_release is not None:
            self._pdf_release.set()

    # --- what tests and the demo compare against ---------------------------------------------

    def invoice(self, month: str) -> Invoice:
        return invoice_for(month)

    def pdf_bytes(self, month: str) -> bytes:
        """The PDF the portal serves for `month` (deterministic: the same bytes every time)."""
        return _render_pdf(invoice_for(month))

    def pdf_sha256(self, month: str) -> str:
        return hashlib.sha256(self.pdf_bytes(month)).hexdigest()

    # --- pages ------------------------------------------------------------------------------

    def _user_of(self, request: web.Request) -> str | None:
        token = request.cookies.get(SESSION_COOKIE)
        return None if token is None else self._sessions.get(token)

    def _require_login(self, request: web.Request) -> str:
        user = self._user_of(request)
        if user is None:
            raise web.HTTPSeeOther("/login")
        return user

    async def _home(self, request: web.Request) -> web.Response:
        user = self._require_login(request)
        body = (
            f"<h1>Welcome, {_e(user)}</h1>"
            f"<p>Your supplier: {_e(SUPPLIER[0])}. Your account: {_e(CUSTOMER[0])}.</p>"
            "<p>Your invoices are under Invoices, one per month.</p>"
        )
        return _page("Supplier portal", body, user=user)

    async def _login_form(self, request: web.Request) -> web.Response:
        if self._user_of(request) is not None:
            raise web.HTTPSeeOther("/")
        return _login_page(error=None)

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        user, password = form.get("user"), form.get("password")
        ok = (
            isinstance(user, str)
            and isinstance(password, str)
            and secrets.compare_digest(user.encode(), self.user.encode())
            and secrets.compare_digest(password.encode(), self.password.encode())
        )
        if not ok:
            self.log.failed_logins += 1
            # Like real portals: the form again, status 200, an error the page shows.
            return _login_page(error=LOGIN_ERROR, user=user if isinstance(user, str) else "")
        self.log.logins += 1
        token = secrets.token_urlsafe(24)
        self._sessions[token] = self.user
        response = _see_other("/")
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Lax", path="/")
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        token = request.cookies.get(SESSION_COOKIE)
        if token is not None:
            self._sessions.pop(token, None)
        response = _see_other("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def _invoices(self, request: web.Request) -> web.Response:
        user = self._require_login(request)
        rows = []
        for month in self.months:
            invoice = invoice_for(month)
            rows.append(
                f'<tr data-testid="invoice-{month}">'
                f'<td data-testid="month-{month}">{month}</td>'
                f"<td>{_e(invoice.number)}</td>"
                f"<td>{invoice.issued.isoformat()}</td>"
                f'<td class="amount">{_e(money(invoice.total))}</td>'
                f'<td><a href="/invoices/{month}/pdf" download '
                f'data-testid="download-{month}" aria-label="Download invoice {month}">'
                "Download</a></td></tr>"
            )
        body = (
            "<h1>Invoices</h1>"
            '<table data-testid="invoice-table" aria-label="Invoices">'
            "<thead><tr><th>Month</th><th>Invoice</th><th>Date</th><th>Total</th><th>PDF</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
        return _page("Invoices", body, user=user)

    async def _pdf(self, request: web.Request) -> web.Response:
        self._require_login(request)
        month = request.match_info["month"]
        if month not in self.months:
            raise web.HTTPNotFound(text=f"no invoice for {month}")
        try:
            invoice = invoice_for(month)
        except UnknownMonthError:
            raise web.HTTPNotFound(text=f"no invoice for {month}") from None
        self.pdf_requested.set()
        if self._pdf_release is not None:
            await self._pdf_release.wait()
        self.log.downloads.append(month)
        return web.Response(
            body=_render_pdf(invoice),
            content_type="application/pdf",
            headers={"Content-Disposition": f"attachment; filename={invoice.filename}"},
        )


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _page(title: str, body: str, *, user: str | None) -> web.Response:
    nav = ""
    if user is not None:
        nav = (
            '<nav><a href="/">Home</a> | '
            '<a href="/invoices" data-testid="nav-invoices">Invoices</a> | '
            f'signed in as <span data-testid="signed-in-user">{_e(user)}</span> '
            '<form method="post" action="/logout" style="display:inline">'
            '<button type="submit">Sign out</button></form></nav>'
        )
    text = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)} - {_e(SUPPLIER[0])}</title></head>"
        f"<body>{nav}<main>{body}</main></body></html>"
    )
    return web.Response(text=text, content_type="text/html")


def _login_page(*, error: str | None, user: str = "") -> web.Response:
    alert = "" if error is None else f'<p role="alert" data-testid="login-error">{_e(error)}</p>'
    body = (
        "<h1>Sign in</h1>"
        f"{alert}"
        '<form method="post" action="/login" data-testid="login-form">'
        '<label for="user">User</label> '
        f'<input id="user" name="user" type="text" autocomplete="username" '
        f'data-testid="login-user" value="{_e(user)}"><br>'
        '<label for="password">Password</label> '
        '<input id="password" name="password" type="password" autocomplete="current-password" '
        'data-testid="login-password"><br>'
        '<button type="submit" data-testid="login-submit">Sign in</button>'
        "</form>"
    )
    return _page("Sign in", body, user=None)


async def _serve_forever(portal: DemoPortal) -> None:
    await portal.start()
    print(f"demo portal on {portal.base_url}/login", flush=True)
    print(f"user {portal.user}  password {portal.password}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await portal.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m cpa_cli.demo.portal [--port N] [--password P]`: the portal alone, until ^C."""
    parser = argparse.ArgumentParser(description="Run the demo supplier portal on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--user", default=DEFAULT_USER)
    parser.add_argument("--password", help="the portal password (default: a random one)")
    arguments = parser.parse_args(argv)
    portal = DemoPortal(user=arguments.user, password=arguments.password, port=arguments.port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(portal))


if __name__ == "__main__":
    main()
