"""A small async client of Microsoft Graph: bearer tokens from MSAL, one refresh on a 401,
Retry-After honoured on a 429, and Graph's errors turned into ExecutorErrors.

Why here and not in the executors: every action needs the same retry and error rules, and the
rules are what the tests pin (a 429 waits and retries; a 401 refreshes once; 5xx is retryable).
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import logging
import math
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import yarl

from cpa_agent.executors.base import ExecutionContext, ExecutorError
from cpa_agent.executors.mail.settings import MailSettings
from cpa_agent.executors.mail.token import TokenProvider

logger = logging.getLogger(__name__)

GRAPH_UNREACHABLE = "GRAPH_UNREACHABLE"
"""Graph could not be reached, or did not answer in time: retryable."""
GRAPH_THROTTLED = "GRAPH_THROTTLED"
"""Graph kept answering 429 (the code used when its body names none): retryable."""
GRAPH_DEADLINE = "GRAPH_DEADLINE"
"""A Retry-After would end after the attempt's deadline: retryable (a later attempt may)."""

# Time kept free before the attempt's deadline, so that the action reports before the runner
# has to stop it.
_DEADLINE_MARGIN_S = 0.5
# A 429 without Retry-After: wait 1, 2, 4... seconds.
_DEFAULT_THROTTLE_WAIT_S = 1.0


@dataclass(frozen=True)
class GraphResponse:
    status: int
    body: Any
    """Decoded JSON, or None for an empty body (sendMail's 202)."""


class GraphClient:
    """Calls Graph with the provider's tokens; one aiohttp session per client, made on first
    use (it belongs to the running event loop)."""

    def __init__(self, settings: MailSettings, tokens: TokenProvider) -> None:
        self._settings = settings
        self._tokens = tokens
        self._base = yarl.URL(settings.graph_url)
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> yarl.URL:
        return self._base

    def url(self, path: str) -> yarl.URL:
        """`path` ("users/{id}/sendMail", already quoted) under the Graph base URL."""
        return yarl.URL(f"{self._settings.graph_url}/{path.lstrip('/')}", encoded=True)

    def same_origin(self, url: yarl.URL) -> bool:
        """Whether `url` (an @odata.nextLink) is on Graph itself: the bearer token goes nowhere
        else."""
        base = self._base.path.rstrip("/")
        return url.origin() == self._base.origin() and url.path.startswith(f"{base}/")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ca = self._settings.ca_bundle
            context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context),
                trust_env=False,
            )
        return self._session

    async def call(
        self,
        method: str,
        url: yarl.URL,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        ctx: ExecutionContext,
        what: str,
    ) -> GraphResponse:
        """One Graph call of attempt `ctx` (its deadline bounds every wait; a throttling wait is
        reported as progress) with the retry rules above; `what` names it in errors."""
        deadline = ctx.deadline
        refreshed = False
        throttled = 0
        while True:
            token = await self._tokens.token()
            status, headers, raw = await self._send(method, url, params, body, token, deadline)
            if status == 401 and not refreshed:
                # An expired or revoked token MSAL still holds: drop it, get a new one, once.
                logger.info("mail: Graph answered 401 to %s; refreshing the token once", what)
                await self._tokens.invalidate(token)
                refreshed = True
                continue
            if status == 429:
                wait_s = _retry_after(headers.get("Retry-After"), throttled)
                self._check_throttle_wait(wait_s, throttled, deadline, what, raw)
                throttled += 1
                logger.info("mail: Graph throttled %s; waiting %.1fs (Retry-After)", what, wait_s)
                await ctx.progress(None, f"Microsoft Graph throttles {what}: waiting {wait_s:g}s")
                await asyncio.sleep(wait_s)
                continue
            if status >= 400:
                raise graph_error(status, raw, what=what)
            return GraphResponse(status=status, body=_decode(raw))

    def _check_throttle_wait(
        self, wait_s: float, throttled: int, deadline: datetime | None, what: str, raw: bytes
    ) -> None:
        code, message = _graph_code_message(raw, default_code=GRAPH_THROTTLED)
        details = {"http_status": 429, "retry_after_s": wait_s, "graph_code": code}
        if throttled >= self._settings.max_throttle_retries:
            raise ExecutorError(
                code,
                f"Microsoft Graph still throttles {what} after {throttled} waits: {message}",
                retryable=True,
                details=details,
            )
        if wait_s > self._settings.max_retry_after_s:
            raise ExecutorError(
                code,
                f"Microsoft Graph throttles {what} for {wait_s:g}s, longer than "
                f"CPA_MAIL_MAX_RETRY_AFTER_S ({self._settings.max_retry_after_s:g}s): {message}",
                retryable=True,
                details=details,
            )
        left_s = _seconds_left(deadline)
        if left_s is not None and wait_s > left_s - _DEADLINE_MARGIN_S:
            raise ExecutorError(
                GRAPH_DEADLINE,
                f"Microsoft Graph throttles {what} for {wait_s:g}s, past the attempt's deadline "
                f"({max(0.0, left_s):.1f}s left)",
                retryable=True,
                details=details,
            )

    async def _send(
        self,
        method: str,
        url: yarl.URL,
        params: dict[str, str] | None,
        body: dict[str, Any] | None,
        token: str,
        deadline: datetime | None,
    ) -> tuple[int, Any, bytes]:
        timeout_s = self._settings.request_timeout_s
        left_s = _seconds_left(deadline)
        if left_s is not None:
            timeout_s = max(0.1, min(timeout_s, left_s))
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            # A stream, not bytes: aiohttp warns about (and would copy) large byte bodies.
            data = io.BytesIO(json.dumps(body).encode())
            headers["Content-Type"] = "application/json"
        try:
            async with self._http().request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                return response.status, response.headers, await response.read()
        except TimeoutError:
            raise ExecutorError(
                GRAPH_UNREACHABLE,
                f"Microsoft Graph did not answer {method} {url.path} within {timeout_s:g}s",
                retryable=True,
            ) from None
        except aiohttp.ClientError as error:
            # The text of a client error names host and cause, never headers (no token).
            raise ExecutorError(
                GRAPH_UNREACHABLE,
                f"cannot reach Microsoft Graph at {url.origin()}: {type(error).__name__}: {error}",
                retryable=True,
            ) from None


