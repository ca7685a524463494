"""The replay service in a whole system: a run with a tool call and an approval is
recorded, exported, imported into a fresh system and played back with the same events;
re-executed against its recorded outputs, then after a policy change, then live."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agentrt.client import Client
from agentrt.common.v1 import common_pb2
from agentrt.errors import InvalidArgumentError, NotFoundError
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2
from agentrt.replay.v1 import replay_pb2

from services.dev import LocalSystem, local_system
from services.kit.version import RUNTIME_VERSION
from services.replay import files

E = common_pb2
R = replay_pb2
WAIT = 20.0


def approvals(verdict: policy_pb2.Verdict.ValueType) -> policy_pb2.PolicySet:
    rule = policy_pb2.Rule(
        id="calc", tool=policy_pb2.ToolRule(patterns=["calculator"], verdict=verdict)
    )
    return policy_pb2.PolicySet(rules=[rule])


async def complete_recording(client: Client, job: str) -> R.Recording:
    """The job's recording, with its events, once it is complete."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                found = await client.recordings.get(job, events=True)
                if found.state == R.Recording.STATE_COMPLETE:
                    return found
            except NotFoundError:
                pass
            await asyncio.sleep(0.05)


async def run_with_approval(client: Client) -> jobs_pb2.Job:
    """A job whose calculator call a person approves (the policy set "approvals")."""
    await client.create_policy_set("approvals", approvals(policy_pb2.VERDICT_REQUIRE_APPROVAL))
    spec = jobs_pb2.JobSpec(
        prompt='call calculator {"expression": "6 * 7"}',
        model="local",
        tools=[E.ToolSpec(name="calculator")],
        policy=E.PolicyRef(name="approvals"),
    )
    job = await client.execute_spec(spec)
    async with asyncio.timeout(WAIT):
        async for event in client.events(job):
            if event.type == E.EVENT_TYPE_JOB_WAITING:
                break
    actions, _ = await client.list_actions(job, states=[jobs_pb2.Action.STATE_PENDING])
    await client.approve(actions[0].name, reason="looks right")
    return await client.result(job)


@pytest.fixture
async def client(system: LocalSystem) -> AsyncIterator[Client]:
    async with Client(system.endpoint, system.api_key) as connected:
        yield connected


async def test_a_run_with_an_approval_moves_to_a_fresh_system_and_plays_back_the_same(
    client: Client, tmp_path: Path
) -> None:
    job = await run_with_approval(client)
    assert job.state == E.JOB_STATE_SUCCEEDED and "42" in job.result.output
    recording = await complete_recording(client, job.name)
    types = [event.type for event in recording.events]
    assert E.EVENT_TYPE_ACTION_REQUIRED in types and E.EVENT_TYPE_ACTION_RESOLVED in types
    assert E.EVENT_TYPE_TOOL_CALLED in types
    assert recording.event_count == len(recording.events)
    assert recording.metadata.spec.policy.name == "approvals"
    assert recording.job_state == E.JOB_STATE_SUCCEEDED
    # The worker said which agentrt it runs; both job.started events say so.
    started = [e for e in recording.events if e.type == E.EVENT_TYPE_JOB_STARTED]
    assert len(started) == 2
    assert {e.attempt.runtime_version for e in started} == {RUNTIME_VERSION}
    assert recording.metadata.runtime_version == RUNTIME_VERSION != "unknown"
    # Each turn says which model answered, as the engine reported it; the metadata keeps
    # it under the model the spec asked for.
    turns = [e.turn_completed for e in recording.events if e.type == E.EVENT_TYPE_TURN_COMPLETED]
    assert len(turns) == 2
    assert {turn.model for turn in turns} == {"local"}
    assert dict(recording.metadata.model_versions) == {"local": "local"}

    exported = b"".join([piece async for piece in client.recordings.export(job.name, gzip=True)])
    assert exported.startswith(files.GZIP_MAGIC)
    async with (
        local_system(tmp_path / "fresh") as fresh,
        Client(fresh.endpoint, fresh.api_key) as other,
    ):
        imported = await other.recordings.import_file(exported, recording_id="from-staging")
        assert imported.name == "recordings/from-staging"
        assert imported.origin == R.Recording.ORIGIN_IMPORTED
        assert imported.state == R.Recording.STATE_COMPLETE
        assert imported.event_count == recording.event_count
        assert imported.metadata == recording.metadata
        played = [event async for event in other.recordings.play(imported.name)]
    assert played == list(recording.events)


