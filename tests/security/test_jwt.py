"""JWT bearer tokens over real gRPC, the issuer's JWKS served by a loopback HTTP server.

Keys are made by the test (RSA, EC P-256, an HMAC secret); tokens are signed with PyJWT as an
identity provider would.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError
from tests.e2e.conftest import todo

from .conftest import SecureScheduler, secure_settings, start_secure

ISSUER = "https://idp.example.test"
AUDIENCE = "cpa-scheduler"
HMAC_SECRET = "a-shared-secret-of-at-least-32-characters!"


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    public = key.public_key()
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(public, as_dict=True)
    jwk.update(kid=kid, use="sig")
    return jwk


@dataclass
class Issuer:
    """The identity provider: signing keys, and the JWKS it publishes on loopback."""

    rsa_key: Any = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ec_key: Any = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    published: list[dict[str, Any]] = field(default_factory=list)
    jwks_reads: int = 0
    url: str = ""

    def __post_init__(self) -> None:
        self.published = [_jwk(self.rsa_key, "rsa-1"), _jwk(self.ec_key, "ec-1")]

    def token(
        self,
        *,
        kid: str = "rsa-1",
        algorithm: str = "RS256",
        key: Any = None,
        lifetime_s: float = 300,
        **claims: Any,
    ) -> str:
        now = time.time()
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "exp": int(now + lifetime_s),
            "iat": int(now),
            "cpa_tenant": "acme",
            "cpa_roles": ["viewer"],
            **claims,
        }
        if key is None:
            key = {"RS256": self.rsa_key, "ES256": self.ec_key, "HS256": HMAC_SECRET}[algorithm]
        headers = {"kid": kid} if kid else {}
        return jwt.encode(payload, key, algorithm=algorithm, headers=headers)

    async def _serve_jwks(self, request: web.Request) -> web.Response:
        self.jwks_reads += 1
        return web.json_response({"keys": self.published})


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    idp = Issuer()
    app = web.Application()
    app.router.add_get("/jwks.json", idp._serve_jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    idp.url = f"http://127.0.0.1:{port}/jwks.json"
    try:
        yield idp
    finally:
        await runner.cleanup()


@pytest.fixture
async def jwt_server(tmp_path: Path, issuer: Issuer) -> AsyncIterator[SecureScheduler]:
    settings = secure_settings(
        tmp_path / "data",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_jwks_url=issuer.url,
        jwt_algorithms="RS256,ES256,HS256",
        jwt_hmac_secret=HMAC_SECRET,
        jwt_clock_skew_s=30.0,
        jwt_jwks_refresh_min_s=60.0,
    )
    server, port = await start_secure(settings)
    try:
        yield SecureScheduler(server=server, port=port, admin_key="")
    finally:
        await server.stop(grace_s=0)


async def _call(server: SecureScheduler, token: str) -> list[Any]:
    async with server.client(token) as client:
        return [job async for job in client.list_jobs()]


async def _refused(server: SecureScheduler, token: str) -> CpaError:
    with pytest.raises(CpaError) as caught:
        await _call(server, token)
    assert token not in caught.value.message
    return caught.value


@pytest.mark.parametrize(
    ("algorithm", "kid"), [("RS256", "rsa-1"), ("ES256", "ec-1"), ("HS256", "")]
)
async def test_valid_tokens_of_each_algorithm_get_in(
    jwt_server: SecureScheduler, issuer: Issuer, algorithm: str, kid: str
) -> None:
    assert await _call(jwt_server, issuer.token(algorithm=algorithm, kid=kid)) == []


async def test_the_tenant_and_roles_come_from_the_claims(
    jwt_server: SecureScheduler, issuer: Issuer
) -> None:
    submitter = issuer.token(cpa_roles="submitter viewer", cpa_tenant="globex")
    spec = job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[todo("a", "noop")]))
    async with jwt_server.client(submitter) as client:
        job = (await client.schedule_job(spec)).job
        assert (await client.get_job(job.job_id)).job_id == job.job_id
    # A token of another tenant does not see it; unknown role names are ignored.
    viewer = issuer.token(cpa_roles=["viewer", "not-a-role"], cpa_tenant="acme")
    async with jwt_server.client(viewer) as client:
        with pytest.raises(CpaError) as caught:
            await client.get_job(job.job_id)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(CpaError) as caught:
            await client.schedule_job(spec)
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("claims", "reason", "words"),
    [
        ({"lifetime_s": -120}, "CREDENTIAL_EXPIRED", "expired"),
        ({"aud": "another-service"}, "CREDENTIAL_INVALID", "audience"),
        ({"iss": "https://evil.example.test"}, "CREDENTIAL_INVALID", "issuer"),
        ({"cpa_roles": ["superuser"]}, "CREDENTIAL_INVALID", "names no role"),
        ({"cpa_tenant": ""}, "CREDENTIAL_INVALID", "cpa_tenant"),
        ({"nbf": int(time.time()) + 3600}, "CREDENTIAL_EXPIRED", "not valid yet"),
    ],
)
async def test_bad_claims_are_unauthenticated(
    jwt_server: SecureScheduler,
    issuer: Issuer,
    claims: dict[str, Any],
    reason: str,
    words: str,
) -> None:
    error = await _refused(jwt_server, issuer.token(**claims))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
    assert words in error.message


async def test_an_expiry_within_the_clock_skew_is_accepted(
    jwt_server: SecureScheduler, issuer: Issuer
) -> None:
    assert await _call(jwt_server, issuer.token(lifetime_s=-10)) == []  # skew is 30 s


async def test_a_wrongly_signed_token_is_refused(
    jwt_server: SecureScheduler, issuer: Issuer
) -> None:
    impostor = rsa.generate_private_key(65537, 2048)
    error = await _refused(jwt_server, issuer.token(key=impostor))  # kid rsa-1, other key
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_INVALID")
    assert "signature" in error.message
    forged = await _refused(jwt_server, issuer.token(algorithm="HS256", key="x" * 40, kid=""))
    assert "signature" in forged.message


async def test_a_rotated_key_is_fetched_once_and_unknown_kids_do_not_hammer_the_issuer(
    tmp_path: Path, issuer: Issuer
) -> None:
    settings = secure_settings(
        tmp_path / "data",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_jwks_url=issuer.url,
        jwt_jwks_refresh_min_s=0.0,
    )
    server, port = await start_secure(settings)
    target = SecureScheduler(server=server, port=port, admin_key="")
    try:
        assert await _call(target, issuer.token()) == []
        assert issuer.jwks_reads == 1
        # Rotation: the issuer publishes a new key; the first token naming it triggers a read.
        new_key = rsa.generate_private_key(65537, 2048)
        issuer.published.append(_jwk(new_key, "rsa-2"))
        assert await _call(target, issuer.token(kid="rsa-2", key=new_key)) == []
        assert issuer.jwks_reads == 2
        # A token repeated is not verified (nor the JWKS read) again.
        token = issuer.token(kid="rsa-2", key=new_key, sub="bob")
        for _ in range(3):
            await _call(target, token)
        assert issuer.jwks_reads == 2
    finally:
        await server.stop(grace_s=0)
    # With the default bound, a flood of made-up kids reads the JWKS at most once per bound.
    bounded = secure_settings(
        tmp_path / "data2",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_jwks_url=issuer.url,
        jwt_jwks_refresh_min_s=60.0,
    )
    server, port = await start_secure(bounded)
    target = SecureScheduler(server=server, port=port, admin_key="")
    try:
        before = issuer.jwks_reads
        for index in range(5):
            error = await _refused(target, issuer.token(kid=f"made-up-{index}"))
            assert "not in the issuer's JWKS" in error.message
        assert issuer.jwks_reads == before + 1
    finally:
        await server.stop(grace_s=0)


async def test_the_jwks_may_come_from_a_file(tmp_path: Path, issuer: Issuer) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": issuer.published}))
    server, port = await start_secure(
        secure_settings(
            tmp_path / "data", jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_jwks_file=jwks
        )
    )
    target = SecureScheduler(server=server, port=port, admin_key="")
    try:
        assert await _call(target, issuer.token(algorithm="ES256", kid="ec-1")) == []
        # HS256 is not among the default algorithms.
        error = await _refused(target, issuer.token(algorithm="HS256", kid=""))
        assert "HS256" in error.message
    finally:
        await server.stop(grace_s=0)


def test_a_configuration_that_cannot_work_stops_the_start(tmp_path: Path) -> None:
    from cpa_scheduler.security.jwt_tokens import JwtVerifier

    for overrides, words in [
        ({"jwt_audience": ""}, "CPA_JWT_AUDIENCE"),
        ({"jwt_algorithms": "RS256,none"}, "unsupported"),
        ({"jwt_algorithms": "HS256", "jwt_hmac_secret": "short"}, "32 characters"),
        ({"jwt_jwks_url": ""}, "CPA_JWT_JWKS_URL"),
    ]:
        settings = secure_settings(
            tmp_path,
            **{
                "jwt_issuer": ISSUER,
                "jwt_audience": AUDIENCE,
                "jwt_jwks_url": "http://127.0.0.1:9/jwks.json",
                **overrides,
            },
        )
        with pytest.raises(RuntimeError, match=words):
            JwtVerifier(settings)
