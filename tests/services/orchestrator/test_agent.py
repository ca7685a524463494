"""The agent loop's pure parts: resuming a conversation, summing usage, naming deltas."""

from __future__ import annotations

from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2

from services.kit.events.memory import InMemoryEventChannel
from services.orchestrator.agent import (
    TransientEvents,
    add_usage,
    call_usage,
    conversation_from_spec,
    final_answer,
    history_sequence,
    model_call_key,
    model_record_id,
    resume_point,
    tool_record_id,
    transient_event_id,
)

JOB = "jobs/0123456789abcdefghjkmnpqrs"


def message(role: common_pb2.Role.ValueType, content: str) -> common_pb2.Message:
    return common_pb2.Message(role=role, content=content)


def test_first_attempt_starts_from_system_prompt_messages_and_prompt() -> None:
    spec = jobs_pb2.JobSpec(
        system_prompt="be brief",
        messages=[
            message(common_pb2.ROLE_USER, "hello"),
            message(common_pb2.ROLE_ASSISTANT, "hi"),
        ],
        prompt="what now?",
    )
    turn, messages, usage = resume_point(jobs_pb2.JobLease(job=jobs_pb2.Job(spec=spec)))
    assert turn == 0
    assert [(m.role, m.content) for m in messages] == [
        (common_pb2.ROLE_SYSTEM, "be brief"),
        (common_pb2.ROLE_USER, "hello"),
        (common_pb2.ROLE_ASSISTANT, "hi"),
        (common_pb2.ROLE_USER, "what now?"),
    ]
    assert usage == common_pb2.Usage()


def test_empty_system_prompt_and_prompt_add_nothing() -> None:
    spec = jobs_pb2.JobSpec(messages=[message(common_pb2.ROLE_USER, "only this")])
    assert [m.content for m in conversation_from_spec(spec)] == ["only this"]


def test_takeover_resumes_from_the_checkpoint_not_the_spec() -> None:
    checkpointed = [
        message(common_pb2.ROLE_USER, "hello"),
        common_pb2.Message(
            role=common_pb2.ROLE_ASSISTANT,
            tool_calls=[common_pb2.ToolCall(id="c1", name="search", arguments="{}")],
        ),
        common_pb2.Message(role=common_pb2.ROLE_TOOL, content="[]", tool_call_id="c1"),
    ]
    lease = jobs_pb2.JobLease(
        job=jobs_pb2.Job(spec=jobs_pb2.JobSpec(prompt="hello", system_prompt="ignored now")),
        checkpoint=jobs_pb2.Checkpoint(
            turn=1, messages=checkpointed, usage=common_pb2.Usage(input_tokens=7, model_calls=1)
        ),
    )
    turn, messages, usage = resume_point(lease)
    assert turn == 1
    assert messages == checkpointed
    assert usage == common_pb2.Usage(input_tokens=7, model_calls=1)
    usage.input_tokens += 1
    assert lease.checkpoint.usage.input_tokens == 7, "the run's usage must not alias the lease's"
    assert final_answer(turn, messages) is None


def test_a_checkpointed_final_answer_is_not_asked_again() -> None:
    answer = message(common_pb2.ROLE_ASSISTANT, "42")
    assert final_answer(1, [message(common_pb2.ROLE_USER, "q"), answer]) == answer
    # On a first attempt a trailing assistant message is the caller's, to be continued.
    assert final_answer(0, [message(common_pb2.ROLE_USER, "q"), answer]) is None


def test_usage_sums_across_turns_with_exact_cost() -> None:
    first = call_usage(common_pb2.Usage(input_tokens=10, output_tokens=5, cost="0.000100"))
    second = call_usage(
        common_pb2.Usage(input_tokens=20, output_tokens=1, cached_input_tokens=8, cost="0.0002")
    )
    total = add_usage(add_usage(common_pb2.Usage(), first), second)
    assert total == common_pb2.Usage(
        input_tokens=30,
        output_tokens=6,
        cached_input_tokens=8,
        total_tokens=36,
        cost="0.000300",
        model_calls=2,
    )