async def test_reexecution_finds_no_divergence_then_the_denied_call(client: Client) -> None:
    job = await run_with_approval(client)
    recording = await complete_recording(client, job.name)

    same = await client.recordings.reexecute(recording.name)
    assert same.identical, same.divergences
    assert same.events_compared >= 5
    assert same.job_state == E.JOB_STATE_SUCCEEDED and same.output == job.result.output

    current = await client.get_policy_set("approvals")
    current.rules[0].tool.verdict = policy_pb2.VERDICT_DENY
    await client.update_policy_set(current, ["rules"])
    changed = await client.recordings.reexecute(recording.name)
    assert not changed.identical
    [first] = changed.divergences
    required = next(e for e in recording.events if e.type == E.EVENT_TYPE_ACTION_REQUIRED)
    assert first.position == list(recording.events).index(required) + 1
    assert first.kind == R.Divergence.KIND_TYPE
    assert first.recorded == required
    assert first.reexecuted.tool_called.call.name == "calculator"
    assert "denied by policy" in first.description


async def test_a_live_what_if_with_another_model_runs_and_reports_its_usage(
    client: Client,
) -> None:
    job = await run_with_approval(client)
    recording = await complete_recording(client, job.name)
    diff = await client.recordings.reexecute(
        recording.name, live=True, model="local-slow", timeout=WAIT
    )
    assert diff.job and diff.job != job.name
    assert diff.job_state == E.JOB_STATE_SUCCEEDED
    assert diff.usage.model_calls >= 2 and diff.usage.total_tokens > 0
    what_if = await client.get(diff.job)
    assert what_if.spec.model == "local-slow"
    assert what_if.spec.labels["agentrt.dev/what-if"] == recording.name.removeprefix("recordings/")


async def test_a_what_if_job_is_charged_to_no_budget_and_callers_cannot_make_one(
    client: Client,
) -> None:
    job = await run_with_approval(client)
    recording = await complete_recording(client, job.name)
    await client.set_budget("tiny", tenant="dev", tokens=1)
    since = datetime.now(UTC) - timedelta(days=1)
    spent = await client.usage_report(start=since)
    refused = await client.run("hello", model="local")
    assert refused.state == E.JOB_STATE_FAILED
    assert refused.failure.reason == E.ERROR_REASON_BUDGET_EXCEEDED

    diff = await client.recordings.reexecute(recording.name, live=True, timeout=WAIT)
    assert diff.job_state == E.JOB_STATE_SUCCEEDED and diff.usage.total_tokens > 0
    assert await client.usage_report(start=since) == spent

    spec = jobs_pb2.JobSpec(prompt="hello", model="local", labels={"agentrt.dev/what-if": "x"})
    with pytest.raises(InvalidArgumentError, match=r"agentrt\.dev/what-if"):
        await client.execute_spec(spec)


async def test_under_dev_recordings_survive_a_restart_and_recording_goes_on(
    tmp_path: Path,
) -> None:
    data = tmp_path / "dev"
    async with local_system(data) as first, Client(first.endpoint, first.api_key) as client:
        before = await client.run("hello", model="local")
        recorded = await complete_recording(client, before.name)
    async with local_system(data) as second, Client(second.endpoint, second.api_key) as client:
        after = await client.run("hello again", model="local")
        await complete_recording(client, after.name)
        assert await client.recordings.get(before.name, events=True) == recorded
        listed = await client.recordings.list()
        assert {found.job for found in listed} == {before.name, after.name}
