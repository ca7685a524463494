"""JWTs from an identity provider as credentials: verified, then read for tenant and principal."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from agentrt.common.v1.common_pb2 import ErrorReason

from services.gateway.jwks import KeySet, jwks_fetcher
from services.gateway.keys import Principal, validate_name
from services.kit.config import ConfigError, env_float, env_str
from services.kit.errors import FieldInvalid, Unauthenticated

ALGORITHMS = ("RS256", "ES256")
"""The signatures accepted: asymmetric only, so the gateway holds no secret that could
sign a token, and `none` and HMAC (whose key a JWKS would publish) are never accepted."""

_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_PRINCIPAL = re.compile(r"[\x21-\x7e]{1,256}")


def looks_like_jwt(credential: str) -> bool:
    """Three base64url segments: what a JWS in compact form looks like (an API key never)."""
    return _JWT.fullmatch(credential) is not None


@dataclass(frozen=True)
class JwtConfig:
    """Which identity provider's tokens the gateway accepts, and how it reads them."""

    jwks: str
    """AGENTRT_JWT_JWKS: the provider's JWKS, an https/http URL or a file path; empty
    (the default) accepts no JWT, only API keys."""
    issuer: str
    """AGENTRT_JWT_ISSUER: the `iss` every token must carry (required with a JWKS)."""
    audience: str
    """AGENTRT_JWT_AUDIENCE: a value the token's `aud` must hold (required with a JWKS)."""
    algorithms: tuple[str, ...]
    """AGENTRT_JWT_ALGORITHMS: comma-separated, of RS256 and ES256 (default both)."""
    leeway_seconds: float
    """AGENTRT_JWT_LEEWAY_SECONDS: clock skew allowed on exp, nbf and iat (default 30)."""
    tenant_claim: str
    """AGENTRT_JWT_TENANT_CLAIM: the claim naming the tenant (default `tenant`); its value
    must be a tenant name (1 to 63 of a-z, 0-9, '-', '_')."""
    principal_claim: str
    """AGENTRT_JWT_PRINCIPAL_CLAIM: the claim naming the principal (default `sub`)."""
    admin_claim: str
    """AGENTRT_JWT_ADMIN_CLAIM: the claim that makes a caller an admin (default empty: no
    token is an admin's)."""
    admin_value: str
    """AGENTRT_JWT_ADMIN_VALUE: the admin claim must equal this, list it, or hold it as a
    space-separated word (as `scope` does); empty: the claim must be JSON `true`."""
    jwks_refresh_seconds: float
    """AGENTRT_JWT_JWKS_REFRESH_SECONDS: how often the JWKS is read again (default 300)."""
    jwks_cooldown_seconds: float
    """AGENTRT_JWT_JWKS_COOLDOWN_SECONDS: a token signed by a key id not in the JWKS makes
    the gateway read it again, at most this often (default 10)."""

    @property
    def enabled(self) -> bool:
        return bool(self.jwks)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JwtConfig:
        jwks = env_str("AGENTRT_JWT_JWKS", "", env)
        issuer = env_str("AGENTRT_JWT_ISSUER", "", env)
        audience = env_str("AGENTRT_JWT_AUDIENCE", "", env)
        if jwks and not (issuer and audience):
            raise ConfigError(
                "AGENTRT_JWT_ISSUER and AGENTRT_JWT_AUDIENCE: both are required with "
                "AGENTRT_JWT_JWKS, so that a token made for another service is refused"
            )
        algorithms = tuple(
            a.strip()
            for a in env_str("AGENTRT_JWT_ALGORITHMS", ",".join(ALGORITHMS), env).split(",")
        )
        unknown = [a for a in algorithms if a not in ALGORITHMS]
        if unknown or not any(algorithms):
            raise ConfigError(
                f"AGENTRT_JWT_ALGORITHMS: each one of {', '.join(ALGORITHMS)}, "
                f"got {', '.join(unknown) or '(none)'}"
            )
        return cls(
            jwks=jwks,
            issuer=issuer,
            audience=audience,
            algorithms=algorithms,
            leeway_seconds=env_float("AGENTRT_JWT_LEEWAY_SECONDS", 30.0, env),
            tenant_claim=env_str("AGENTRT_JWT_TENANT_CLAIM", "tenant", env),
            principal_claim=env_str("AGENTRT_JWT_PRINCIPAL_CLAIM", "sub", env),
            admin_claim=env_str("AGENTRT_JWT_ADMIN_CLAIM", "", env),
            admin_value=env_str("AGENTRT_JWT_ADMIN_VALUE", "", env),
            jwks_refresh_seconds=env_float("AGENTRT_JWT_JWKS_REFRESH_SECONDS", 300.0, env, 1.0),
            jwks_cooldown_seconds=env_float("AGENTRT_JWT_JWKS_COOLDOWN_SECONDS", 10.0, env),
        )


