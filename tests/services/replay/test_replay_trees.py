"""A workflow's tree in the replay service: one recording holds the root and every child,
moves to a fresh system and plays back the same; each agent job of it is re-executed."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from agentrt import workflows as wf
from agentrt.client import Client
from agentrt.common.v1 import common_pb2 as E
from agentrt.errors import FailedPreconditionError, NotFoundError
from agentrt.jobs.v1 import jobs_pb2
from agentrt.policy.v1 import policy_pb2
from agentrt.replay.v1 import replay_pb2 as R

from services.dev import LocalSystem, local_system
from services.kit.events import is_transient
from tests.services.replay.test_replay_system import WAIT, complete_recording
from tests.workflows.trees import children_of, history

CALCULATE = 'call calculator {"expression": "6 * 7"}'


async def parallel_with_an_approval(system: LocalSystem, client: Client) -> jobs_pb2.Job:
    """A parallel of three agents where `calc` waits on an approval; approved, it ends."""
    rule = policy_pb2.Rule(
        id="calc",
        tool=policy_pb2.ToolRule(
            patterns=["calculator"], verdict=policy_pb2.VERDICT_REQUIRE_APPROVAL
        ),
    )
    await client.create_policy_set("approvals", policy_pb2.PolicySet(rules=[rule]))
    calc = wf.agent(tools=["calculator"])
    calc.policy.name = "approvals"
    spec = wf.workflow_spec(
        CALCULATE,
        wf.parallel("calc", "one", "two"),
        agents={"calc": calc, "one": wf.agent("reply: one"), "two": wf.agent("reply: two")},
        model="local",
    )
    root = await client.execute_spec(spec)
    async with asyncio.timeout(WAIT):
        while True:
            children = {c.spec.node: c for c in await children_of(system, root.name)}
            if "calc" in children and children["calc"].state == E.JOB_STATE_WAITING:
                break
            await asyncio.sleep(0.05)
    actions, _ = await client.list_actions(
        children["calc"].name, states=[jobs_pb2.Action.State.STATE_PENDING]
    )
    [action] = actions
    await client.resolve_action({"approved": True}, name=action.name)
    done = await client.result(root.name)
    assert done.state == E.JOB_STATE_SUCCEEDED, done.failure
    return done


async def test_a_tree_is_one_recording_that_moves_and_plays_back_the_same(
    system: LocalSystem, tmp_path: Path
) -> None:
    await a_tree_is_one_recording(system, tmp_path)


@pytest.mark.integration
async def test_a_tree_is_one_recording_on_postgres_and_redis(
    pg_system: LocalSystem, tmp_path: Path
) -> None:
    await a_tree_is_one_recording(pg_system, tmp_path)


async def a_tree_is_one_recording(system: LocalSystem, tmp_path: Path) -> None:
    """Root and children in one recording, each job's whole history, exported, imported
    into a fresh system and played back the same."""
    async with Client(system.endpoint, system.api_key) as client:
        root = await parallel_with_an_approval(system, client)
        recording = await complete_recording(client, root.name)
        children = await children_of(system, root.name)
        assert sorted(c.spec.node for c in children) == ["calc", "one", "two"]

        # Every job of the tree, root and children, has all of its history recorded.
        counts = Counter(event.job for event in recording.events)
        assert set(counts) == {root.name, *(c.name for c in children)}
        for job in [root, *children]:
            kept = [e for e in await history(system, job.name) if not is_transient(e)]
            mine = [e for e in recording.events if e.job == job.name]
            assert counts[job.name] == len(kept), job.spec.node
            assert [e.sequence for e in mine] == [e.sequence for e in kept]
        assert recording.event_count == len(recording.events) == sum(counts.values())
        calc = next(c for c in children if c.spec.node == "calc")
        calc_types = [e.type for e in recording.events if e.job == calc.name]
        assert E.EVENT_TYPE_ACTION_REQUIRED in calc_types
        assert E.EVENT_TYPE_ACTION_RESOLVED in calc_types
        assert E.EVENT_TYPE_TOOL_CALLED in calc_types
        root_types = [e.type for e in recording.events if e.job == root.name]
        assert root_types.count(E.EVENT_TYPE_CHILD_CREATED) == 3
        # Every turn of an agent job says which model answered it; the workflow's own
        # turn (its answer, made of its children's) was answered by none.
        turns = [e for e in recording.events if e.type == E.EVENT_TYPE_TURN_COMPLETED]
        assert {e.job for e in turns} == {root.name, *(c.name for c in children)}
        assert {e.turn_completed.model for e in turns if e.job != root.name} == {"local"}
        assert {e.turn_completed.model for e in turns if e.job == root.name} == {""}
        assert dict(recording.metadata.model_versions) == {"local": "local"}
        # The children's events name the root as theirs: no recording of their own.
        assert {e.root_job for e in recording.events} == {root.name}
        for child in children:
            with pytest.raises(NotFoundError):
                await client.recordings.get(child.name.removeprefix("jobs/"))

        exported = b"".join([piece async for piece in client.recordings.export(root.name)])
    async with (
        local_system(tmp_path / "fresh") as fresh,
        Client(fresh.endpoint, fresh.api_key) as other,
    ):
        imported = await other.recordings.import_file(exported, recording_id="a-tree")
        assert imported.state == R.Recording.STATE_COMPLETE
        assert imported.event_count == recording.event_count
        assert imported.metadata == recording.metadata
        played = [event async for event in other.recordings.play(imported.name)]
    assert played == list(recording.events)


async def test_each_agent_job_of_a_tree_is_reexecuted_against_its_own_outputs(
    system: LocalSystem,
) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        root = await parallel_with_an_approval(system, client)
        recording = await complete_recording(client, root.name)
        children = {c.spec.node: c for c in await children_of(system, root.name)}
        same = await client.recordings.reexecute(recording.name)
        assert same.identical, same.divergences
        # The three agents' turns, tool call, action and ends; not the workflow's own.
        agents = {c.name for c in children.values()}
        expected = [
            e
            for e in recording.events
            if e.job in agents
            and e.type
            in (
                E.EVENT_TYPE_TURN_COMPLETED,
                E.EVENT_TYPE_TOOL_CALLED,
                E.EVENT_TYPE_ACTION_REQUIRED,
                E.EVENT_TYPE_JOB_SUCCEEDED,
            )
        ]
        assert same.events_compared == len(expected) >= 9

        current = await client.get_policy_set("approvals")
        current.rules[0].tool.verdict = policy_pb2.VERDICT_DENY
        await client.update_policy_set(current, ["rules"])
        changed = await client.recordings.reexecute(recording.name)
    assert not changed.identical
    [first] = changed.divergences
    required = next(e for e in recording.events if e.type == E.EVENT_TYPE_ACTION_REQUIRED)
    assert required.job == children["calc"].name
    assert first.position == list(recording.events).index(required) + 1
    assert first.recorded == required
    assert first.reexecuted.job == children["calc"].name
    assert first.reexecuted.tool_called.call.name == "calculator"
    assert "denied by policy" in first.description


async def test_a_tree_is_refused_live_and_once_imported(
    system: LocalSystem, tmp_path: Path
) -> None:
    async with Client(system.endpoint, system.api_key) as client:
        root = await parallel_with_an_approval(system, client)
        recording = await complete_recording(client, root.name)
        with pytest.raises(FailedPreconditionError) as refused:
            await client.recordings.reexecute(recording.name, live=True, timeout=WAIT)
        assert refused.value.reason == "RECORDING_NOT_REEXECUTABLE"
        assert refused.value.metadata == {"name": recording.name, "jobs": "4"}
        assert "live what-if" in refused.value.message
        jobs, _ = await client.list(page_size=100)
        assert not [job for job in jobs if "agentrt.dev/what-if" in job.spec.labels]
        exported = b"".join([piece async for piece in client.recordings.export(root.name)])
    async with (
        local_system(tmp_path / "fresh") as fresh,
        Client(fresh.endpoint, fresh.api_key) as other,
    ):
        imported = await other.recordings.import_file(exported, recording_id="a-tree")
        with pytest.raises(FailedPreconditionError) as refused:
            await other.recordings.reexecute(imported.name)
    assert refused.value.reason == "RECORDING_NOT_REEXECUTABLE"
    assert "tree of 4 jobs" in refused.value.message
