"""The `agentrt` command: run the runtime locally or as services, and drive it as a client."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import grpc

from agentrt.cli import actions, admin, jobs, manage, replay
from agentrt.cli.console import CommandError, Console
from agentrt.cli.events import add_event_commands
from agentrt.cli.models import add_commands as add_model_commands
from agentrt.cli.render import parse_state
from agentrt.cli.target import Target, resolve_target
from agentrt.client import BUDGET_PERIODS, USAGE_DIMENSIONS, Client, job_name
from agentrt.errors import AgentrtError

EXIT_ERROR = 2
"""The command could not do its work: bad usage, no gateway, a call refused."""
EXIT_BROKEN_PIPE = 141
"""The output's reader closed it, as shells report a SIGPIPE."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line `argv` (default: the process's) and returns the exit code."""
    args = build_parser().parse_args(argv)
    console = Console.system()
    try:
        if args.client_command is not None:
            return _run_client_command(args, console)
        code: int = args.run(args, console)
        return code
    except CommandError as error:
        console.problem(f"error: {error}")
    except KeyboardInterrupt:
        return jobs.EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`agentrt jobs watch --json | head`): stop quietly, and keep
        # the interpreter's final flush from failing on the closed pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return EXIT_ERROR


def _run_client_command(args: argparse.Namespace, console: Console) -> int:
    target = resolve_target(args.endpoint, args.api_key, os.environ)
    try:
        return asyncio.run(_with_client(args, target, console))
    except AgentrtError as error:
        console.problem(f"error: {error}")
        if error.code == grpc.StatusCode.UNAVAILABLE and not error.reason:
            console.problem(_unreachable_hint(target))
        return EXIT_ERROR


async def _with_client(args: argparse.Namespace, target: Target, console: Console) -> int:
    async with Client(target.endpoint, target.api_key, tls=args.tls) as client:
        code: int = await args.client_command(args, client, console)
        return code


def _unreachable_hint(target: Target) -> str:
    if target.dev_state is not None:
        return f"hint: is `agentrt dev` running? ({target.endpoint} from {target.dev_state})"
    return f"hint: is a gateway listening on {target.endpoint}?"


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line; each command sets `run` (an operator command)
    or `client_command` (a command that calls the gateway)."""
    parser = argparse.ArgumentParser(
        prog="agentrt", description="agentrt: a runtime for LLM agents, as gRPC services."
    )
    parser.set_defaults(client_command=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_operator_commands(commands)
    connection = _connection_options()
    _add_client_commands(commands, connection)
    add_model_commands(commands, connection)
    _add_action_commands(commands, connection)
    add_event_commands(commands, connection)
    _add_admin_api_commands(commands, connection)
    replay.add_commands(commands, connection)
    return parser


def _add_operator_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = commands.add_parser("dev", help="run every service in this process (SQLite, no setup)")
    dev.add_argument("--port", type=_port, default=50051, help="port to listen on (50051)")
    dev.add_argument(
        "--data-dir", type=Path, help="where data is kept (AGENTRT_DATA_DIR, else .agentrt)"
    )
    dev.set_defaults(run=admin.dev)

    serve = commands.add_parser("serve", help="run one service (configured by AGENTRT_*)")
    serve.add_argument("service", help="gateway, jobs, engine, orchestrator, ..., exporter")
    serve.set_defaults(run=admin.serve)

    edge = commands.add_parser(
        "edge", help="run Envoy in front of the gateway: HTTP/JSON, gRPC-Web (AGENTRT_EDGE_*)"
    )
    edge.add_argument(
        "--print-config", action="store_true", help="print the Envoy configuration and exit"
    )
    edge.add_argument(
        "--config-file", type=Path, help="where to write it (default <data dir>/envoy.yaml)"
    )
    edge.set_defaults(run=admin.edge)

    migrate = commands.add_parser("migrate", help="apply pending database migrations")
    migrate.add_argument("services", nargs="*", metavar="SERVICE", help="default: all of them")
    migrate.set_defaults(run=admin.migrate)

    keys = commands.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    create = keys.add_parser("create", help="create a key (printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--principal", required=True, help="who the key is for")
    create.add_argument(
        "--admin", action="store_true", help="an operator's key: may also call the admin APIs"
    )
    create.set_defaults(run=admin.create_key)
    listing = keys.add_parser("list", help="list a tenant's keys")
    listing.add_argument("--tenant", required=True)
    listing.set_defaults(run=admin.list_keys)
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id", metavar="KEY_ID", help="as shown by `keys list`")
    revoke.set_defaults(run=admin.revoke_key)


def _add_client_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
) -> None:
    run = commands.add_parser(
        "run", parents=[connection], help="run an agent and show its answer as it comes"
    )
    run.add_argument(
        "prompt", nargs="?", default="", help="what to ask; - reads it from standard input"
    )
    run.add_argument("--model", default="", help="model id (default: the deployment's)")
    run.add_argument("--system", default="", help="a system prompt")
    run.add_argument("--max-turns", type=_count, default=0, help="model calls at most (8)")
    run.add_argument("--timeout", type=_seconds, help="seconds the job may take (600)")
    run.add_argument("--session", default="", help="a session to list the job under")
    run.add_argument(
        "--tool", action="append", default=[], help="a built-in or plugin tool (repeatable)"
    )
    run.add_argument("--policy", default="", help="the policy set (default: `default`)")
    run.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    run.add_argument(
        "--cache",
        type=_seconds,
        metavar="SECONDS",
        help="answer model calls from the engine's response cache, entries kept SECONDS"
        " (only for --temperature 0 unless --cache-sampled)",
    )
    run.add_argument(
        "--cache-sampled", action="store_true", help="with --cache: cache sampled answers too"
    )
    run.add_argument("--json", action="store_true", help="print the finished job as JSON")
    run.add_argument(
        "--workflow", metavar="FILE", help="run the workflow of a YAML or JSON job spec"
    )
    run.set_defaults(client_command=jobs.run_job)

    job_commands = commands.add_parser("jobs", help="list, inspect, cancel and watch jobs")
    actions = job_commands.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[connection], help="the newest jobs")
    listing.add_argument(
        "--state", type=_state, action="append", default=[], help="only this state (repeatable)"
    )
    listing.add_argument("--session", default="", help="only jobs of this session")
    listing.add_argument("--parent", type=_job, help="only this job's children")
    listing.add_argument("--root", type=_job, help="only the jobs of this root's tree")
    listing.add_argument("--limit", type=_positive, default=20, help="jobs at most (20)")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(client_command=jobs.list_jobs)

    get = actions.add_parser("get", parents=[connection], help="one job in detail")
    get.add_argument("job", type=_job, metavar="JOB", help="jobs/<id> or <id>")
    get.add_argument("--json", action="store_true", help="print the job as JSON")
    get.set_defaults(client_command=jobs.get_job)

    tree = actions.add_parser(
        "tree", parents=[connection], help="a job and its descendants, indented by depth"
    )
    tree.add_argument("job", type=_job, metavar="JOB", help="jobs/<id> or <id>")
    tree.add_argument("--json", action="store_true", help="print a JSON array, depth first")
    tree.set_defaults(client_command=jobs.job_tree)

    cancel = actions.add_parser("cancel", parents=[connection], help="cancel a job")
    cancel.add_argument("job", type=_job, metavar="JOB", help="jobs/<id> or <id>")
    cancel.add_argument("--reason", default="cancelled from the agentrt CLI", help="why")
    cancel.set_defaults(client_command=jobs.cancel_job)

    watch = actions.add_parser("watch", parents=[connection], help="follow a job until it ends")
    watch.add_argument("job", type=_job, metavar="JOB", help="jobs/<id> or <id>")
    watch.add_argument("--json", action="store_true", help="print each event as a JSON line")
    watch.set_defaults(client_command=jobs.watch_job)


