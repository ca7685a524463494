"""The CLI's admin commands over the APIs the gateway forwards: `agentrt prices`,
`budgets`, `usage report`, `policies` and `plugins` (docs/admin.md)."""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from agentrt.cli import render
from agentrt.cli.console import CommandError, Console
from agentrt.client import USAGE_DIMENSIONS, Client, resource_name
from agentrt.errors import NotFoundError
from agentrt.ledger.v1 import ledger_pb2
from agentrt.orchestrator.v1 import orchestrator_pb2
from agentrt.policy.v1 import policy_pb2

M = TypeVar("M", bound=Message)


async def set_price(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt prices set <model> --input-price X --output-price Y ...`: creates the price
    or changes the prices given."""
    given = (args.input_price, args.output_price, args.cached_input_price, args.cache_write_price)
    if all(value is None for value in given):
        raise CommandError(
            "give at least one price: --input-price, --output-price, --cached-input-price"
            " or --cache-write-price"
        )
    try:
        price = await client.set_price(
            args.model,
            input_price=args.input_price,
            output_price=args.output_price,
            cached_input_price=args.cached_input_price,
            cache_write_price=args.cache_write_price,
        )
    except NotFoundError:
        raise CommandError(
            f"{args.model} has no price yet: a new price needs --input-price and --output-price"
        ) from None
    console.print(render.as_json(price) if args.json else render.price_table([price]))
    return 0


async def show_prices(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt prices show [model]`: prices per million tokens."""
    prices = [await client.get_price(args.model)] if args.model else await client.list_prices()
    return await _print_listing(
        console, prices, as_json=args.json, table=render.price_table, nothing="no prices found"
    )


async def set_budget(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt budgets set <budget> --tenant T ...`: creates the budget or replaces its
    period, limits and warn threshold."""
    if args.tokens is None and args.cost is None and args.tool_calls is None:
        raise CommandError("give at least one limit: --tokens, --cost or --tool-calls")
    budget = await client.set_budget(
        args.budget,
        tenant=args.tenant,
        principal=args.principal,
        period=args.period,
        tokens=args.tokens,
        cost=args.cost,
        tool_calls=args.tool_calls,
        warn_threshold=args.warn,
        description=args.description,
    )
    console.print(render.as_json(budget) if args.json else await _budgets_text(client, [budget]))
    return 0


async def show_budgets(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt budgets show [budget] [--tenant T]`: budgets with what they have spent in
    the current period."""
    if args.budget:
        budgets = [await client.get_budget(args.budget)]
    else:
        budgets = await client.list_budgets(tenant=args.tenant)
    return await _print_listing(
        console,
        budgets,
        as_json=args.json,
        table=functools.partial(_budgets_text, client),
        nothing="no budgets found",
    )


async def _budgets_text(client: Client, budgets: list[ledger_pb2.Budget]) -> str:
    """The budgets' table, with their spending now: one CheckBudget (of nothing) per
    tenant and principal, which reports every budget that applies to them."""
    statuses: dict[str, ledger_pb2.BudgetStatus] = {}
    for tenant, principal in sorted({(b.tenant, b.principal) for b in budgets}):
        checked = await client.check_budget(tenant=tenant, principal=principal)
        statuses.update((status.budget, status) for status in checked.budgets)
    return render.budget_table(budgets, statuses)


async def usage_report(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt usage report`: usage summed by tenant, principal, model, day or job."""
    group_by = _dimensions(args.by or ["tenant"])
    end = args.until
    start = args.since or (end or datetime.now(UTC)) - timedelta(days=args.days)
    rows = await client.usage_report(
        start=start,
        end=end,
        group_by=group_by,
        tenant=args.tenant,
        principal=args.principal,
        model=args.model,
    )
    dimensions = [USAGE_DIMENSIONS[name] for name in group_by]
    return await _print_listing(
        console,
        rows,
        as_json=args.json,
        table=lambda found: render.usage_table(found, dimensions),
        nothing=f"no usage since {start:%Y-%m-%d %H:%M} UTC",
    )


def _dimensions(by: Iterable[str]) -> list[str]:
    """["tenant", "model"] from ["tenant,model"] or ["tenant", "model"], each once."""
    names: list[str] = []
    for part in ",".join(by).split(","):
        name = part.strip().lower()
        if name and name not in names:
            names.append(name)
    unknown = [name for name in names if name not in USAGE_DIMENSIONS]
    if unknown:
        choices = ", ".join(USAGE_DIMENSIONS)
        raise CommandError(f"cannot group usage by {', '.join(unknown)}; one of {choices}")
    return names


async def list_policy_sets(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt policies list`."""
    sets = await client.list_policy_sets()
    return await _print_listing(
        console, sets, as_json=args.json, table=render.policy_set_table, nothing="no policy sets"
    )


async def get_policy_set(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt policies get <set>`: the whole set as JSON, ready to edit and apply."""
    console.print(render.as_json(await client.get_policy_set(args.policy_set)))
    return 0


async def apply_policy_set(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt policies apply <file>`: creates the set the file describes, or updates its
    description and rules. The update is refused (ABORTED) if the set changed since the
    etag in the file, or else since it was read here."""
    wanted = read_policy_set(args.file)
    name = resource_name("policySets", wanted.name)
    try:
        current = await client.get_policy_set(name)
    except NotFoundError:
        wanted.ClearField("name")
        created = await client.create_policy_set(name.removeprefix("policySets/"), wanted)
        console.print(f"{created.name} created (version {created.version})")
        return 0
    wanted.name = name
    wanted.etag = wanted.etag or current.etag
    updated = await client.update_policy_set(wanted, ["description", "rules"])
    console.print(f"{updated.name} updated (version {updated.version})")
    return 0


def read_policy_set(path: Path) -> policy_pb2.PolicySet:
    """A PolicySet from a JSON file (or YAML, when PyYAML is installed) in the proto3
    JSON mapping; it must have a name ("production" or "policySets/production")."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}") from None
    data = load_document(path, text)
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        raise CommandError(f'{path} must hold an object with a "name", e.g. "production"')
    policy_set = policy_pb2.PolicySet()
    try:
        json_format.ParseDict(data, policy_set)
    except json_format.ParseError as error:
        raise CommandError(f"{path} is not a policy set: {error}") from None
    return policy_set


def load_document(path: Path, text: str) -> Any:
    """A YAML (by its .yaml/.yml suffix) or JSON document; CommandError naming the file."""
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise CommandError(f"{path} is not YAML: {error}") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise CommandError(f"{path} is not JSON: {error}") from None


async def register_plugin(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt plugins register <id> --address --version --tool ...`."""
    manifest = orchestrator_pb2.PluginManifest(
        version=args.version,
        endpoint=args.address,
        tools=args.tool,
        permissions=args.permission,
        description=args.description,
    )
    plugin = await client.register_plugin(args.plugin, manifest)
    state = orchestrator_pb2.Plugin.State.Name(plugin.state).removeprefix("STATE_")
    console.print(f"{plugin.name} registered ({state}): {', '.join(plugin.manifest.tools)}")
    return 0


async def list_plugins(args: argparse.Namespace, client: Client, console: Console) -> int:
    """`agentrt plugins list`."""
    plugins = await client.list_plugins()
    return await _print_listing(
        console,
        plugins,
        as_json=args.json,
        table=render.plugin_table,
        nothing="no plugins registered",
    )


async def _print_listing(
    console: Console,
    found: list[M],
    *,
    as_json: bool,
    table: Callable[[list[M]], str | Awaitable[str]],
    nothing: str,
) -> int:
    """Prints what a listing `found`: a JSON array with `as_json`, else its `table`, else
    (when it found nothing) the problem `nothing`. The command's exit status: 0."""
    if as_json:
        console.print(json.dumps([_as_dict(item) for item in found], indent=2))
    elif found:
        text = table(found)
        console.print(text if isinstance(text, str) else await text)
    else:
        console.problem(nothing)
    return 0


def _as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)
