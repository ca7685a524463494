"""Where the CLI finds the gateway and its key: flags, then environment, then dev.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agentrt.cli.target import Target, TargetError, resolve_target


def write_dev_state(
    directory: Path, endpoint: str = "127.0.0.1:50051", key: str = "agk_dev"
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    state_file = directory / "dev.json"
    state_file.write_text(json.dumps({"endpoint": endpoint, "api_key": key}))
    return state_file


def test_flags_win_over_the_environment_and_dev_json(tmp_path: Path) -> None:
    write_dev_state(tmp_path)
    env = {"AGENTRT_DATA_DIR": str(tmp_path), "AGENTRT_ENDPOINT": "env:1", "AGENTRT_API_KEY": "k"}
    assert resolve_target("flag:2", "agk_flag", env) == Target("flag:2", "agk_flag")


def test_the_environment_wins_over_dev_json(tmp_path: Path) -> None:
    write_dev_state(tmp_path)
    env = {"AGENTRT_DATA_DIR": str(tmp_path), "AGENTRT_ENDPOINT": "env:1", "AGENTRT_API_KEY": "k"}
    assert resolve_target(None, None, env) == Target("env:1", "k")


def test_dev_json_supplies_what_flags_and_environment_do_not(tmp_path: Path) -> None:
    state_file = write_dev_state(tmp_path / "data")
    env = {"AGENTRT_DATA_DIR": str(tmp_path / "data")}
    assert resolve_target(None, None, env) == Target("127.0.0.1:50051", "agk_dev", state_file)
    env["AGENTRT_API_KEY"] = "agk_env"
    assert resolve_target(None, None, env) == Target("127.0.0.1:50051", "agk_env", state_file)


def test_dev_json_is_found_in_dot_agentrt_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_dev_state(tmp_path / ".agentrt", endpoint="127.0.0.1:6000")
    monkeypatch.chdir(tmp_path)
    assert resolve_target(None, None, {}).endpoint == "127.0.0.1:6000"


def test_nothing_known_says_how_to_connect_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(TargetError) as raised:
        resolve_target(None, None, {"AGENTRT_DATA_DIR": str(tmp_path)})
    message = str(raised.value)
    assert "\n" not in message
    assert "agentrt dev" in message and "AGENTRT_ENDPOINT" in message
    with pytest.raises(TargetError, match="API key"):
        resolve_target("127.0.0.1:1", None, {"AGENTRT_DATA_DIR": str(tmp_path)})


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"endpoint": "x"}', '{"endpoint": "", "api_key": "k"}']
)
def test_a_damaged_dev_json_is_named_in_the_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "dev.json").write_text(content)
    with pytest.raises(TargetError, match=r"dev\.json"):
        resolve_target(None, None, {"AGENTRT_DATA_DIR": str(tmp_path)})