def _invalid(problem: str, message: str) -> Unauthenticated:
    return Unauthenticated(
        f"the token is not valid: {message}",
        ErrorReason.ERROR_REASON_TOKEN_INVALID,
        {"problem": problem},
    )


class TokenVerifier:
    """Turns a JWT into the Principal it speaks for, or refuses it (TOKEN_INVALID)."""

    def __init__(self, config: JwtConfig, keys: KeySet | None = None) -> None:
        self._config = config
        self._keys = keys or KeySet(
            jwks_fetcher(config.jwks),
            refresh_seconds=config.jwks_refresh_seconds,
            cooldown_seconds=config.jwks_cooldown_seconds,
        )

    async def authenticate(self, token: str) -> Principal:
        """The caller the token names. Unauthenticated(TOKEN_INVALID) with the reason in
        the message for a malformed, unsigned, badly signed, expired, not yet valid,
        foreign (issuer, audience) token or one without a valid tenant or principal;
        Unavailable when the JWKS has never been readable."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise _invalid("malformed", "it is not a JWT") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm.lower() == "none":
            raise _invalid("unsigned", 'it is not signed (alg "none")')
        if algorithm not in self._config.algorithms:
            allowed = ", ".join(self._config.algorithms)
            raise _invalid("algorithm", f"it is signed with {algorithm}; accepted: {allowed}")
        kid = header.get("kid", "")
        key = await self._keys.key(kid if isinstance(kid, str) else "")
        if key is None:
            raise _invalid("unknown_key", f"it is signed by key {kid!r}, not in the JWKS")
        claims = self._verified_claims(token, key, algorithm)
        return self._principal(claims, kid if isinstance(kid, str) else "")

    def _verified_claims(self, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        config = self._config
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("expired", "it has expired") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("not_yet_valid", "it is not valid yet (nbf or iat)") from None
        except jwt.InvalidIssuerError:
            raise _invalid("issuer", f"it was not issued by {config.issuer}") from None
        except jwt.InvalidAudienceError:
            raise _invalid("audience", f"it is not meant for {config.audience}") from None
        except jwt.MissingRequiredClaimError as error:
            raise _invalid("missing_claim", f"it has no {error.claim} claim") from None
        except (jwt.InvalidSignatureError, jwt.InvalidKeyError, jwt.InvalidAlgorithmError):
            raise _invalid("signature", "its signature does not verify") from None
        except jwt.InvalidTokenError as error:
            raise _invalid("malformed", str(error)) from None
        return claims

    def _principal(self, claims: Mapping[str, Any], kid: str) -> Principal:
        config = self._config
        tenant = claims.get(config.tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise _invalid("tenant", f"it has no {config.tenant_claim} claim naming a tenant")
        try:
            validate_name(config.tenant_claim, tenant)
        except FieldInvalid:
            raise _invalid(
                "tenant", f"its {config.tenant_claim} claim is not a tenant name"
            ) from None
        principal = claims.get(config.principal_claim)
        if not isinstance(principal, str) or not _PRINCIPAL.fullmatch(principal):
            raise _invalid(
                "principal",
                f"its {config.principal_claim} claim is not 1 to 256 printable characters",
            )
        return Principal(tenant, principal, f"jwt:{kid}" if kid else "jwt", self._is_admin(claims))

    def _is_admin(self, claims: Mapping[str, Any]) -> bool:
        config = self._config
        if not config.admin_claim:
            return False
        value = claims.get(config.admin_claim)
        if not config.admin_value:
            return value is True
        if isinstance(value, str):
            return config.admin_value in value.split(" ")
        if isinstance(value, list):
            return config.admin_value in value
        return False
