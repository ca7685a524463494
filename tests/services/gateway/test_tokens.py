"""JWTs as credentials: verification against a JWKS file or URL, claims, key rotation."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from agentrt.common.v1.common_pb2 import ErrorReason
from cryptography.hazmat.primitives import serialization

from services.gateway.auth import KeysAndTokens
from services.gateway.jwks import KeySet, jwks_fetcher
from services.gateway.keys import ApiKeys, Principal
from services.gateway.store import SQL_DIRECTORY, open_key_store
from services.gateway.tokens import JwtConfig, TokenVerifier
from services.kit.config import ConfigError
from services.kit.errors import Unauthenticated, Unavailable
from services.kit.storage import StorageConfig, migrate
from tests.identity import AUDIENCE, ISSUER, Issuer, serving_jwks

ENV = {"AGENTRT_JWT_ISSUER": ISSUER, "AGENTRT_JWT_AUDIENCE": AUDIENCE}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def jwks_file(issuer: Issuer, tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    publish(issuer, path)
    return path


def publish(issuer: Issuer, path: Path) -> None:
    """Writes the issuer's JWKS as the provider would publish it now."""
    path.write_text(json.dumps(issuer.jwks()))


def config(jwks: str, **env: str) -> JwtConfig:
    return JwtConfig.from_env({"AGENTRT_JWT_JWKS": jwks, **ENV, **env})


@pytest.fixture
def verifier(jwks_file: Path) -> TokenVerifier:
    return TokenVerifier(config(str(jwks_file)))


