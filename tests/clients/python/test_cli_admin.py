"""`agentrt actions|budgets|usage|policies|plugins` against the system in-process (as under
`agentrt dev`), through a forwarding gateway, and how usage reports are shown."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from agentrt import (
    AbortedError,
    Client,
    FailedPreconditionError,
    PermissionDeniedError,
    UnavailableError,
)
from agentrt.cli import actions, build_parser, main, manage
from agentrt.cli.console import CommandError, Console
from agentrt.cli.render import usage_table
from agentrt.common.v1 import common_pb2
from agentrt.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from agentrt.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from services.dev import DEV_TENANT, LocalSystem
from services.gateway.admin import create_api_key
from tests.services.gateway.forwarding import forwarding_gateway
from tests.services.gateway.test_actions import LONG_PROMPT, approved, take_over

TIMEOUT = 10.0
Action = jobs_pb2.Action


async def cli(client: Client, *argv: str) -> tuple[int, str, str]:
    """Runs one client command of the CLI with `client`: its exit code, stdout, stderr."""
    args = build_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    code: int = await args.client_command(args, client, Console(out, err))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def client(system: LocalSystem) -> AsyncIterator[Client]:
    async with Client(system.endpoint, system.api_key) as opened:
        yield opened


async def waiting_action(
    system: LocalSystem,
    client: Client,
    kind: jobs_pb2.ActionKind.ValueType = jobs_pb2.ACTION_KIND_APPROVAL,
) -> tuple[str, Action]:
    """A job of the dev tenant waiting on an approval: its name and the action, with its
    resume token (asked for as a worker does, after taking the job over)."""
    job = await client.execute(LONG_PROMPT, model="local-slow", timeout=24 * 3600)
    lease_id = await take_over(system, job.name)
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        required = jobs_pb2.RequireActionRequest(
            parent=job.name,
            lease_id=lease_id,
            action=Action(kind=kind, timeout_outcome=approved(False)),
        )
        required.action.payload.update({"tool": "send_email"})
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        return job.name, await stub.RequireAction(required, timeout=TIMEOUT)


# Parsing


def test_action_commands_take_a_name_or_a_token() -> None:
    parser = build_parser()
    approve = parser.parse_args(["actions", "approve", "jobs/j/actions/a", "--reason", "ok"])
    assert (approve.client_command, approve.action, approve.reason) == (
        actions.approve,
        "jobs/j/actions/a",
        "ok",
    )
    assert parser.parse_args(["actions", "reject", "tok"]).client_command is actions.reject
    resolve = parser.parse_args(["actions", "resolve", "tok", "--output", "42"])
    assert (resolve.output, resolve.json) == ("42", None)
    listing = parser.parse_args(["actions", "list", "b" * 26, "--pending"])
    assert (listing.job, listing.pending) == ("jobs/" + "b" * 26, True)


def test_keys_create_takes_the_admin_scope() -> None:
    parser = build_parser()
    assert parser.parse_args(["keys", "create", "--tenant", "t", "--principal", "p"]).admin is False
    admin = parser.parse_args(["keys", "create", "--tenant", "t", "--principal", "p", "--admin"])
    assert admin.admin is True


def test_run_offers_tools_and_names_a_policy_set() -> None:
    args = build_parser().parse_args(
        ["run", "hi", "--tool", "calculator", "--tool", "current_time", "--policy", "strict"]
    )
    assert (args.tool, args.policy) == (["calculator", "current_time"], "strict")


def test_budget_and_usage_commands_parse_their_limits() -> None:
    parser = build_parser()
    budget = parser.parse_args(
        [
            "budgets",
            "set",
            "acme-1",
            "--tenant",
            "acme",
            "--period",
            "day",
            "--cost",
            "2.50",
            "--tokens",
            "1000",
            "--warn",
            "0.8",
        ]
    )
    assert budget.client_command is manage.set_budget
    assert (budget.period, budget.cost, budget.tokens, budget.warn) == ("day", "2.50", 1000, 0.8)
    report = parser.parse_args(["usage", "report", "--by", "tenant,model", "--by", "day"])
    assert (report.by, report.days) == (["tenant,model", "day"], 30)
    since = parser.parse_args(["usage", "report", "--since", "2026-11-01"]).since
    assert since.isoformat() == "2026-11-01T00:00:00+00:00"


@pytest.mark.parametrize(
    "argv",
    [
        ["actions", "resolve", "tok"],
        ["actions", "resolve", "tok", "--output", "x", "--json", "{}"],
        ["actions", "approve", " "],
        ["budgets", "set", "b", "--tenant", "t", "--period", "week"],
        ["budgets", "set", "b", "--tenant", "t", "--cost", "-1"],
        ["budgets", "set", "b", "--tenant", "t", "--warn", "1.5"],
        ["usage", "report", "--since", "yesterday"],
        ["usage", "report", "--since", "2026-11-01", "--days", "3"],
        ["plugins", "register", "p", "--address", "h:1", "--version", "1"],
        ["prices", "set", "m", "--cache-write-price", "-1.25"],
        ["prices", "set", "m", "--input-price", "two"],
        ["prices", "set", " ", "--input-price", "1"],
    ],
)
def test_bad_admin_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(argv)
    assert raised.value.code == 2
    assert "error:" in capsys.readouterr().err


# Rendering


def usage_row(
    tenant: str, model: str, tokens: tuple[int, int], cost: str
) -> ledger_pb2.UsageReportRow:
    usage = common_pb2.Usage(
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        total_tokens=sum(tokens),
        cost=cost,
        model_calls=1,
    )
    return ledger_pb2.UsageReportRow(tenant=tenant, model=model, usage=usage, record_count=1)


def test_a_usage_report_aligns_numbers_right_and_sums_exactly() -> None:
    rows = [
        usage_row("acme", "gpt-4o", (1200, 34), "0.1"),
        usage_row("acme", "local", (5, 6), ""),
        usage_row("globex", "gpt-4o", (100000, 2000), "0.2"),
    ]
    text = usage_table(rows, [ledger_pb2.USAGE_DIMENSION_TENANT, ledger_pb2.USAGE_DIMENSION_MODEL])
    lines = text.splitlines()
    assert lines[0].split() == [
        "TENANT",
        "MODEL",
        "MODEL",
        "CALLS",
        "TOOL",
        "CALLS",
        "INPUT",
        "OUTPUT",
        "TOKENS",
        "COST",
    ]
    assert lines[1].split() == ["acme", "gpt-4o", "1", "0", "1,200", "34", "1,234", "$0.1"]
    assert lines[2].split()[-1] == "-"
    # 0.1 + 0.2 is 0.3 exactly, not 0.30000000000000004.
    assert lines[4].split() == ["TOTAL", "3", "0", "101,205", "2,040", "103,245", "$0.3"]
    # Every line ends at the same column: the numbers are right-aligned.
    assert len({len(line) for line in lines}) == 1


def test_a_report_without_groups_is_one_line_of_sums() -> None:
    text = usage_table([usage_row("", "", (1, 2), "0.5")], [])
    assert text.splitlines()[1].split() == ["1", "0", "1", "2", "3", "$0.5"]


# Against the system


async def test_prices_set_creates_then_changes_the_prices_given_and_show_lists_them(
    client: Client,
) -> None:
    with pytest.raises(CommandError, match="at least one price"):
        await cli(client, "prices", "set", "claude-x")
    with pytest.raises(CommandError, match="needs --input-price and --output-price"):
        await cli(client, "prices", "set", "claude-x", "--cache-write-price", "3.75")

    code, out, _ = await cli(
        client, "prices", "set", "claude-x", "--input-price", "3", "--output-price", "15",
        "--cached-input-price", "0.30",
    )  # fmt: skip
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["MODEL", "INPUT", "OUTPUT", "CACHE", "READ", "CACHE", "WRITE"]
    assert row.split() == ["claude-x", "$3", "$15", "$0.3", "$3"]

    code, out, _ = await cli(client, "prices", "set", "claude-x", "--cache-write-price", "3.750")
    assert code == 0
    assert out.splitlines()[1].split() == ["claude-x", "$3", "$15", "$0.3", "$3.75"]
    code, out, _ = await cli(client, "prices", "show", "--json")
    [price] = [p for p in json.loads(out) if p["name"] == "prices/claude-x"]
    assert (price["cachedInputPricePerMillion"], price["cacheWritePricePerMillion"]) == (
        "0.3",
        "3.75",
    )
    code, out, _ = await cli(client, "prices", "set", "claude-x", "--cache-write-price", "")
    code, out, _ = await cli(client, "prices", "show", "claude-x")
    assert out.splitlines()[1].split() == ["claude-x", "$3", "$15", "$0.3", "$3"]


async def test_budgets_set_creates_then_replaces_and_show_tells_the_spending(
    client: Client,
) -> None:
    with pytest.raises(CommandError, match="at least one limit"):
        await cli(client, "budgets", "set", "dev-daily", "--tenant", DEV_TENANT)

    code, out, _ = await cli(
        client, "budgets", "set", "dev-daily", "--tenant", DEV_TENANT, "--tokens", "1000"
    )
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["BUDGET", "TENANT", "PRINCIPAL", "PERIOD"]
    assert row.split()[:7] == ["dev-daily", "dev", "*", "month", "0", "/", "1,000"]

    code, out, _ = await cli(
        client, "budgets", "set", "dev-daily", "--tenant", DEV_TENANT, "--period", "day",
        "--cost", "2.50", "--warn", "0.5",
    )  # fmt: skip
    assert code == 0
    code, out, _ = await cli(client, "budgets", "show", "--json")
    [budget] = json.loads(out)
    assert budget["period"] == "PERIOD_DAY"
    assert budget["limits"] == {"cost": "2.5"} and budget["warnThreshold"] == 0.5
    code, out, _ = await cli(client, "budgets", "show", "dev-daily")
    assert "$0 / $2.5" in out and "50%" in out and out.rstrip().endswith("ALLOW")


async def test_usage_report_shows_the_recorded_usage_by_tenant_and_model(
    system: LocalSystem, client: Client
) -> None:
    async with grpc.aio.insecure_channel(system.endpoint) as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        for number, (tenant, model) in enumerate(
            [(DEV_TENANT, "local"), (DEV_TENANT, "local"), ("globex", "gpt-4o")]
        ):
            record = ledger_pb2.UsageRecord(
                kind=ledger_pb2.USAGE_KIND_MODEL_CALL,
                model=model,
                tenant=tenant,
                usage=common_pb2.Usage(input_tokens=1000, output_tokens=10, cost="0.01"),
            )
            await ledger.RecordUsage(
                ledger_pb2.RecordUsageRequest(usage_record_id=f"r{number}", usage_record=record),
                timeout=TIMEOUT,
            )
    code, out, _ = await cli(client, "usage", "report", "--by", "tenant,model")
    assert code == 0
    lines = [line.split() for line in out.splitlines()]
    assert lines[1] == ["dev", "local", "2", "0", "2,000", "20", "2,020", "$0.02"]
    assert lines[2] == ["globex", "gpt-4o", "1", "0", "1,000", "10", "1,010", "$0.01"]
    assert lines[3][0] == "TOTAL" and lines[3][-1] == "$0.03"

    code, out, err = await cli(client, "usage", "report", "--model", "none-such")
    assert (code, out) == (0, "") and err.startswith("no usage since")
    with pytest.raises(CommandError, match="cannot group usage by week"):
        await cli(client, "usage", "report", "--by", "week")


async def test_an_approval_is_listed_then_approved_by_name_once(
    system: LocalSystem, client: Client
) -> None:
    job, action = await waiting_action(system, client)
    try:
        code, out, _ = await cli(client, "actions", "list", job, "--pending")
        assert code == 0
        assert action.name in out and "approval" in out and "PENDING" in out
        assert '{"tool":"send_email"}' in out

        code, out, _ = await cli(client, "actions", "approve", action.name, "--reason", "fine")
        assert (code, out) == (0, f"{action.name} RESOLVED\n")
        [resolved], _ = await client.list_actions(job)
        assert dict(resolved.outcome) == {"approved": True, "reason": "fine"}
        with pytest.raises(FailedPreconditionError):
            await cli(client, "actions", "reject", action.resume_token)
        code, out, err = await cli(client, "actions", "list", job, "--pending")
        assert (code, out) == (0, "") and "no pending actions" in err
    finally:
        await client.cancel(job)


async def test_a_rejection_by_resume_token_carries_its_reason(
    system: LocalSystem, client: Client
) -> None:
    job, action = await waiting_action(system, client)
    try:
        code, out, _ = await cli(
            client, "actions", "reject", action.resume_token, "--reason", "too risky"
        )
        assert (code, out) == (0, f"{action.name} RESOLVED\n")
        [resolved], _ = await client.list_actions(job)
        assert dict(resolved.outcome) == {"approved": False, "reason": "too risky"}
    finally:
        await client.cancel(job)


async def test_policies_apply_creates_then_updates_and_refuses_a_stale_file(
    client: Client, tmp_path: Path
) -> None:
    spec = tmp_path / "production.json"
    spec.write_text(json.dumps({"name": "production", "description": "first"}))
    assert (await cli(client, "policies", "apply", str(spec)))[1] == (
        "policySets/production created (version 1)\n"
    )
    first = await client.get_policy_set("production")
    spec.write_text(json.dumps({"name": "production", "description": "second"}))
    assert (await cli(client, "policies", "apply", str(spec)))[1] == (
        "policySets/production updated (version 2)\n"
    )
    _, out, _ = await cli(client, "policies", "list")
    assert out.splitlines()[1].split()[:3] == ["production", "2", "0"]
    _, out, _ = await cli(client, "policies", "get", "production")
    assert json.loads(out)["description"] == "second"

    stale = {"name": "production", "description": "third", "etag": first.etag}
    spec.write_text(json.dumps(stale))
    with pytest.raises(AbortedError):
        await cli(client, "policies", "apply", str(spec))
    spec.write_text("[1, 2]")
    with pytest.raises(CommandError, match='must hold an object with a "name"'):
        await cli(client, "policies", "apply", str(spec))


async def test_through_a_gateway_a_tenant_key_is_refused_in_one_line(
    system: LocalSystem,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tenant_key = await create_api_key(system.infra.storage("gateway"), DEV_TENANT, "app")
    monkeypatch.setenv("AGENTRT_DATA_DIR", str(tmp_path))
    async with forwarding_gateway(system) as endpoint:
        monkeypatch.setenv("AGENTRT_ENDPOINT", endpoint)
        monkeypatch.setenv("AGENTRT_API_KEY", tenant_key)
        refused = ["budgets", "set", "x", "--tenant", DEV_TENANT, "--tokens", "5"]
        assert await asyncio.to_thread(main, refused) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "PERMISSION_DENIED" in err and "admin key" in err

        monkeypatch.setenv("AGENTRT_API_KEY", system.api_key)
        assert await asyncio.to_thread(main, refused) == 0
        monkeypatch.setenv("AGENTRT_API_KEY", tenant_key)
        assert await asyncio.to_thread(main, ["budgets", "show"]) == 0
        assert capsys.readouterr().out.splitlines()[1].startswith("x ")


def test_outcomes_of_resolve_are_an_output_or_a_json_object() -> None:
    assert actions.outcome_of("42", None) == {"output": "42"}
    assert actions.outcome_of(None, '{"error": "no"}') == {"error": "no"}
    with pytest.raises(CommandError):
        actions.outcome_of(None, "[1]")
    with pytest.raises(CommandError):
        actions.outcome_of(None, "{")


async def test_plugins_list_and_a_plugin_that_cannot_be_reached(client: Client) -> None:
    code, out, err = await cli(client, "plugins", "list")
    assert (code, out, err) == (0, "", "no plugins registered\n")
    with pytest.raises(UnavailableError):
        await cli(
            client, "plugins", "register", "weather", "--address", "127.0.0.1:1",
            "--version", "1.0.0", "--tool", "forecast",
        )  # fmt: skip
    assert await client.list_plugins() == []


async def test_a_client_tool_call_is_answered_with_its_output_or_an_outcome(
    system: LocalSystem, client: Client
) -> None:
    for argv, outcome in [
        (["--output", "72F, sunny"], {"output": "72F, sunny"}),
        (["--json", '{"error": "no access"}'], {"error": "no access"}),
    ]:
        job, action = await waiting_action(system, client, jobs_pb2.ACTION_KIND_TOOL_CALL)
        try:
            code, out, _ = await cli(client, "actions", "resolve", action.resume_token, *argv)
            assert (code, out) == (0, f"{action.name} RESOLVED\n")
            [resolved], _ = await client.list_actions(job)
            assert dict(resolved.outcome) == outcome
        finally:
            await client.cancel(job)


async def test_the_client_raises_typed_errors_for_what_a_tenant_key_may_not_do(
    system: LocalSystem,
) -> None:
    tenant_key = await create_api_key(system.infra.storage("gateway"), DEV_TENANT, "app")
    async with (
        forwarding_gateway(system) as endpoint,
        Client(endpoint, system.api_key) as operator,
        Client(endpoint, tenant_key) as team,
    ):
        await operator.set_budget("dev-total", tenant=DEV_TENANT, period="total", tool_calls=3)
        with pytest.raises(PermissionDeniedError) as refused:
            await team.set_budget("dev-total", tenant=DEV_TENANT, tool_calls=300)
        assert refused.value.reason == "PERMISSION_DENIED"
        with pytest.raises(PermissionDeniedError):
            await team.list_budgets(tenant="globex")
        checked = await team.check_budget(tool_calls=4)
        assert checked.verdict == ledger_pb2.BUDGET_VERDICT_DENY
        assert checked.deciding_budget == "budgets/dev-total"
        assert [b.name for b in await team.list_budgets()] == ["budgets/dev-total"]
        with pytest.raises(PermissionDeniedError):
            await team.list_policy_sets()
