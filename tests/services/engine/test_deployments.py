"""The engine's configuration file: deployments, aliases, breaker settings, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.engine.breaker import BreakerSettings
from services.engine.deployments import RouteTarget, load_routing
from services.engine.server import EngineConfig
from services.kit.config import ConfigError

FILE = """
deployments:
  - name: east
    provider: openai
    base_url: http://127.0.0.1:9/v1
    api_key_env: EAST_KEY
    models: [gpt-4o-mini]
    timeout_seconds: 5
  - name: claude
    provider: anthropic
    base_url: http://127.0.0.1:9/v1
    models: [claude-haiku]
models:
  fast:
    - {deployment: east, model: gpt-4o-mini, weight: 3}
    - {deployment: claude, model: claude-haiku, priority: 1}
breaker: {failure_threshold: 2, cooldown_seconds: 10}
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "engine.yaml"
    path.write_text(text)
    return str(path)


def test_a_file_declares_deployments_aliases_and_breakers(tmp_path: Path) -> None:
    env = {"AGENTRT_ENGINE_CONFIG": write(tmp_path, FILE), "EAST_KEY": "sk-east"}
    config = EngineConfig.from_env(env)

    east, claude = config.routing.deployments
    assert (east.name, east.provider, east.api_key, east.models) == (
        "east",
        "openai",
        "sk-east",
        ("gpt-4o-mini",),
    )
    assert "sk-east" not in repr(config)
    assert (claude.provider, claude.api_key) == ("anthropic", "")
    assert config.routing.aliases == {
        "fast": (
            RouteTarget("east", "gpt-4o-mini", priority=0, weight=3),
            RouteTarget("claude", "claude-haiku", priority=1, weight=1),
        )
    }
    assert config.routing.breaker == BreakerSettings(failure_threshold=2, cooldown_seconds=10)
    assert [p.name for p in config.providers()] == ["local", "east", "claude"]


def test_the_openai_variables_remain_a_one_deployment_shorthand(tmp_path: Path) -> None:
    env = {
        "AGENTRT_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "AGENTRT_ENGINE_CONFIG": write(tmp_path, FILE),
        "EAST_KEY": "k",
    }
    assert [p.name for p in EngineConfig.from_env(env).providers()] == [
        "local",
        "openai",
        "east",
        "claude",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("deployments: [{name: a, provider: gemini, base_url: http://x}]", "openai or anthropic"),
        ("deployments: [{name: a, provider: openai}]", "base_url is required"),
        (
            "deployments: [{name: a, provider: openai, base_url: http://x, api_key_env: NOPE}]",
            "NOPE named by api_key_env is not set",
        ),
        ("deployments: [{name: a, provider: anthropic, base_url: http://x}]", "list its models"),
        (
            "deployments: [{name: a, provider: openai, base_url: http://x},"
            " {name: a, provider: openai, base_url: http://y}]",
            "unique",
        ),
        ("models: {fast: [{deployment: ghost, model: m}]}", "unknown deployment 'ghost'"),
        (
            "deployments: [{name: a, provider: openai, base_url: http://x}]\n"
            "models: {fast: [{deployment: a, model: m, weight: 0}]}",
            "weight must be at least 1",
        ),
        ("breaker: {failure_threshold: 0}", "failure_threshold"),
        ("breaker: {threshold: 3}", "unknown keys"),
        ("deployments: [", "not valid YAML"),
        ("- just a list", "must hold a mapping"),
    ],
)
def test_a_wrong_file_is_a_clear_config_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="AGENTRT_ENGINE_CONFIG") as error:
        load_routing(write(tmp_path, text), {})
    assert message in str(error.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        EngineConfig.from_env({"AGENTRT_ENGINE_CONFIG": str(tmp_path / "nope.yaml")})


def test_a_deployment_may_not_take_a_built_in_name(tmp_path: Path) -> None:
    text = "deployments: [{name: openai, provider: openai, base_url: http://x}]"
    env = {"AGENTRT_ENGINE_CONFIG": write(tmp_path, text)}
    assert [d.name for d in EngineConfig.from_env(env).routing.deployments] == ["openai"]

    with pytest.raises(ConfigError, match="taken by"):
        EngineConfig.from_env({**env, "AGENTRT_OPENAI_BASE_URL": "http://y/v1"})
    local = "deployments: [{name: local, provider: openai, base_url: http://x}]"
    with pytest.raises(ConfigError, match=r"\['local'\]"):
        EngineConfig.from_env({"AGENTRT_ENGINE_CONFIG": write(tmp_path, local)})