def _add_action_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
) -> None:
    group = commands.add_parser("actions", help="list and answer the actions jobs wait on")
    verbs = group.add_subparsers(dest="actions_command", required=True, metavar="ACTION")
    listing = verbs.add_parser("list", parents=[connection], help="a job's actions")
    listing.add_argument("job", type=_job, metavar="JOB", help="jobs/<id> or <id>")
    listing.add_argument("--pending", action="store_true", help="only those still pending")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(client_command=actions.list_actions)
    target = "jobs/<job>/actions/<action>, or the action's resume token"
    for verb, run, what in (
        ("approve", actions.approve, "approve a pending approval"),
        ("reject", actions.reject, "reject a pending approval (the model is told why)"),
    ):
        parser = verbs.add_parser(verb, parents=[connection], help=what)
        parser.add_argument("action", type=_text, metavar="ACTION", help=target)
        parser.add_argument("--reason", default="", help="why, recorded and shown to the model")
        parser.set_defaults(client_command=run)
    resolve = verbs.add_parser(
        "resolve", parents=[connection], help="answer a client tool call or an input"
    )
    resolve.add_argument("action", type=_text, metavar="ACTION", help=target)
    answer = resolve.add_mutually_exclusive_group(required=True)
    answer.add_argument("--output", help='the answer, sent as {"output": OUTPUT}')
    answer.add_argument("--json", help='the whole outcome, a JSON object, e.g. {"error": "no"}')
    resolve.set_defaults(client_command=actions.resolve)


