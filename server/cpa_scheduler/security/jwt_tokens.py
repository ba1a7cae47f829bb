"""JWT bearer tokens (PyJWT): signature (HS256, RS256, ES256), issuer, audience, expiry with
clock skew, and the claims that name the tenant and the roles.

Public keys come from the issuer's JWKS (a URL or a file), read at the first token and again when
a token names a `kid` not known yet, at most once per `jwt_jwks_refresh_min_s`. A token that
verified is remembered until it expires, so a caller that sends the same token on every call
costs one signature check, not one per call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import jwt
from jwt import PyJWK, PyJWKSet

from cpa_scheduler.domain import Reason

from .errors import unauthenticated
from .principal import CredentialKind, Principal, Role

if TYPE_CHECKING:
    from cpa_scheduler.settings import Settings

log = logging.getLogger(__name__)

SUPPORTED_ALGORITHMS = frozenset({"HS256", "RS256", "ES256"})
_JWKS_TIMEOUT_S = 5.0
_CACHE_MAX_TOKENS = 10_000
_MIN_HS256_SECRET_CHARS = 32


def check_settings(settings: Settings) -> None:
    """Refuses a JWT configuration that cannot work (at start, not at the first token)."""
    if not settings.jwt_issuer:
        return
    if not settings.jwt_audience:
        raise RuntimeError("CPA_JWT_AUDIENCE is required with CPA_JWT_ISSUER")
    algorithms = _algorithms(settings)
    if unknown := algorithms - SUPPORTED_ALGORITHMS:
        raise RuntimeError(f"CPA_JWT_ALGORITHMS: unsupported {', '.join(sorted(unknown))}")
    if "HS256" in algorithms and len(settings.jwt_hmac_secret) < _MIN_HS256_SECRET_CHARS:
        raise RuntimeError(
            f"CPA_JWT_HMAC_SECRET needs at least {_MIN_HS256_SECRET_CHARS} characters with HS256"
        )
    asymmetric = algorithms - {"HS256"}
    if asymmetric and not (settings.jwt_jwks_url or settings.jwt_jwks_file):
        raise RuntimeError(
            f"{', '.join(sorted(asymmetric))} need CPA_JWT_JWKS_URL or CPA_JWT_JWKS_FILE"
        )


def _algorithms(settings: Settings) -> frozenset[str]:
    return frozenset(a.strip() for a in settings.jwt_algorithms.split(",") if a.strip())


def _roles(value: Any) -> frozenset[Role]:
    names = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(names, list):
        return frozenset()
    known = {role.value for role in Role}
    return frozenset(Role(name) for name in names if isinstance(name, str) and name in known)


class JwtVerifier:
    """Verifies tokens of one issuer."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        check_settings(settings)
        self._settings = settings
        self._algorithms = _algorithms(settings)
        self._clock = clock
        self._keys: dict[str, PyJWK] = {}
        self._loaded_at: float | None = None
        self._loading = asyncio.Lock()
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        now = self._clock()
        cached = self._verified.get(token)
        if cached is not None and now <= cached[1] + self._settings.jwt_clock_skew_s:
            return cached[0]
        principal, expires = await self._verify(token)
        if len(self._verified) >= _CACHE_MAX_TOKENS:
            self._verified = {t: v for t, v in self._verified.items() if now <= v[1]}
            if len(self._verified) >= _CACHE_MAX_TOKENS:
                self._verified.clear()
        self._verified[token] = (principal, expires)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        settings = self._settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise unauthenticated("the bearer token is not a well-formed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise unauthenticated(
                f"JWT algorithm {str(algorithm)[:16]!r} is not accepted "
                f"(CPA_JWT_ALGORITHMS: {', '.join(sorted(self._algorithms))})"
            )
        key: Any = settings.jwt_hmac_secret if algorithm == "HS256" else await self._key(header)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                leeway=settings.jwt_clock_skew_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthenticated("the JWT has expired", Reason.CREDENTIAL_EXPIRED) from None
        except jwt.ImmatureSignatureError:
            raise unauthenticated(
                "the JWT is not valid yet (nbf/iat in the future)", Reason.CREDENTIAL_EXPIRED
            ) from None
        except jwt.InvalidAudienceError:
            raise unauthenticated(
                f"the JWT is not meant for this server (audience is not {settings.jwt_audience!r})"
            ) from None
        except jwt.InvalidIssuerError:
            raise unauthenticated(f"the JWT's issuer is not {settings.jwt_issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise unauthenticated("the JWT's signature does not verify") from None
        except jwt.InvalidTokenError as error:
            # PyJWT's messages name the claim at fault, never the token.
            raise unauthenticated(f"the JWT is not valid: {error}") from None
        expires = float(claims["exp"])
        return self._principal(claims, expires + settings.jwt_clock_skew_s), expires

    def _principal(self, claims: dict[str, Any], valid_until: float) -> Principal:
        settings = self._settings
        tenant = claims.get(settings.jwt_tenant_claim)
        if not isinstance(tenant, str) or not tenant or len(tenant) > 128:
            raise unauthenticated(f"the JWT has no usable claim {settings.jwt_tenant_claim!r}")
        roles = _roles(claims.get(settings.jwt_roles_claim))
        if not roles:
            raise unauthenticated(
                f"the JWT's claim {settings.jwt_roles_claim!r} names no role "
                f"({', '.join(role.value for role in Role)})"
            )
        identity = f"{claims['iss']}#{claims['sub']}"
        return Principal(
            tenant=tenant,
            subject=f"jwt:{identity}",
            roles=roles,
            kind=CredentialKind.JWT,
            credential_id=identity,
            valid_until=valid_until,
        )

    async def _key(self, header: dict[str, Any]) -> Any:
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise unauthenticated("the JWT names no key (`kid`)")
        if kid not in self._keys:
            await self._refresh()
        found = self._keys.get(kid)
        if found is None:
            raise unauthenticated(f"the JWT's key {kid[:64]!r} is not in the issuer's JWKS")
        return found.key

    async def _refresh(self) -> None:
        """Reads the JWKS again, unless it was read less than jwt_jwks_refresh_min_s ago."""
        async with self._loading:
            now = time.monotonic()
            if (
                self._loaded_at is not None
                and now - self._loaded_at < self._settings.jwt_jwks_refresh_min_s
            ):
                return
            self._loaded_at = now
            try:
                document = await self._jwks_document()
                keys = PyJWKSet.from_dict(document).keys
            except (OSError, ValueError, aiohttp.ClientError, jwt.PyJWKSetError) as error:
                # Keys read before stay in use; the token is refused if its key is not among them.
                log.warning("cannot read the JWKS: %s", error)
                return
            self._keys = {key.key_id: key for key in keys if key.key_id}

    async def _jwks_document(self) -> dict[str, Any]:
        settings = self._settings
        if settings.jwt_jwks_file is not None:
            text = await asyncio.to_thread(settings.jwt_jwks_file.read_text, encoding="utf-8")
            document = json.loads(text)
        else:
            timeout = aiohttp.ClientTimeout(total=_JWKS_TIMEOUT_S)
            async with (
                aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
                session.get(settings.jwt_jwks_url) as response,
            ):
                response.raise_for_status()
                document = await response.json(content_type=None)
        if not isinstance(document, dict):
            raise ValueError("the JWKS is not a JSON object")
        return document
