"""End to end: `agentrt dev` serves the OpenAI-compatible endpoint with no configuration,
prints where, and the dev key works there, from the official `openai` package."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import openai

from tests.e2e.test_dev import dev

__all__ = ["dev"]  # the fixture: `agentrt dev` as a process, no AGENTRT_* but its data dir


def test_dev_prints_the_openai_url_and_the_dev_key_calls_a_model(
    dev: dict[str, str], tmp_path: Path
) -> None:
    deadline = time.monotonic() + 10
    while True:  # printed just after dev.json is written
        printed = (tmp_path / "dev.log").read_text()
        match = re.search(r"OpenAI: +(http://127\.0\.0\.1:\d+/v1)", printed)
        if match or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert match, printed
    key = json.loads((tmp_path / "data" / "dev.json").read_text())["api_key"]

    with openai.OpenAI(base_url=match.group(1), api_key=key, max_retries=0) as client:
        chat = client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "hello"}]
        )
        assert "hello" in (chat.choices[0].message.content or "")
        assert [model.id for model in client.models.list()] == ["local", "local-slow"]