def _add_admin_api_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
) -> None:
    prices = commands.add_parser("prices", help="set and show model prices").add_subparsers(
        dest="prices_command", required=True, metavar="ACTION"
    )
    set_price = prices.add_parser(
        "set", parents=[connection], help="create a price or change some of it (admin key)"
    )
    set_price.add_argument("model", type=_text, metavar="MODEL", help="the model id, e.g. gpt-4o")
    per_million = "US dollars per million"
    set_price.add_argument("--input-price", type=_dollars, help=f"{per_million} input tokens")
    set_price.add_argument("--output-price", type=_dollars, help=f"{per_million} output tokens")
    set_price.add_argument(
        "--cached-input-price",
        type=_dollars_or_empty,
        help=f"{per_million} tokens read from the prompt cache ('' for the input price)",
    )
    set_price.add_argument(
        "--cache-write-price",
        type=_dollars_or_empty,
        help=f"{per_million} tokens written to the prompt cache ('' for the input price)",
    )
    set_price.add_argument("--json", action="store_true", help="print the price as JSON")
    set_price.set_defaults(client_command=manage.set_price)
    show_prices = prices.add_parser("show", parents=[connection], help="model prices")
    show_prices.add_argument("model", nargs="?", default="", metavar="MODEL", help="only this one")
    show_prices.add_argument("--json", action="store_true", help="print a JSON array")
    show_prices.set_defaults(client_command=manage.show_prices)

    budgets = commands.add_parser("budgets", help="set and show spending limits").add_subparsers(
        dest="budgets_command", required=True, metavar="ACTION"
    )
    set_budget = budgets.add_parser(
        "set", parents=[connection], help="create a budget or replace its limits (admin key)"
    )
    set_budget.add_argument(
        "budget", type=_text, metavar="BUDGET", help="its id, e.g. acme-monthly"
    )
    set_budget.add_argument("--tenant", required=True, help="the tenant it limits")
    set_budget.add_argument("--principal", default="", help="only this principal of it")
    set_budget.add_argument("--period", choices=BUDGET_PERIODS, default="month", help="(month)")
    set_budget.add_argument("--tokens", type=_count, help="tokens, input and output")
    set_budget.add_argument("--cost", type=_dollars, help="US dollars, e.g. 25.00")
    set_budget.add_argument("--tool-calls", type=_count, help="tool calls")
    set_budget.add_argument("--warn", type=_fraction, help="warn from this fraction, e.g. 0.8")
    set_budget.add_argument("--description", default="", help="what it is for")
    set_budget.add_argument("--json", action="store_true", help="print the budget as JSON")
    set_budget.set_defaults(client_command=manage.set_budget)
    show = budgets.add_parser("show", parents=[connection], help="budgets and their spending")
    show.add_argument("budget", nargs="?", default="", metavar="BUDGET", help="only this one")
    show.add_argument("--tenant", default="", help="only this tenant's budgets")
    show.add_argument("--json", action="store_true", help="print a JSON array")
    show.set_defaults(client_command=manage.show_budgets)

    usage = commands.add_parser("usage", help="what was spent").add_subparsers(
        dest="usage_command", required=True, metavar="ACTION"
    )
    report = usage.add_parser("report", parents=[connection], help="usage summed by group")
    report.add_argument(
        "--by",
        action="append",
        default=[],
        help=f"group by {', '.join(USAGE_DIMENSIONS)} (comma-separated or repeated; tenant)",
    )
    window = report.add_mutually_exclusive_group()
    window.add_argument("--since", type=_moment, help="from this UTC date or time")
    window.add_argument("--days", type=_positive, default=30, help="the last N days (30)")
    report.add_argument("--until", type=_moment, help="up to this UTC date or time (now)")
    report.add_argument("--tenant", default="", help="only this tenant")
    report.add_argument("--principal", default="", help="only this principal")
    report.add_argument("--model", default="", help="only this model")
    report.add_argument("--json", action="store_true", help="print the rows as JSON")
    report.set_defaults(client_command=manage.usage_report)

    policies = commands.add_parser("policies", help="policy sets (admin key)").add_subparsers(
        dest="policies_command", required=True, metavar="ACTION"
    )
    listing = policies.add_parser("list", parents=[connection], help="every policy set")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(client_command=manage.list_policy_sets)
    get = policies.add_parser("get", parents=[connection], help="one policy set, as JSON")
    get.add_argument("policy_set", type=_text, metavar="POLICY_SET", help="e.g. production")
    get.set_defaults(client_command=manage.get_policy_set)
    apply = policies.add_parser(
        "apply", parents=[connection], help="create or update a policy set from a file"
    )
    apply.add_argument("file", type=Path, metavar="FILE", help="a PolicySet as JSON (or YAML)")
    apply.set_defaults(client_command=manage.apply_policy_set)

    plugins = commands.add_parser("plugins", help="tool plugins (admin key)").add_subparsers(
        dest="plugins_command", required=True, metavar="ACTION"
    )
    register = plugins.add_parser("register", parents=[connection], help="register a plugin")
    register.add_argument("plugin", type=_text, metavar="PLUGIN", help="its id, e.g. weather")
    register.add_argument(
        "--address", required=True, help="host:port of its gRPC tool-provider server"
    )
    register.add_argument("--version", required=True, help="its version, e.g. 1.0.0")
    register.add_argument(
        "--tool", action="append", required=True, help="a tool it serves (repeatable)"
    )
    register.add_argument(
        "--permission", action="append", default=[], help="what it needs (repeatable)"
    )
    register.add_argument("--description", default="", help="what it is for")
    register.set_defaults(client_command=manage.register_plugin)
    listing = plugins.add_parser("list", parents=[connection], help="registered plugins")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(client_command=manage.list_plugins)


def _connection_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument(
        "--endpoint",
        help="the gateway's host:port (AGENTRT_ENDPOINT, else from `agentrt dev`'s dev.json)",
    )
    group.add_argument(
        "--api-key", help="the API key (AGENTRT_API_KEY, else from `agentrt dev`'s dev.json)"
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS")
    return options


def _job(text: str) -> str:
    try:
        return job_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


def _dollars_or_empty(text: str) -> str:
    return _dollars(text) if text.strip() else ""


def _dollars(text: str) -> str:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected US dollars, e.g. 25.00, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative amount, got {text}")
    return text.strip()


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 1, got {text}")
    return value


def _moment(text: str) -> datetime:
    """A date ("2026-11-01") or ISO time; without a zone, UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date or time such as 2026-11-01 or 2026-11-01T09:30, got {text!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _state(text: str) -> int:
    try:
        return parse_state(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _count(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _positive(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"not a port: {value}")
    return value


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value < 366 * 86400:
        raise argparse.ArgumentTypeError(f"must be more than 0 and less than a year, got {text}")
    return value
