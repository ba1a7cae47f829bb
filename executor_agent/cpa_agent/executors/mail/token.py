"""Access tokens for Microsoft Graph through MSAL (OAuth 2.0 client credentials).

MSAL is synchronous (requests): every call runs on a worker thread, never on the event loop.
It gets its own requests.Session: `verify` is the configured CA bundle and `trust_env` is off,
because REQUESTS_CA_BUNDLE (set on many machines) would otherwise override `verify`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import msal
import msal.exceptions
import requests

from cpa_agent.executors.base import ExecutorError
from cpa_agent.executors.mail.settings import MailSettings

logger = logging.getLogger(__name__)

TOKEN_UNAVAILABLE = "MAIL_TOKEN_UNAVAILABLE"
"""The token endpoint could not be reached or answered a server error: retryable."""
AUTHORITY_INVALID = "MAIL_AUTHORITY_INVALID"
"""The authority's discovery document is refused (unknown tenant, wrong URL): not retryable."""
SECRET_UNAVAILABLE = "MAIL_SECRET_UNAVAILABLE"
"""The agent cannot read its client secret: not retryable."""

# AAD errors a later attempt may get past (RFC 6749 5.2 plus AAD's own).
_RETRYABLE_AAD_ERRORS = frozenset({"temporarily_unavailable", "server_error"})


class Redactor:
    """Removes the client secret from any text before it leaves this module."""

    def __init__(self) -> None:
        self._secret = ""

    def set(self, secret: str) -> None:
        self._secret = secret

    def __call__(self, text: str) -> str:
        return text.replace(self._secret, "[redacted]") if self._secret else text


class TokenProvider:
    """Gets and caches Graph access tokens; `invalidate` drops one Graph refused."""

    def __init__(self, settings: MailSettings) -> None:
        self._settings = settings
        self._app: msal.ConfidentialClientApplication | None = None
        self._http: requests.Session | None = None
        # MSAL builds its authority (one HTTP call) in the constructor: build it once.
        self._lock = threading.Lock()
        self.redact = Redactor()

    async def token(self) -> str:
        """A valid access token: MSAL's cached one, or a new one from the token endpoint."""
        return await asyncio.to_thread(self._acquire)

    async def invalidate(self, token: str) -> None:
        """Removes `token` from MSAL's cache, so that the next `token()` asks for a new one
        (MSAL refuses force_refresh for client credentials)."""
        await asyncio.to_thread(self._remove, token)

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
            self._http = None
            self._app = None

    def _application(self) -> msal.ConfidentialClientApplication:
        with self._lock:
            if self._app is not None:
                return self._app
            try:
                secret = self._settings.read_client_secret()
            except ValueError as error:
                raise ExecutorError(SECRET_UNAVAILABLE, str(error), retryable=False) from None
            self.redact.set(secret)
            http = requests.Session()
            http.trust_env = False
            ca = self._settings.ca_bundle
            http.verify = str(ca) if ca is not None else True
            try:
                app = msal.ConfidentialClientApplication(
                    self._settings.client_id,
                    client_credential=secret,
                    authority=self._settings.authority,
                    http_client=http,
                    timeout=self._settings.request_timeout_s,
                    # Otherwise MSAL asks login.microsoftonline.com about unknown hosts.
                    instance_discovery=False,
                )
            except ValueError as error:
                http.close()
                # Discovery answered 4xx (a wrong tenant or authority). MSAL's message is
                # generic advice; the server's answer (AADSTS90002...) is in the one it replaced.
                cause = error.__context__ if isinstance(error.__context__, ValueError) else error
                raise ExecutorError(
                    AUTHORITY_INVALID,
                    f"the authority {self._settings.authority} refused the tenant discovery: "
                    f"{self.redact(_clip(str(cause)))}",
                    retryable=False,
                ) from None
            except requests.RequestException as error:
                http.close()
                raise ExecutorError(
                    TOKEN_UNAVAILABLE,
                    f"cannot reach the authority {self._settings.authority}: "
                    f"{self.redact(_clip(str(error)))}",
                    retryable=True,
                ) from None
            self._app, self._http = app, http
            return app

    def _acquire(self) -> str:
        app = self._application()
        try:
            result: dict[str, Any] = app.acquire_token_for_client(scopes=[self._settings.scope])
        except requests.RequestException as error:
            raise ExecutorError(
                TOKEN_UNAVAILABLE,
                f"cannot reach the token endpoint: {self.redact(_clip(str(error)))}",
                retryable=True,
            ) from None
        except (ValueError, msal.exceptions.MsalServiceError) as error:
            # A 5xx (MsalServiceError "HTTP Error: 503"), or an answer that is not JSON (a
            # proxy's page: ValueError).
            raise ExecutorError(
                TOKEN_UNAVAILABLE,
                f"the token endpoint gave no usable answer: {self.redact(_clip(str(error)))}",
                retryable=True,
            ) from None
        except Exception as error:
            # Whatever else MSAL raises: its text, without the secret, and no traceback on the
            # wire (the runner would send str(error) unredacted).
            logger.warning("mail: MSAL failed: %s", type(error).__name__)
            raise ExecutorError(
                TOKEN_UNAVAILABLE,
                f"MSAL failed: {type(error).__name__}: {self.redact(_clip(str(error)))}",
                retryable=True,
            ) from None
        token = result.get("access_token")
        if isinstance(token, str) and token:
            if result.get("token_source") != "cache":
                logger.info("mail: got a new Graph access token")
            return token
        error_code = str(result.get("error") or "token_error")
        description = str(result.get("error_description") or "no description")
        # The AAD code ("invalid_client") is the task's error code; the description names the
        # problem (AADSTS7000215: Invalid client secret provided...) and never holds the secret.
        raise ExecutorError(
            error_code[:64],
            f"the token endpoint refused the client credentials of {self._settings.client_id}: "
            f"{self.redact(_clip(description))}",
            retryable=error_code in _RETRYABLE_AAD_ERRORS,
            details={"aad_error": error_code[:64], "error_codes": _codes(result)},
        )

    def _remove(self, token: str) -> None:
        app = self._app
        if app is None:
            return
        cache = app.token_cache
        for item in list(cache.search(cache.CredentialType.ACCESS_TOKEN)):
            if item.get("secret") == token:
                cache.remove_at(item)
                logger.info("mail: Graph refused the cached access token; dropped it")


def _codes(result: dict[str, Any]) -> list[int]:
    codes = result.get("error_codes")
    if not isinstance(codes, list):
        return []
    return [code for code in codes[:8] if isinstance(code, int) and not isinstance(code, bool)]


def _clip(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."