def test_unknown_cost_stays_empty() -> None:
    total = add_usage(call_usage(common_pb2.Usage(input_tokens=1)), call_usage(common_pb2.Usage()))
    assert total.cost == ""
    assert total.model_calls == 2


def test_call_usage_keeps_a_reported_total() -> None:
    usage = call_usage(common_pb2.Usage(input_tokens=1, output_tokens=1, total_tokens=5))
    assert (usage.total_tokens, usage.model_calls) == (5, 1)


def test_event_ids_and_idempotency_keys() -> None:
    assert history_sequence("") == 0
    assert history_sequence("0123456789abcdefghjkmnpqrs.12") == 12
    assert transient_event_id(JOB, 12, 3) == "0123456789abcdefghjkmnpqrs.12.3"
    assert model_call_key(JOB, 4) == "0123456789abcdefghjkmnpqrs:4:0"


async def test_deltas_are_numbered_after_the_latest_history_event() -> None:
    events = InMemoryEventChannel()
    job = jobs_pb2.Job(name=JOB, tenant="acme", trace_id="ab" * 16, last_event_id=f"{JOB[5:]}.2")
    deltas = TransientEvents(events)
    deltas.start_turn()
    await deltas.publish(job, 1, "Hel")
    await deltas.publish(job, 1, "lo")
    job.last_event_id = f"{JOB[5:]}.3"
    deltas.start_turn()
    await deltas.publish(job, 2, "Bye")
    published = await _published(events)
    assert [e.id for e in published] == [f"{JOB[5:]}.2.1", f"{JOB[5:]}.2.2", f"{JOB[5:]}.3.1"]
    first = published[0]
    assert first.type == common_pb2.EVENT_TYPE_OUTPUT_DELTA
    assert (first.sequence, first.tenant, first.job, first.trace_id) == (2, "acme", JOB, "ab" * 16)
    assert first.job_state == common_pb2.JOB_STATE_RUNNING
    assert [(e.output_delta.turn, e.output_delta.text) for e in published] == [
        (1, "Hel"),
        (1, "lo"),
        (2, "Bye"),
    ]
    await events.close()


async def test_a_retried_call_does_not_repeat_text_already_sent() -> None:
    events = InMemoryEventChannel()
    job = jobs_pb2.Job(name=JOB, last_event_id=f"{JOB[5:]}.2")
    deltas = TransientEvents(events)
    deltas.start_turn()
    await deltas.publish(job, 1, "Hello ")
    deltas.restart_attempt()
    for piece in ("Hel", "lo ", "world"):
        await deltas.publish(job, 1, piece)
    assert deltas.text == "Hello world"
    published = await _published(events)
    assert [e.output_delta.text for e in published] == ["Hello ", "world"]
    assert [e.id for e in published] == [f"{JOB[5:]}.2.1", f"{JOB[5:]}.2.2"]
    await events.close()


async def _published(events: InMemoryEventChannel) -> list[common_pb2.RuntimeEvent]:
    """Every event of the job published so far: a marker is published last and read up to."""
    marker = common_pb2.RuntimeEvent(id=f"{JOB[5:]}.999", job=JOB)
    await events.publish([marker])
    published: list[common_pb2.RuntimeEvent] = []
    async for _, event in events.follow_job(JOB, "0"):
        if event.id == marker.id:
            return published
        published.append(event)
    raise AssertionError("the marker was not delivered")


def test_ledger_record_ids_are_stable_and_safe() -> None:
    assert model_record_id(JOB, 3) == "0123456789abcdefghjkmnpqrs.3.model"
    assert tool_record_id(JOB, 2, "call_0") == "0123456789abcdefghjkmnpqrs.2.tool.call_0"
    assert tool_record_id(JOB, 3, "call_0") != tool_record_id(JOB, 2, "call_0")
    odd = tool_record_id(JOB, 2, "call:x/y z")
    assert odd == tool_record_id(JOB, 2, "call:x/y z")
    assert odd.startswith("0123456789abcdefghjkmnpqrs.2.tool.") and ":" not in odd
