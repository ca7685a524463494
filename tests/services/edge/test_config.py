"""The edge's configuration: read from the environment, rendered, and accepted by Envoy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from agentrt.cli import main

from services.edge.config import EdgeConfig
from services.edge.envoy import envoy_binary, render
from services.kit.config import ConfigError
from tests.certificates import self_signed


def validate(config: EdgeConfig, tmp_path: Path) -> str:
    """Envoy's own verdict on the rendered configuration (`--mode validate`)."""
    rendered = tmp_path / "envoy.yaml"
    rendered.write_text(render(config))
    checked = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(rendered), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return rendered.read_text()


def test_the_defaults_render_a_configuration_envoy_accepts(tmp_path: Path) -> None:
    text = validate(EdgeConfig.from_env({}), tmp_path)
    assert '"transport_socket": null' not in text  # placeholders are JSON, not Python
    assert "transport_socket: null" in text
    assert "max_request_bytes: 4194304" in text


def test_every_setting_reaches_the_configuration(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = EdgeConfig.from_env(
        {
            "AGENTRT_EDGE_LISTEN_ADDRESS": "0.0.0.0:8443",
            "AGENTRT_EDGE_ADMIN_ADDRESS": "127.0.0.1:9902",
            "AGENTRT_GATEWAY_ADDRESS": "gateway.agentrt.svc:50051",
            "AGENTRT_EDGE_MAX_REQUEST_BYTES": "2048",
            "AGENTRT_EDGE_UNARY_TIMEOUT_SECONDS": "5",
            "AGENTRT_EDGE_STREAM_TIMEOUT_SECONDS": "7200",
            "AGENTRT_EDGE_TLS_CERT_FILE": str(cert),
            "AGENTRT_EDGE_TLS_KEY_FILE": str(key),
            "AGENTRT_EDGE_CORS_ORIGINS": "https://app.example, *",
        }
    )
    text = validate(config, tmp_path)
    for expected in (
        '{address: "0.0.0.0", port_value: 8443}',
        '{address: "gateway.agentrt.svc", port_value: 50051}',
        "max_request_bytes: 2048",
        'timeout: "5.000s"',
        'timeout: "7200.000s"',
        json.dumps(str(cert)),
        '[{"exact": "https://app.example"}, {"safe_regex": {"regex": ".*"}}]',
    ):
        assert expected in text
    assert "transport_socket: null" not in text


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"AGENTRT_EDGE_TLS_CERT_FILE": "/etc/hostname"}, "AGENTRT_EDGE_TLS_CERT_FILE"),
        ({"AGENTRT_EDGE_MAX_REQUEST_BYTES": "10"}, "AGENTRT_EDGE_MAX_REQUEST_BYTES"),
        ({"AGENTRT_EDGE_LISTEN_ADDRESS": "8080"}, "AGENTRT_EDGE_LISTEN_ADDRESS"),
        ({"AGENTRT_EDGE_LOG_LEVEL": "loud"}, "AGENTRT_EDGE_LOG_LEVEL"),
    ],
)
def test_a_wrong_setting_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        EdgeConfig.from_env(env)


def test_files_are_checked_where_envoy_runs_not_where_the_configuration_is_printed(
    tmp_path: Path,
) -> None:
    elsewhere = {
        "AGENTRT_EDGE_TLS_CERT_FILE": "/etc/envoy/tls/tls.crt",
        "AGENTRT_EDGE_TLS_KEY_FILE": "/etc/envoy/tls/tls.key",
        "AGENTRT_EDGE_DESCRIPTORS": "/etc/envoy/agentrt.binpb",
    }
    config = EdgeConfig.from_env(elsewhere)
    assert '"/etc/envoy/agentrt.binpb"' in render(config)
    with pytest.raises(ConfigError, match="AGENTRT_EDGE_TLS_CERT_FILE"):
        config.check_files()
    cert, key = self_signed(tmp_path)
    local = EdgeConfig.from_env(
        {
            **elsewhere,
            "AGENTRT_EDGE_TLS_CERT_FILE": str(cert),
            "AGENTRT_EDGE_TLS_KEY_FILE": str(key),
        }
    )
    with pytest.raises(ConfigError, match="AGENTRT_EDGE_DESCRIPTORS"):
        local.check_files()
    EdgeConfig.from_env({}).check_files()  # the committed descriptor set is there


def test_the_cli_prints_the_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGENTRT_GATEWAY_ADDRESS", "gateway.agentrt.svc:50051")
    assert main(["edge", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert '{address: "gateway.agentrt.svc", port_value: 50051}' in printed
    assert "${" not in printed

    monkeypatch.setenv("AGENTRT_EDGE_LOG_LEVEL", "chatty")
    assert main(["edge", "--print-config"]) == 2
    assert "AGENTRT_EDGE_LOG_LEVEL" in capsys.readouterr().err
