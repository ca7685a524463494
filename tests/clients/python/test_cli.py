"""The `agentrt` command line: parsing, and how jobs and their endings are shown."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from agentrt.cli import admin, build_parser, jobs, main
from agentrt.cli.console import Console
from agentrt.cli.render import EVENT_TYPES, event_line, job_table, parse_state
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2

JOB = "jobs/" + "b" * 26


def test_run_takes_the_prompt_options_and_the_connection_flags() -> None:
    args = build_parser().parse_args(
        [
            "run",
            "hi there",
            "--model",
            "m",
            "--max-turns",
            "3",
            "--timeout",
            "2.5",
            "--json",
            "--endpoint",
            "h:1",
            "--api-key",
            "agk_x",
            "--tls",
        ]
    )
    assert args.client_command is jobs.run_job
    assert (args.prompt, args.model, args.max_turns, args.timeout, args.json) == (
        "hi there",
        "m",
        3,
        2.5,
        True,
    )
    assert (args.endpoint, args.api_key, args.tls) == ("h:1", "agk_x", True)


def test_run_defaults_leave_the_choices_to_the_deployment() -> None:
    args = build_parser().parse_args(["run", "hi"])
    assert (args.model, args.max_turns, args.timeout, args.endpoint, args.api_key) == (
        "",
        0,
        None,
        None,
        None,
    )


def test_jobs_commands_accept_a_bare_id_or_a_name() -> None:
    parser = build_parser()
    for command in ("get", "cancel", "watch"):
        assert parser.parse_args(["jobs", command, "b" * 26]).job == JOB
        assert parser.parse_args(["jobs", command, JOB]).job == JOB


def test_jobs_list_parses_states_and_limit() -> None:
    args = build_parser().parse_args(
        ["jobs", "list", "--state", "running", "--state", "JOB_STATE_FAILED", "--limit", "5"]
    )
    assert args.client_command is jobs.list_jobs
    assert args.state == [common_pb2.JOB_STATE_RUNNING, common_pb2.JOB_STATE_FAILED]
    assert args.limit == 5


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "hi", "--max-turns", "-1"],
        ["run", "hi", "--timeout", "0"],
        ["run", "hi", "--timeout", "soon"],
        ["jobs", "list", "--state", "sleeping"],
        ["jobs", "list", "--limit", "0"],
        ["jobs", "get", " "],
        ["jobs"],
        ["keys", "create", "--tenant", "t"],
        ["dev", "--port", "70000"],
    ],
)
def test_bad_usage_exits_2_with_a_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(argv)
    assert raised.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_operator_commands_parse_their_arguments() -> None:
    parser = build_parser()
    dev = parser.parse_args(["dev", "--port", "6000", "--data-dir", "/tmp/x"])
    assert (dev.run, dev.port, dev.data_dir) == (admin.dev, 6000, Path("/tmp/x"))
    assert parser.parse_args(["migrate"]).services == []
    assert parser.parse_args(["migrate", "jobs", "gateway"]).services == ["jobs", "gateway"]
    assert parser.parse_args(["serve", "jobs"]).service == "jobs"
    create = parser.parse_args(["keys", "create", "--tenant", "t", "--principal", "p"])
    assert (create.run, create.tenant, create.principal) == (admin.create_key, "t", "p")
    assert parser.parse_args(["keys", "revoke", "abc"]).key_id == "abc"


def test_a_client_command_without_a_gateway_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGENTRT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("AGENTRT_ENDPOINT", raising=False)
    monkeypatch.delenv("AGENTRT_API_KEY", raising=False)
    assert main(["jobs", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "agentrt dev" in err


def console() -> tuple[Console, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Console(out, err), out, err


def finished(
    state: common_pb2.JobState.ValueType,
    output: str = "",
    failure: common_pb2.Failure | None = None,
) -> jobs_pb2.Job:
    return jobs_pb2.Job(
        name=JOB, state=state, result=jobs_pb2.JobResult(output=output), failure=failure
    )


def test_a_streamed_answer_is_not_printed_twice() -> None:
    shown, out, _ = console()
    shown.stream("Hello")
    assert (
        jobs.report(
            finished(common_pb2.JOB_STATE_SUCCEEDED, "Hello"), "Hello", shown, as_json=False
        )
        == 0
    )
    assert out.getvalue() == "Hello\n"


def test_an_answer_not_streamed_whole_is_printed() -> None:
    shown, out, _ = console()
    shown.stream("Hel")
    jobs.report(finished(common_pb2.JOB_STATE_SUCCEEDED, "Hello"), "Hel", shown, as_json=False)
    assert out.getvalue() == "Hel\nHello\n"


def test_a_failed_job_shows_its_reason_and_exits_1() -> None:
    shown, out, err = console()
    failure = common_pb2.Failure(
        reason=common_pb2.ERROR_REASON_BUDGET_EXCEEDED, message="the token budget ran out"
    )
    job = finished(common_pb2.JOB_STATE_FAILED, failure=failure)
    assert jobs.report(job, "", shown, as_json=False) == 1
    assert out.getvalue() == ""
    assert err.getvalue() == f"{JOB} FAILED: BUDGET_EXCEEDED: the token budget ran out\n"


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (common_pb2.JOB_STATE_SUCCEEDED, 0),
        (common_pb2.JOB_STATE_FAILED, 1),
        (common_pb2.JOB_STATE_CANCELLED, 1),
        (common_pb2.JOB_STATE_TIMED_OUT, 1),
    ],
)
def test_exit_codes_follow_the_final_state(state: common_pb2.JobState.ValueType, code: int) -> None:
    assert jobs.exit_code(finished(state)) == code


def test_progress_lines_end_streamed_text_first() -> None:
    shown, out, err = console()
    shown.stream("partial")
    shown.progress("job.turn.completed")
    assert out.getvalue() == "partial\n"
    assert err.getvalue() == "job.turn.completed\n"


def test_event_lines_are_compact() -> None:
    started = common_pb2.RuntimeEvent(
        type=common_pb2.EVENT_TYPE_JOB_STARTED,
        attempt=common_pb2.JobAttempt(attempt=2, reason="lease expired"),
    )
    assert event_line(started) == "job.started (attempt 2: lease expired)"
    turn = common_pb2.RuntimeEvent(
        type=common_pb2.EVENT_TYPE_TURN_COMPLETED,
        turn_completed=common_pb2.TurnCompleted(
            turn=1, usage=common_pb2.Usage(total_tokens=1234, cost="0.0012")
        ),
    )
    assert event_line(turn) == "job.turn.completed (turn 1, 1,234 tokens, $0.0012)"
    usage = common_pb2.RuntimeEvent(
        type=common_pb2.EVENT_TYPE_USAGE_RECORDED,
        usage_recorded=common_pb2.UsageRecorded(
            turn=1, usage=common_pb2.Usage(total_tokens=1234, cost="0.0012"), model="gpt-4o"
        ),
    )
    assert event_line(usage) == "usage.recorded (turn 1, gpt-4o, 1,234 tokens, $0.0012)"
    assert (
        event_line(common_pb2.RuntimeEvent(type=common_pb2.EVENT_TYPE_JOB_CREATED)) == "job.created"
    )
    failed = common_pb2.RuntimeEvent(
        type=common_pb2.EVENT_TYPE_MODEL_CALL_FAILED,
        model_call=common_pb2.ModelCallEvent(turn=2, model="gpt", error="provider down"),
    )
    assert event_line(failed) == "model.call.failed (turn 2, gpt: provider down)"
    node = common_pb2.NodeEvent(node="map", iteration=1, children=[JOB, JOB])
    started = common_pb2.RuntimeEvent(type=common_pb2.EVENT_TYPE_NODE_STARTED, node_event=node)
    assert event_line(started) == "workflow.node.started (map, run 1, 2 children)"
    node.state = common_pb2.JOB_STATE_FAILED
    node.failure.CopyFrom(
        common_pb2.Failure(reason=common_pb2.ERROR_REASON_TOOL_ERROR, message="boom")
    )
    finished = common_pb2.RuntimeEvent(type=common_pb2.EVENT_TYPE_NODE_FINISHED, node_event=node)
    assert event_line(finished) == (
        "workflow.node.finished (map, run 1, 2 children, FAILED: TOOL_ERROR: boom)"
    )


def test_every_event_type_has_its_dotted_name() -> None:
    """The names `agentrt events follow --type` takes are the proto's, for every type."""
    proto = (Path(__file__).parents[3] / "protos/agentrt/common/v1/common.proto").read_text()
    documented, name = {}, ""
    for line in proto.splitlines():  # each value's comment starts with its dotted name
        if opening := re.match(r'\s*// "([a-z_.]+)"', line):
            name = opening[1]
        elif value := re.match(r"\s*(EVENT_TYPE_[A-Z_]+) = [1-9]", line):
            documented[value[1]] = name
    named = {common_pb2.EventType.Name(kind): name for kind, name in EVENT_TYPES.items()}
    assert named == documented
    assert len(named) == len(common_pb2.EventType.keys()) - 1  # all but UNSPECIFIED


def test_job_tables_align_their_columns() -> None:
    job = jobs_pb2.Job(
        name=JOB,
        state=common_pb2.JOB_STATE_RUNNING,
        spec=jobs_pb2.JobSpec(prompt="a\nlong   prompt", model="m"),
        turns=2,
    )
    header, row = job_table([job]).splitlines()
    assert header.index("STATE") == row.index("RUNNING")
    assert row.endswith("a long prompt")
    assert row.startswith("b" * 26)


def test_states_are_read_in_any_case_with_or_without_prefix() -> None:
    assert parse_state("Timed_Out") == common_pb2.JOB_STATE_TIMED_OUT
    with pytest.raises(ValueError, match="queued"):
        parse_state("unspecified")


def test_run_can_ask_for_the_response_cache() -> None:
    args = build_parser().parse_args(
        ["run", "hi", "--temperature", "0", "--cache", "600", "--cache-sampled"]
    )
    assert (args.temperature, args.cache, args.cache_sampled) == (0.0, 600.0, True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "hi", "--cache", "0"])