async def refused(verifier: TokenVerifier, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as error:
        await verifier.authenticate(token)
    assert error.value.reason == ErrorReason.ERROR_REASON_TOKEN_INVALID
    return error.value


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1"])
async def test_a_signed_token_names_its_tenant_and_principal(
    issuer: Issuer, verifier: TokenVerifier, kid: str
) -> None:
    caller = await verifier.authenticate(issuer.token(kid))
    assert caller == Principal("acme", "alice@example.test", f"jwt:{kid}", admin=False)


async def test_clock_skew_within_the_leeway_is_allowed(
    issuer: Issuer, verifier: TokenVerifier
) -> None:
    now = int(time.time())
    assert await verifier.authenticate(issuer.token(exp=now - 10, nbf=now + 10))


@pytest.mark.parametrize(
    ("make", "problem", "said"),
    [
        (lambda i: i.token(exp=int(time.time()) - 100), "expired", "expired"),
        (lambda i: i.token(nbf=int(time.time()) + 100), "not_yet_valid", "not valid yet"),
        (lambda i: i.token(iss="https://evil.example/"), "issuer", ISSUER),
        (lambda i: i.token(aud="another-service"), "audience", AUDIENCE),
        (lambda i: i.token(exp=None), "missing_claim", "exp"),
        (lambda i: i.token(signer=Issuer().keys["rsa-1"][1]), "signature", "signature"),
        (lambda i: i.token("ec-1", signer=Issuer().keys["ec-1"][1]), "signature", "signature"),
        (lambda i: i.unsigned(), "unsigned", "none"),
        (lambda i: i.token(tenant=None), "tenant", "tenant"),
        (lambda i: i.token(tenant="Acme Corp"), "tenant", "tenant"),
        (lambda i: i.token(sub=None), "principal", "sub"),
        (lambda i: "bm90LWpzb24.e30.c2ln", "malformed", "not a JWT"),
    ],
)
async def test_a_bad_token_is_refused_saying_why(
    issuer: Issuer, verifier: TokenVerifier, make: Callable[[Issuer], str], problem: str, said: str
) -> None:
    error = await refused(verifier, make(issuer))
    assert error.metadata == {"problem": problem}
    assert said in error.message


async def test_an_hmac_token_keyed_with_the_public_key_is_refused(
    issuer: Issuer, verifier: TokenVerifier
) -> None:
    public = (
        issuer.keys["rsa-1"][1]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = _b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(issuer.claims()).encode())
    signature = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{_b64(signature)}"
    error = await refused(verifier, token)
    assert error.metadata == {"problem": "algorithm"}


async def test_admin_comes_from_the_configured_claim(issuer: Issuer, jwks_file: Path) -> None:
    roles = TokenVerifier(
        config(str(jwks_file), AGENTRT_JWT_ADMIN_CLAIM="roles", AGENTRT_JWT_ADMIN_VALUE="ops")
    )
    assert (await roles.authenticate(issuer.token(roles=["dev", "ops"]))).admin
    assert (await roles.authenticate(issuer.token(roles="dev ops"))).admin
    assert not (await roles.authenticate(issuer.token(roles=["dev"]))).admin
    assert not (await roles.authenticate(issuer.token(roles="operator"))).admin

    flag = TokenVerifier(config(str(jwks_file), AGENTRT_JWT_ADMIN_CLAIM="agentrt_admin"))
    assert (await flag.authenticate(issuer.token(agentrt_admin=True))).admin
    assert not (await flag.authenticate(issuer.token(agentrt_admin="true"))).admin
    # No admin claim configured: no token is an admin's, whatever it says.
    default = TokenVerifier(config(str(jwks_file)))
    assert not (await default.authenticate(issuer.token(agentrt_admin=True, roles=["ops"]))).admin


async def test_tenant_and_principal_claims_are_configurable(
    issuer: Issuer, jwks_file: Path
) -> None:
    custom = TokenVerifier(
        config(
            str(jwks_file),
            AGENTRT_JWT_TENANT_CLAIM="org",
            AGENTRT_JWT_PRINCIPAL_CLAIM="email",
        )
    )
    caller = await custom.authenticate(issuer.token(org="globex", email="bob@globex.test"))
    assert (caller.tenant, caller.principal) == ("globex", "bob@globex.test")
    await refused(custom, issuer.token())  # has `tenant` and `sub`, not `org` and `email`


async def test_only_the_configured_algorithms_are_accepted(issuer: Issuer, jwks_file: Path) -> None:
    rsa_only = TokenVerifier(config(str(jwks_file), AGENTRT_JWT_ALGORITHMS="RS256"))
    assert await rsa_only.authenticate(issuer.token("rsa-1"))
    error = await refused(rsa_only, issuer.token("ec-1"))
    assert error.metadata == {"problem": "algorithm"}


async def test_a_new_key_id_rereads_the_jwks_at_most_once_a_cooldown(
    issuer: Issuer, jwks_file: Path
) -> None:
    clock = Clock()
    keys = KeySet(jwks_fetcher(str(jwks_file)), 300.0, 10.0, clock)
    verifier = TokenVerifier(config(str(jwks_file)), keys)
    await verifier.authenticate(issuer.token())
    assert keys.reads == 1

    issuer.add_ec("ec-2")  # the provider rotates in a new key
    publish(issuer, jwks_file)
    clock.now += 11
    assert (await verifier.authenticate(issuer.token("ec-2"))).key_id == "jwt:ec-2"
    assert keys.reads == 2

    # A stream of tokens with unknown key ids does not make a read each.
    issuer.add_rsa("rsa-9")  # signs, but is not published yet
    clock.now += 11
    for _ in range(5):
        error = await refused(verifier, issuer.token("rsa-9"))
        assert error.metadata == {"problem": "unknown_key"}
    assert keys.reads == 3  # the first one reread the JWKS; the others waited
    publish(issuer, jwks_file)
    await refused(verifier, issuer.token("rsa-9"))  # still within the cooldown
    assert keys.reads == 3
    clock.now += 11
    assert await verifier.authenticate(issuer.token("rsa-9"))
    assert keys.reads == 4


async def test_the_jwks_is_refreshed_and_a_failed_refresh_keeps_the_keys(
    issuer: Issuer, jwks_file: Path
) -> None:
    clock = Clock()
    keys = KeySet(jwks_fetcher(str(jwks_file)), 300.0, 10.0, clock)
    verifier = TokenVerifier(config(str(jwks_file)), keys)
    await verifier.authenticate(issuer.token())
    clock.now += 299
    await verifier.authenticate(issuer.token())
    assert keys.reads == 1
    jwks_file.unlink()  # noqa: ASYNC240
    clock.now += 2
    assert await verifier.authenticate(issuer.token())  # the keys read before still work


async def test_a_jwks_never_read_makes_calls_unavailable(issuer: Issuer, tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "later.json"
    keys = KeySet(jwks_fetcher(str(path)), 300.0, 10.0, clock)
    verifier = TokenVerifier(config(str(path)), keys)
    for _ in range(5):
        with pytest.raises(Unavailable) as error:
            await verifier.authenticate(issuer.token())
        assert str(path) not in error.value.message
    assert keys.attempts == 1, "an unreachable provider is tried once a cooldown"
    publish(issuer, path)
    clock.now += 11
    assert await verifier.authenticate(issuer.token())
    assert keys.attempts == 2


async def test_a_jwks_url_is_read_once_and_cached(issuer: Issuer) -> None:
    requested: list[str] = []
    async with serving_jwks(issuer, requested) as url:
        verifier = TokenVerifier(config(url))
        for kid in ("rsa-1", "ec-1", "rsa-1"):
            assert (await verifier.authenticate(issuer.token(kid))).tenant == "acme"
    assert requested == ["/.well-known/jwks.json"]


async def test_keys_and_tokens_each_go_to_their_checker(
    issuer: Issuer, verifier: TokenVerifier, sqlite_path: Path
) -> None:
    storage = StorageConfig("sqlite", sqlite_path, None, "gateway")
    await migrate(storage, SQL_DIRECTORY)
    store = await open_key_store(storage)
    try:
        keys = ApiKeys(store)
        _, key = await keys.create("dev", "app")
        both = KeysAndTokens(keys, verifier)
        assert (await both.authenticate(key)).tenant == "dev"
        assert (await both.authenticate(issuer.token())).tenant == "acme"
        # Without an identity provider a JWT is only an invalid API key.
        with pytest.raises(Unauthenticated) as error:
            await KeysAndTokens(keys).authenticate(issuer.token())
        assert error.value.reason == ErrorReason.ERROR_REASON_API_KEY_INVALID
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"AGENTRT_JWT_JWKS": "/etc/jwks.json"}, "AGENTRT_JWT_ISSUER"),
        ({**ENV, "AGENTRT_JWT_JWKS": "x", "AGENTRT_JWT_ALGORITHMS": "HS256"}, "ALGORITHMS"),
        ({**ENV, "AGENTRT_JWT_JWKS": "x", "AGENTRT_JWT_LEEWAY_SECONDS": "-1"}, "LEEWAY"),
    ],
)
def test_a_wrong_setting_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        JwtConfig.from_env(env)


def test_no_jwks_means_api_keys_only() -> None:
    assert not JwtConfig.from_env({}).enabled
    assert dataclasses.replace(JwtConfig.from_env({}), jwks="x").enabled
