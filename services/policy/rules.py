"""Policy rules: checking them on write and deciding a call with them, free of I/O.

A set decides one call in the order the policy proto's header documents: scope and limits
rules only ever deny, and the first that denies decides; otherwise the first tool rule
(for a tool call) or model rule (for a model call) whose patterns, tenants and principals
match decides with its verdict; otherwise the call is allowed with no matched rule.

Patterns are globs over the whole name with `fnmatch.fnmatchcase` semantics, except that
only '*' (any run of characters, '/' included) and '?' (one character) are special:
'[' is an ordinary character, so that a name with brackets needs no escaping. Matching
is case-sensitive.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from agentrt.policy.v1.policy_pb2 import (
    Decision,
    JobCounts,
    LimitsRule,
    ModelRule,
    Rule,
    RuleRef,
    ScopeRule,
    ToolRule,
    Verdict,
)
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from services.kit.errors import FieldInvalid

MAX_RULES = 1000
"""Rules a policy set may hold."""

_RULE_ID = re.compile(r"[A-Za-z0-9_-]{1,63}")


@dataclass(frozen=True)
class Call:
    """A call about to be made, for whom, and what its job has done so far."""

    tenant: str
    principal: str
    model: str = ""
    """The model id of a model call; empty for a tool call."""
    tool: str = ""
    """The tool name of a tool call; empty for a model call."""
    counts: JobCounts = field(default_factory=JobCounts)
    """The job's calls so far, not counting this one."""


