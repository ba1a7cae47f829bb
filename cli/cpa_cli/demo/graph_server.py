"""A loopback Microsoft Graph and Microsoft Entra token endpoint, over HTTPS on 127.0.0.1.

It speaks the wire protocol the mail executor (MSAL + Graph) speaks to the real services:
- `GET /{tenant}/v2.0/.well-known/openid-configuration` (MSAL's tenant discovery),
- `POST /{tenant}/oauth2/v2.0/token` (client credentials; a wrong secret is a 401
  `invalid_client` with an AADSTS description, as Entra answers),
- `POST /v1.0/users/{id}/sendMail` (202; the message shape and the bearer token checked),
- `GET /v1.0/users/{id}/messages`, `.../mailFolders/{folder}/messages` (`$top`, `$skip`,
  `$select`, `$filter=isRead eq false|true`, `$search="..."`, `@odata.nextLink`),
- `GET .../messages/{id}/attachments`;
errors are Graph's `{"error": {"code", "message"}}`. Tests and `cpa demo` drive it in process:
`delivered` (what sendMail accepted, attachment bytes included), `seed_message`, and fault
injection (`fail_next`: the next N calls answer an error, with Retry-After for 429s;
`expire_tokens`: issued tokens become expired, so Graph answers 401).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from .graph_mailboxes import (
    WELL_KNOWN_FOLDERS,
    DeliveredAttachment,
    DeliveredMail,
    Mailboxes,
    StoredMessage,
    attachment_resource,
)
from .graph_wire import aad_error, graph_error, invalid_token, parse_mail, search_phrase
from .tls import TlsFiles, ensure_tls_files
from .web import LoopbackSite

DEFAULT_TENANT = "cpa-demo-tenant"
DEFAULT_CLIENT_ID = "00000000-0000-4000-8000-00000000c0de"
DEFAULT_MAILBOX = "mailer@cpa-demo.example"
# Graph refuses a sendMail request over 4 MB (attachments go through upload sessions then).
SEND_MAIL_MAX_BYTES = 4 * 1024 * 1024
_SCOPE_SUFFIX = "/.default"
_MAX_TOP = 1000
_DEFAULT_TOP = 10

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    """The next `remaining` calls to `endpoint` answer `status` with Graph's (or, for the token
    endpoint, Entra's) error body; a 429 or 503 carries `retry_after` when given."""

    endpoint: str
    status: int
    code: str
    message: str
    retry_after: float | None
    remaining: int


