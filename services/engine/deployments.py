"""The engine's deployments, model aliases and breaker settings, read from a YAML file.

```yaml
deployments:
  - name: openai-east            # unique; what attempts, breakers and ListModels show
    provider: openai             # openai (any OpenAI-compatible server) or anthropic
    base_url: https://api.openai.com/v1
    api_key_env: OPENAI_API_KEY  # the key is read from this variable, never from the file
    models: [gpt-4o-mini]        # empty: ask the server (openai only)
    timeout_seconds: 60
models:                          # aliases: tried by priority, equals shared by weight
  fast:
    - {deployment: openai-east, model: gpt-4o-mini, weight: 3}
    - {deployment: openai-west, model: gpt-4o-mini, weight: 1}
    - {deployment: claude, model: claude-3-5-haiku-latest, priority: 1}
breaker: {failure_threshold: 5, cooldown_seconds: 30, probe_seconds: 60}
```
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from services.engine.breaker import BreakerSettings
from services.engine.providers.anthropic import AnthropicConfig, AnthropicProvider
from services.engine.providers.base import Provider
from services.engine.providers.openai_compat import OpenAICompatConfig, OpenAICompatProvider
from services.kit.config import ConfigError

ProviderKind = Literal["openai", "anthropic"]


@dataclass(frozen=True)
class Deployment:
    """One named endpoint serving models: an OpenAI-compatible server or Anthropic's API."""

    name: str
    provider: ProviderKind
    base_url: str
    api_key: str = field(repr=False)
    """Read from the variable the file names in `api_key_env`; kept out of repr."""
    models: tuple[str, ...] = ()
    timeout_seconds: float = 60.0

    def build(self) -> Provider:
        if self.provider == "anthropic":
            return AnthropicProvider(
                AnthropicConfig(
                    base_url=self.base_url,
                    api_key=self.api_key,
                    models=self.models,
                    timeout_seconds=self.timeout_seconds,
                    name=self.name,
                )
            )
        return OpenAICompatProvider(
            OpenAICompatConfig(
                base_url=self.base_url,
                api_key=self.api_key,
                models=self.models,
                timeout_seconds=self.timeout_seconds,
                name=self.name,
            )
        )


@dataclass(frozen=True)
class RouteTarget:
    """One deployment an alias routes to."""

    deployment: str
    model: str
    """The model id the deployment knows."""
    priority: int = 0
    """Lower is tried first; targets of one priority share calls by weight."""
    weight: int = 1


@dataclass(frozen=True)
class RoutingConfig:
    """Everything the engine's configuration file declares."""

    deployments: tuple[Deployment, ...] = ()
    aliases: Mapping[str, tuple[RouteTarget, ...]] | None = None
    breaker: BreakerSettings = field(default_factory=BreakerSettings)


def load_routing(path: str, env: Mapping[str, str] | None = None) -> RoutingConfig:
    """Reads the file; ConfigError names the file and the entry that is wrong."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"AGENTRT_ENGINE_CONFIG: cannot read {path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"AGENTRT_ENGINE_CONFIG: {path} is not valid YAML: {error}") from None
    try:
        return parse_routing(raw or {}, os.environ if env is None else env)
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"AGENTRT_ENGINE_CONFIG ({path}): {error}") from None


def parse_routing(raw: Any, env: Mapping[str, str]) -> RoutingConfig:
    """The configuration from the file's parsed YAML; ValueError says what is wrong."""
    if not isinstance(raw, Mapping):
        raise ValueError("the file must hold a mapping with deployments, models, breaker")
    _only(raw, {"deployments", "models", "breaker"}, "the file")
    deployments = tuple(
        _deployment(entry, env, i) for i, entry in enumerate(raw.get("deployments") or [])
    )
    names = [d.name for d in deployments]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"deployment names must be unique, repeated: {repeated}")
    aliases: dict[str, tuple[RouteTarget, ...]] = {}
    for alias, targets in (raw.get("models") or {}).items():
        if not isinstance(targets, list) or not targets:
            raise ValueError(f"models.{alias}: expected a non-empty list of deployments")
        aliases[str(alias)] = tuple(
            _target(t, f"models.{alias}[{i}]", names) for i, t in enumerate(targets)
        )
    breaker = raw.get("breaker") or {}
    _only(breaker, {"failure_threshold", "cooldown_seconds", "probe_seconds"}, "breaker")
    return RoutingConfig(deployments, aliases, BreakerSettings(**breaker))


def _deployment(entry: Any, env: Mapping[str, str], index: int) -> Deployment:
    where = f"deployments[{index}]"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    fields = {"name", "provider", "base_url", "api_key_env", "models", "timeout_seconds"}
    _only(entry, fields, where)
    for required in ("name", "provider", "base_url"):
        if not entry.get(required):
            raise ValueError(f"{where}: {required} is required")
    provider = entry["provider"]
    if provider not in ("openai", "anthropic"):
        raise ValueError(f"{where}: provider must be openai or anthropic, got {provider!r}")
    key_variable = entry.get("api_key_env", "")
    api_key = env.get(key_variable, "") if key_variable else ""
    if key_variable and not api_key:
        raise ValueError(f"{where}: the variable {key_variable} named by api_key_env is not set")
    models = entry.get("models") or []
    if provider == "anthropic" and not models:
        raise ValueError(f"{where}: an anthropic deployment must list its models")
    return Deployment(
        name=str(entry["name"]),
        provider=provider,
        base_url=str(entry["base_url"]),
        api_key=api_key,
        models=tuple(str(m) for m in models),
        timeout_seconds=float(entry.get("timeout_seconds", 60.0)),
    )


def _target(entry: Any, where: str, deployments: list[str]) -> RouteTarget:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a mapping with deployment and model")
    _only(entry, {"deployment", "model", "priority", "weight"}, where)
    if entry.get("deployment") not in deployments:
        raise ValueError(f"{where}: unknown deployment {entry.get('deployment')!r}")
    if not entry.get("model"):
        raise ValueError(f"{where}: model is required")
    weight = int(entry.get("weight", 1))
    if weight < 1:
        raise ValueError(f"{where}: weight must be at least 1, got {weight}")
    return RouteTarget(
        str(entry["deployment"]), str(entry["model"]), int(entry.get("priority", 0)), weight
    )


def _only(entry: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected some of {sorted(allowed)}")
