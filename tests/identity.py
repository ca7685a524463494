"""A test identity provider: its own keys (made per test), its JWKS, and tokens signed by it."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://id.example.test/"
AUDIENCE = "agentrt"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Issuer:
    """Signs tokens with an RSA key (RS256, kid `rsa-1`) and an EC key (ES256, `ec-1`)."""

    keys: dict[str, tuple[str, PrivateKey]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.keys:
            self.add_rsa("rsa-1")
            self.add_ec("ec-1")

    def add_rsa(self, kid: str) -> None:
        self.keys[kid] = ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def add_ec(self, kid: str) -> None:
        self.keys[kid] = ("ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwks(self) -> dict[str, Any]:
        """The public keys, as the provider publishes them."""
        published = []
        for kid, (algorithm, key) in self.keys.items():
            if isinstance(key, rsa.RSAPrivateKey):
                jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            else:
                jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
            published.append({**jwk, "kid": kid, "alg": algorithm, "use": "sig"})
        return {"keys": published}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice@example.test",
            "tenant": "acme",
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def token(self, kid: str = "rsa-1", signer: PrivateKey | None = None, **claims: Any) -> str:
        """A token signed by key `kid` (or by `signer`, under kid's name and algorithm)."""
        algorithm, key = self.keys[kid]
        return jwt.encode(
            self.claims(**claims), signer or key, algorithm=algorithm, headers={"kid": kid}
        )

    def unsigned(self, **claims: Any) -> str:
        """A token with alg "none" and no signature."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode())
        return f"{header}.{_b64(json.dumps(self.claims(**claims)).encode())}."


@asynccontextmanager
async def serving_jwks(issuer: Issuer, requested: list[str] | None = None) -> AsyncIterator[str]:
    """The issuer's JWKS (as it is at each request) served over HTTP by this process on a
    free port; yields its URL. Each request's path is appended to `requested`."""

    async def serve(request: web.Request) -> web.Response:
        if requested is not None:
            requested.append(request.path)
        return web.json_response(issuer.jwks())

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/.well-known/jwks.json"
    finally:
        await runner.cleanup()