@dataclass(frozen=True)
class RecordedRequest:
    """One call as the server saw it (no bodies and no headers: they carry secrets)."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    endpoint: str
    status: int
    time: float

    def param(self, name: str) -> str | None:
        return next((value for key, value in self.query if key == name), None)


class LoopbackGraph(LoopbackSite):
    """The server as an object: `await start()`, then `authority_host`/`tenant_id`/`graph_url`/
    `ca_file`, the client id and secret to configure, `delivered`; `await stop()`."""

    def __init__(
        self,
        tls_dir: Path,
        *,
        tenant_id: str = DEFAULT_TENANT,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str | None = None,
        mailboxes: Iterable[str] = (DEFAULT_MAILBOX,),
        token_lifetime_s: int = 3599,
        max_page_size: int = _MAX_TOP,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """`client_secret` defaults to a fresh random one; `mailboxes` are the users that exist
        (sendMail from another is a 404 ErrorInvalidUser; mail to one lands in its inbox);
        `max_page_size` caps a listing page whatever $top asks, as Graph may (the rest comes
        through @odata.nextLink)."""
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.default_mailbox = next(iter(mailboxes), DEFAULT_MAILBOX)
        self.mailboxes = Mailboxes(tuple(mailboxes))
        self.delivered: list[DeliveredMail] = []
        self.requests: list[RecordedRequest] = []
        self.tokens_issued = 0
        self._tls_dir = tls_dir
        self._tls: TlsFiles | None = None
        self._token_lifetime_s = token_lifetime_s
        self._max_page_size = max_page_size
        self._tokens: dict[str, float] = {}
        """access token -> expiry (time.time())"""
        self._faults: list[Fault] = []
        self._delivery = asyncio.Condition()
        super().__init__(host=host, port=port)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> str:
        """Serves HTTPS on host:port (0: a free port) with a certificate from `tls_dir`;
        returns the base URL (`https://127.0.0.1:N`)."""
        self._tls = ensure_tls_files(self._tls_dir, hosts=(self._host,))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._tls.cert_file, self._tls.key_file)
        # Above Graph's own limit, so that an oversized sendMail gets Graph's 413, not aiohttp's.
        app = web.Application(client_max_size=4 * SEND_MAIL_MAX_BYTES, middlewares=[self._record])
        tenant = "/{tenant}"
        user = "/v1.0/users/{user}"
        app.add_routes(
            [
                web.get(tenant + "/v2.0/.well-known/openid-configuration", self._openid),
                web.post(tenant + "/oauth2/v2.0/token", self._token),
                web.post(user + "/sendMail", self._send_mail),
                web.get(user + "/messages", self._list_messages),
                web.get(user + "/mailFolders/{folder}/messages", self._list_messages),
                web.get(user + "/messages/{message}/attachments", self._attachments),
                web.get(
                    user + "/mailFolders/{folder}/messages/{message}/attachments",
                    self._attachments,
                ),
            ]
        )
        return await self._serve(app, context)

    # --- what clients configure ---------------------------------------------------------------

    @property
    def authority_host(self) -> str:
        """The instance URL (CPA_MAIL_AUTHORITY_HOST); the authority is this plus the tenant."""
        return self.base_url

    @property
    def authority(self) -> str:
        return f"{self.base_url}/{self.tenant_id}"

    @property
    def graph_url(self) -> str:
        """Graph's base URL, version included (CPA_MAIL_GRAPH_URL)."""
        return f"{self.base_url}/v1.0"

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients must trust (CPA_MAIL_CA_BUNDLE)."""
        if self._tls is None:
            raise RuntimeError("the loopback Graph is not started")
        return self._tls.ca_file

    def agent_environment(self, *, secret_file: Path | None = None) -> dict[str, str]:
        """CPA_MAIL_* variables that point a mail agent here. The secret goes in as
        CPA_MAIL_CLIENT_SECRET_FILE when `secret_file` is given (written 0600), else as
        CPA_MAIL_CLIENT_SECRET; either way only in the agent's environment."""
        env = {
            "CPA_MAIL_AUTHORITY_HOST": self.authority_host,
            "CPA_MAIL_TENANT_ID": self.tenant_id,
            "CPA_MAIL_CLIENT_ID": self.client_id,
            "CPA_MAIL_GRAPH_URL": self.graph_url,
            "CPA_MAIL_CA_BUNDLE": str(self.ca_file),
            "CPA_MAIL_MAILBOX": self.default_mailbox,
        }
        if secret_file is not None:
            secret_file.touch(mode=0o600)
            secret_file.chmod(0o600)  # before the secret goes in, also for an older file
            secret_file.write_text(self.client_secret + "\n", encoding="utf-8")
            env["CPA_MAIL_CLIENT_SECRET_FILE"] = str(secret_file)
        else:
            env["CPA_MAIL_CLIENT_SECRET"] = self.client_secret
        return env

    # --- driving it from tests and the demo ----------------------------------------------------

    async def wait_for_deliveries(self, count: int, *, timeout_s: float) -> list[DeliveredMail]:
        """The delivered mails once there are at least `count`; TimeoutError after `timeout_s`."""
        async with asyncio.timeout(timeout_s), self._delivery:
            await self._delivery.wait_for(lambda: len(self.delivered) >= count)
            return list(self.delivered)

    def seed_message(
        self,
        mailbox: str,
        *,
        subject: str,
        sender: str,
        body: str = "",
        folder: str = "inbox",
        is_read: bool = False,
        attachments: Iterable[tuple[str, str, bytes]] = (),
        received: datetime | None = None,
    ) -> str:
        """Puts a message in a mailbox (created if new); attachments as (name, media type,
        bytes). Returns the message id."""
        return self.mailboxes.store(
            mailbox,
            folder=folder,
            subject=subject,
            body=body,
            sender=sender,
            is_read=is_read,
            attachments=tuple(DeliveredAttachment(n, t, d) for n, t, d in attachments),
            received=received,
        )

    def fail_next(
        self,
        count: int,
        *,
        status: int,
        code: str = "",
        message: str = "",
        retry_after: float | None = None,
        endpoint: str = "graph",
    ) -> None:
        """The next `count` calls to `endpoint` answer `status`. Endpoints: "graph" (any Graph
        call), "sendMail", "messages", "attachments", "token", "openid"."""
        if endpoint not in ("graph", "sendMail", "messages", "attachments", "token", "openid"):
            raise ValueError(f"unknown endpoint {endpoint!r}")
        if endpoint in ("token", "openid"):
            # Entra's OAuth error codes (RFC 6749 5.2): a server-side failure is
            # temporarily_unavailable.
            default_code = "temporarily_unavailable" if status >= 500 else "invalid_request"
        else:
            default_code = {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(status, "Failed")
        self._faults.append(
            Fault(
                endpoint=endpoint,
                status=status,
                code=code or default_code,
                message=message or f"Injected failure {status}.",
                retry_after=retry_after,
                remaining=count,
            )
        )

    def expire_tokens(self) -> None:
        """Every token issued so far is expired from now on: Graph answers 401
        InvalidAuthenticationToken to it (clients still hold it in their caches)."""
        for token in self._tokens:
            self._tokens[token] = 0.0

    def calls(self, endpoint: str) -> list[RecordedRequest]:
        """The recorded calls to one endpoint ("sendMail", "messages", "token"...)."""
        return [r for r in self.requests if r.endpoint == endpoint]

    # --- HTTP ---------------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = _endpoint_of(request)
        fault = self._take_fault(endpoint)
        if fault is not None:
            response: web.StreamResponse = self._fault_response(fault, endpoint)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as error:
                if error.status == 404:
                    response = graph_error(404, "ResourceNotFound", "Resource not found.")
                elif error.status == 405:
                    response = graph_error(405, "MethodNotAllowed", "Method not allowed.")
                else:
                    raise
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=tuple(request.query.items()),
                endpoint=endpoint,
                status=response.status,
                time=time.monotonic(),
            )
        )
        return response

    def _take_fault(self, endpoint: str) -> Fault | None:
        for fault in self._faults:
            applies = fault.endpoint == endpoint or (
                fault.endpoint == "graph" and endpoint in ("sendMail", "messages", "attachments")
            )
            if applies and fault.remaining > 0:
                fault.remaining -= 1
                return fault
        return None

    def _fault_response(self, fault: Fault, endpoint: str) -> web.Response:
        headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
        if endpoint in ("token", "openid"):
            return aad_error(fault.status, fault.code, fault.message, headers=headers)
        return graph_error(fault.status, fault.code, fault.message, headers=headers)

    async def _openid(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if tenant != self.tenant_id:
            return aad_error(
                400,
                "invalid_tenant",
                f"AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the "
                "correct tenant ID and are signing into the correct cloud.",
            )
        base = f"{self.base_url}/{tenant}"
        return web.json_response(
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "token"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                "tenant_region_scope": "EU",
            }
        )

    async def _token(self, request: web.Request) -> web.Response:
        if request.match_info["tenant"] != self.tenant_id:
            return aad_error(400, "invalid_tenant", "AADSTS90002: Tenant not found.")
        form = await request.post()
        grant = form.get("grant_type")
        client_id = form.get("client_id")
        secret = form.get("client_secret")
        scope = str(form.get("scope") or "")
        if grant != "client_credentials":
            return aad_error(
                400,
                "unsupported_grant_type",
                f"AADSTS70003: The app requested an unsupported grant type '{str(grant)[:40]}'.",
            )
        if client_id != self.client_id:
            return aad_error(
                400,
                "unauthorized_client",
                f"AADSTS700016: Application with identifier '{str(client_id)[:80]}' was not "
                f"found in the directory '{self.tenant_id}'.",
                codes=[700016],
            )
        if not secret:
            return aad_error(
                401,
                "invalid_client",
                "AADSTS7000216: 'client_assertion', 'client_secret' or 'request' is required "
                "for the 'client_credentials' grant type.",
                codes=[7000216],
            )
        if not secrets.compare_digest(str(secret).encode(), self.client_secret.encode()):
            return aad_error(
                401,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in "
                "the request is the client secret value, not the client secret ID, for a secret "
                f"added to app '{self.client_id}'.",
                codes=[7000215],
            )
        if not any(part.endswith(_SCOPE_SUFFIX) for part in scope.split()):
            return aad_error(
                400,
                "invalid_scope",
                f"AADSTS1002012: The provided value for scope {scope[:80]} is not valid. Client "
                "credential flows must have a scope value with /.default suffixed to the "
                "resource identifier (application ID URI).",
                codes=[1002012],
            )
        token = secrets.token_urlsafe(32)
        self._tokens[token] = time.time() + self._token_lifetime_s
        self.tokens_issued += 1
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": self._token_lifetime_s,
                "ext_expires_in": self._token_lifetime_s,
                "access_token": token,
            }
        )

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return invalid_token("Access token is empty.")
        expiry = self._tokens.get(token)
        if expiry is None:
            return invalid_token("Invalid JWT token. The token is not valid for this audience.")
        if expiry <= time.time():
            return invalid_token("Lifetime validation failed, the token is expired.")
        return None

    def _user(self, request: web.Request) -> str | web.Response:
        user = request.match_info["user"]
        if user not in self.mailboxes:
            return graph_error(404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
        return user

    async def _send_mail(self, request: web.Request) -> web.Response:
        if (refusal := self._unauthorized(request)) is not None:
            return refusal
        user = self._user(request)
        if isinstance(user, web.Response):
            return user
        raw = await request.read()
        if len(raw) > SEND_MAIL_MAX_BYTES:
            return graph_error(
                413,
                "ErrorRequestEntityTooLarge",
                f"The request is {len(raw)} bytes; the maximum is {SEND_MAIL_MAX_BYTES}.",
            )
        try:
            payload = json.loads(raw)
        except ValueError:
            return graph_error(400, "BadRequest", "Unable to read JSON request payload.")
        mail = parse_mail(user, payload)
        if isinstance(mail, web.Response):
            return mail
        self.delivered.append(mail)
        self.mailboxes.deliver(mail)
        async with self._delivery:
            self._delivery.notify_all()
        return web.Response(status=202)

    async def _list_messages(self, request: web.Request) -> web.Response:
        if (refusal := self._unauthorized(request)) is not None:
            return refusal
        user = self._user(request)
        if isinstance(user, web.Response):
            return user
        folder = request.match_info.get("folder")
        if folder is not None:
            folder = folder.lower()
            if folder not in WELL_KNOWN_FOLDERS:
                return graph_error(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
        query = request.query
        try:
            top = int(query.get("$top", _DEFAULT_TOP))
            skip = int(query.get("$skip", 0))
        except ValueError:
            return graph_error(400, "BadRequest", "Invalid value for $top or $skip.")
        if not 1 <= top <= _MAX_TOP or skip < 0:
            return graph_error(400, "BadRequest", f"$top must be between 1 and {_MAX_TOP}.")
        messages = self.mailboxes.messages(user, folder)
        if "$search" in query:
            if "$filter" in query or "$orderby" in query:
                return graph_error(
                    400,
                    "ErrorInvalidUrlQuery",
                    "The query parameter '$filter' or '$orderby' is not supported with '$search'.",
                )
            phrase = search_phrase(query["$search"])
            if isinstance(phrase, web.Response):
                return phrase
            messages = [m for m in messages if m.matches(phrase)]
        if "$filter" in query:
            wanted = {"isread eq false": False, "isread eq true": True}.get(
                " ".join(query["$filter"].lower().split())
            )
            if wanted is None:
                return graph_error(
                    400,
                    "ErrorInvalidUrlQueryFilter",
                    "The query filter contains one or more invalid nodes.",
                )
            messages = [m for m in messages if m.is_read == wanted]
        select = None
        if "$select" in query:
            select = {name.strip() for name in query["$select"].split(",") if name.strip()}
        page_size = min(top, self._max_page_size)
        page = messages[skip : skip + page_size]
        body: dict[str, Any] = {
            "@odata.context": f"{self.graph_url}/$metadata#users('{user}')/messages",
            "value": [message.resource(select) for message in page],
        }
        if skip + page_size < len(messages):
            following = {**query, "$skip": str(skip + page_size)}
            body["@odata.nextLink"] = f"{self.base_url}{request.path}?{urlencode(following)}"
        return web.json_response(body)

    async def _attachments(self, request: web.Request) -> web.Response:
        if (refusal := self._unauthorized(request)) is not None:
            return refusal
        user = self._user(request)
        if isinstance(user, web.Response):
            return user
        message: StoredMessage | None = self.mailboxes.message(user, request.match_info["message"])
        if message is None:
            return graph_error(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        return web.json_response(
            {
                "@odata.context": f"{self.graph_url}/$metadata#attachments",
                "value": [attachment_resource(i, a) for i, a in enumerate(message.attachments)],
            }
        )


def _endpoint_of(request: web.Request) -> str:
    path = request.path
    if path.endswith("/.well-known/openid-configuration"):
        return "openid"
    if path.endswith("/oauth2/v2.0/token"):
        return "token"
    if path.endswith("/sendMail"):
        return "sendMail"
    if path.endswith("/attachments"):
        return "attachments"
    if path.endswith("/messages"):
        return "messages"
    return "other"


async def _serve(directory: Path, port: int) -> None:
    async with LoopbackGraph(directory, port=port) as graph:
        print(f"loopback Graph on {graph.base_url}; agent environment:")
        for key, value in graph.agent_environment(secret_file=directory / "client-secret").items():
            print(f"  {key}={value}")
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the loopback Microsoft Graph alone.")
    parser.add_argument("directory", type=Path, help="where the TLS files and secret go")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.directory, args.port))


if __name__ == "__main__":
    main()