def glob_matches(pattern: str, name: str) -> bool:
    """Whether `name` as a whole matches the glob `pattern` (see the module docstring)."""
    return _compiled(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def decide(policy_set: str, rules: Sequence[Rule], call: Call) -> Decision:
    """The decision of the rules of `policy_set` (its resource name) about `call`."""
    for rule in rules:
        kind = rule.WhichOneof("kind")
        finding = None
        if kind == "scope":
            finding = _scope_denial(rule.scope, call)
        elif kind == "limits":
            finding = _limits_denial(rule.limits, call)
        if finding is not None:
            return _decision(policy_set, rule, Verdict.VERDICT_DENY, finding)
    wanted = "tool" if call.tool else "model"
    name = call.tool or call.model
    for rule in rules:
        if rule.WhichOneof("kind") != wanted:
            continue
        matcher: ToolRule | ModelRule = getattr(rule, wanted)
        pattern = _matching_pattern(matcher, name, call)
        if pattern is not None:
            decision = _decision(
                policy_set, rule, matcher.verdict, f"{wanted} {name} matches {pattern!r}"
            )
            if matcher.HasField("approval_timeout"):
                decision.approval_timeout.CopyFrom(matcher.approval_timeout)
            return decision
    return Decision(verdict=Verdict.VERDICT_ALLOW, reason="no rule matched")


def _decision(policy_set: str, rule: Rule, verdict: Verdict.ValueType, finding: str) -> Decision:
    because = f"{rule.description} ({finding})" if rule.description else finding
    return Decision(
        verdict=verdict,
        matched_rule=RuleRef(policy_set=policy_set, rule_id=rule.id),
        reason=f"rule {rule.id}: {because}",
    )


def _applies(scope: Sequence[str], who: str) -> bool:
    return not scope or who in scope


def _matching_pattern(matcher: ToolRule | ModelRule, name: str, call: Call) -> str | None:
    if not (
        _applies(matcher.tenants, call.tenant) and _applies(matcher.principals, call.principal)
    ):
        return None
    return next((p for p in matcher.patterns if glob_matches(p, name)), None)


def _scope_denial(scope: ScopeRule, call: Call) -> str | None:
    if call.tenant in scope.denied_tenants:
        return f"tenant {call.tenant} is denied"
    if not _applies(scope.allowed_tenants, call.tenant):
        return f"tenant {call.tenant} is not allowed"
    if call.principal in scope.denied_principals:
        return f"principal {call.principal} is denied"
    if not _applies(scope.allowed_principals, call.principal):
        return f"principal {call.principal or '(none)'} is not allowed"
    return None


def _limits_denial(limits: LimitsRule, call: Call) -> str | None:
    if not _applies(limits.tenants, call.tenant):
        return None
    counts = call.counts
    if call.model:
        if limits.HasField("max_turns") and counts.turns >= limits.max_turns:
            return f"model calls: {counts.turns} of at most {limits.max_turns}"
        return None
    if limits.HasField("max_tool_calls") and counts.tool_calls >= limits.max_tool_calls:
        return f"tool calls: {counts.tool_calls} of at most {limits.max_tool_calls}"
    if call.tool in limits.max_tool_calls_per_tool:
        limit = limits.max_tool_calls_per_tool[call.tool]
        made = counts.tool_calls_per_tool.get(call.tool, 0)
        if made >= limit:
            return f"tool calls of {call.tool}: {made} of at most {limit}"
    return None


def validate_rules(rules: Sequence[Rule], path: str = "policy_set.rules") -> None:
    """FieldInvalid naming the first bad field (e.g. "policy_set.rules[2].tool.patterns")
    unless every rule is well formed and the ids are unique.

    Fields this server does not know are rejected rather than dropped: a newer client's
    restriction silently ignored would make a rule allow more than its author meant.
    """
    if len(rules) > MAX_RULES:
        raise FieldInvalid(path, f"has {len(rules)} rules, at most {MAX_RULES} are allowed")
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        at = f"{path}[{index}]"
        _validate_rule(rule, at)
        if rule.id in seen:
            raise FieldInvalid(f"{at}.id", f"{rule.id!r} is also the id of rule {seen[rule.id]}")
        seen[rule.id] = index


def _validate_rule(rule: Rule, at: str) -> None:
    _reject_unknown_fields(rule, at)
    if not _RULE_ID.fullmatch(rule.id):
        raise FieldInvalid(f"{at}.id", "must be 1 to 63 letters, digits, '-' and '_'")
    kind = rule.WhichOneof("kind")
    if kind is None:
        raise FieldInvalid(at, "sets none of tool, model, scope and limits")
    _reject_unknown_fields(getattr(rule, kind), f"{at}.{kind}")
    if kind == "tool":
        _validate_matcher(rule.tool, f"{at}.tool")
    elif kind == "model":
        _validate_matcher(rule.model, f"{at}.model")
    elif kind == "scope":
        _validate_scope(rule.scope, f"{at}.scope")
    else:
        _validate_limits(rule.limits, f"{at}.limits")


def _reject_unknown_fields(message: Message, at: str) -> None:
    unknown = UnknownFieldSet(message)
    numbers = sorted({unknown[index].field_number for index in range(len(unknown))})
    if numbers:
        raise FieldInvalid(at, f"has fields this server does not know: numbers {numbers}")


def _validate_matcher(matcher: ToolRule | ModelRule, at: str) -> None:
    if not matcher.patterns:
        raise FieldInvalid(f"{at}.patterns", "needs at least one pattern")
    _validate_entries(matcher.patterns, f"{at}.patterns")
    _validate_entries(matcher.tenants, f"{at}.tenants")
    _validate_entries(matcher.principals, f"{at}.principals")
    if matcher.verdict not in Verdict.values() or matcher.verdict == Verdict.VERDICT_UNSPECIFIED:
        raise FieldInvalid(f"{at}.verdict", "must be ALLOW, DENY or REQUIRE_APPROVAL")
    timeout = matcher.approval_timeout
    if timeout.seconds < 0 or timeout.nanos < 0:
        raise FieldInvalid(f"{at}.approval_timeout", "must not be negative")
    if matcher.HasField("approval_timeout") and (
        matcher.verdict != Verdict.VERDICT_REQUIRE_APPROVAL
    ):
        raise FieldInvalid(f"{at}.approval_timeout", "is only for VERDICT_REQUIRE_APPROVAL")


def _validate_scope(scope: ScopeRule, at: str) -> None:
    lists = ("allowed_tenants", "denied_tenants", "allowed_principals", "denied_principals")
    for name in lists:
        _validate_entries(getattr(scope, name), f"{at}.{name}")
    if not any(getattr(scope, name) for name in lists):
        raise FieldInvalid(at, "names no tenant or principal, so it would decide nothing")


def _validate_limits(limits: LimitsRule, at: str) -> None:
    _validate_entries(limits.tenants, f"{at}.tenants")
    for name in ("max_turns", "max_tool_calls"):
        if limits.HasField(name) and getattr(limits, name) < 0:
            raise FieldInvalid(f"{at}.{name}", "must not be negative")
    for tool, limit in limits.max_tool_calls_per_tool.items():
        where = f"{at}.max_tool_calls_per_tool"
        if not tool:
            raise FieldInvalid(where, "has an empty tool name")
        if limit < 0:
            raise FieldInvalid(f"{where}[{tool}]", "must not be negative")
    unset = not (limits.HasField("max_turns") or limits.HasField("max_tool_calls"))
    if unset and not limits.max_tool_calls_per_tool:
        raise FieldInvalid(at, "sets no limit, so it would decide nothing")


def _validate_entries(entries: Sequence[str], at: str) -> None:
    for index, entry in enumerate(entries):
        if not entry:
            raise FieldInvalid(f"{at}[{index}]", "must not be empty")