def graph_error(status: int, raw: bytes, *, what: str) -> ExecutorError:
    """Graph's `{"error": {"code", "message"}}` as an ExecutorError: its code, its message;
    retryable for 5xx and 408 (the server's trouble), not for other 4xx (the request's)."""
    code, message = _graph_code_message(raw, default_code=f"GRAPH_HTTP_{status}")
    return ExecutorError(
        code,
        f"Microsoft Graph refused {what} ({status} {code}): {message}",
        retryable=status >= 500 or status == 408,
        details={"http_status": status, "graph_code": code},
    )


def _graph_code_message(raw: bytes, *, default_code: str) -> tuple[str, str]:
    try:
        error = json.loads(raw)["error"]
        code = str(error.get("code") or default_code)[:128]
        message = str(error.get("message") or "no message")[:1000]
    except (ValueError, KeyError, TypeError, AttributeError):
        text = raw[:200].decode("utf-8", "replace").strip()
        return default_code, text or "no message"
    return code, message


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ExecutorError(
            "GRAPH_BAD_RESPONSE",
            "Microsoft Graph answered with a body that is not JSON",
            retryable=True,
        ) from None


def _retry_after(value: str | None, throttled: int) -> float:
    """Retry-After in seconds (delta-seconds or an HTTP date); without one, 1, 2, 4... s."""
    fallback: float = _DEFAULT_THROTTLE_WAIT_S * 2.0**throttled
    if not value:
        return fallback
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else fallback
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return fallback
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _seconds_left(deadline: datetime | None) -> float | None:
    if deadline is None:
        return None
    return (deadline - datetime.now(UTC)).total_seconds()
