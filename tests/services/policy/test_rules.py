"""Policy rules: deciding calls in the documented order, and checking rules on write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import pytest
from agentrt.policy.v1.policy_pb2 import (
    Decision,
    JobCounts,
    LimitsRule,
    ModelRule,
    Rule,
    ScopeRule,
    ToolRule,
    Verdict,
)
from google.protobuf.duration_pb2 import Duration

from services.kit.errors import FieldInvalid
from services.policy.rules import MAX_RULES, Call, decide, glob_matches, validate_rules

SET = "policySets/production"
ALLOW = Verdict.VERDICT_ALLOW
DENY = Verdict.VERDICT_DENY
APPROVAL = Verdict.VERDICT_REQUIRE_APPROVAL
VerdictValue: TypeAlias = Verdict.ValueType


Scope = tuple[str, ...]


def tool_rule(
    rule_id: str,
    *patterns: str,
    verdict: VerdictValue = DENY,
    tenants: Scope = (),
    principals: Scope = (),
) -> Rule:
    matcher = ToolRule(patterns=patterns, verdict=verdict, tenants=tenants, principals=principals)
    return Rule(id=rule_id, tool=matcher)


def model_rule(
    rule_id: str,
    *patterns: str,
    verdict: VerdictValue = DENY,
    tenants: Scope = (),
    principals: Scope = (),
) -> Rule:
    matcher = ModelRule(patterns=patterns, verdict=verdict, tenants=tenants, principals=principals)
    return Rule(id=rule_id, model=matcher)


def tool_call(
    name: str, tenant: str = "acme", principal: str = "alice", turns: int = 0, tool_calls: int = 0
) -> Call:
    return Call(tenant, principal, tool=name, counts=JobCounts(turns=turns, tool_calls=tool_calls))


def model_call(model: str, tenant: str = "acme", principal: str = "alice", turns: int = 0) -> Call:
    return Call(tenant, principal, model=model, counts=JobCounts(turns=turns))


def matched(decision: Decision) -> str:
    return decision.matched_rule.rule_id if decision.HasField("matched_rule") else ""


# Globs


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("file_*", "file_write", True),
        ("file_*", "file_", True),
        ("file_*", "my_file_write", False),
        ("*", "", True),
        ("gpt-4?", "gpt-4o", True),
        ("gpt-4?", "gpt-4", False),
        ("gpt-4?", "gpt-4oo", False),
        ("File_*", "file_write", False),
        ("a.b", "axb", False),
        ("[ab]", "a", False),
        ("[ab]", "[ab]", True),
        ("ns/*", "ns/deep/tool", True),
        ("*write*", "file_write_all", True),
    ],
)
def test_globs_match_whole_names_with_star_and_question_mark_only(
    pattern: str, name: str, expected: bool
) -> None:
    assert glob_matches(pattern, name) is expected


# Tool and model rules


def test_no_rules_allow_everything_without_a_matched_rule() -> None:
    decision = decide(SET, [], tool_call("shell"))
    assert decision.verdict == ALLOW
    assert not decision.HasField("matched_rule")
    assert decision.reason == "no rule matched"


@pytest.mark.parametrize("verdict", [ALLOW, DENY, APPROVAL])
def test_a_matching_tool_rule_decides_with_its_verdict(verdict: VerdictValue) -> None:
    rules = [tool_rule("files", "file_*", verdict=verdict)]
    decision = decide(SET, rules, tool_call("file_write"))
    assert decision.verdict == verdict
    assert decision.matched_rule.policy_set == SET
    assert decision.matched_rule.rule_id == "files"
    assert decision.reason == "rule files: tool file_write matches 'file_*'"


@pytest.mark.parametrize("verdict", [ALLOW, DENY, APPROVAL])
def test_a_matching_model_rule_decides_with_its_verdict(verdict: VerdictValue) -> None:
    rules = [model_rule("big-models", "gpt-4*", "o1*", verdict=verdict)]
    decision = decide(SET, rules, model_call("o1-preview"))
    assert decision.verdict == verdict
    assert matched(decision) == "big-models"


def test_tool_rules_do_not_decide_model_calls_nor_model_rules_tool_calls() -> None:
    rules = [tool_rule("no-tools", "*"), model_rule("no-models", "*")]
    assert matched(decide(SET, rules, model_call("gpt-4o"))) == "no-models"
    assert matched(decide(SET, rules, tool_call("search"))) == "no-tools"
    assert decide(SET, rules[:1], model_call("gpt-4o")).verdict == ALLOW
    assert decide(SET, rules[1:], tool_call("search")).verdict == ALLOW


def test_the_first_matching_rule_decides() -> None:
    rules = [
        tool_rule("reads", "file_read", verdict=ALLOW),
        tool_rule("files", "file_*", verdict=APPROVAL),
        tool_rule("deny-rest", "*", verdict=DENY),
    ]
    assert matched(decide(SET, rules, tool_call("file_read"))) == "reads"
    assert decide(SET, rules, tool_call("file_write")).verdict == APPROVAL
    last = decide(SET, rules, tool_call("shell"))
    assert (last.verdict, matched(last)) == (DENY, "deny-rest")


def test_a_last_star_deny_rule_makes_an_allowlist() -> None:
    rules = [
        model_rule("small", "local*", verdict=ALLOW),
        model_rule("allowlist", "*", verdict=DENY),
    ]
    assert decide(SET, rules, model_call("local-slow")).verdict == ALLOW
    assert decide(SET, rules, model_call("gpt-4o")).verdict == DENY


def test_tool_and_model_rules_apply_only_to_their_tenants_and_principals() -> None:
    rules = [
        tool_rule("acme-shell", "shell", tenants=("acme",), principals=("bob",)),
        model_rule("globex-gpt", "gpt-*", tenants=("globex",)),
    ]
    assert decide(SET, rules, tool_call("shell", principal="bob")).verdict == DENY
    assert decide(SET, rules, tool_call("shell", principal="alice")).verdict == ALLOW
    assert decide(SET, rules, tool_call("shell", tenant="globex", principal="bob")).verdict == ALLOW
    assert decide(SET, rules, model_call("gpt-4o", tenant="globex")).verdict == DENY
    assert decide(SET, rules, model_call("gpt-4o", tenant="acme")).verdict == ALLOW


def test_the_description_becomes_the_reason() -> None:
    rule = tool_rule("writes", "file_write", verdict=APPROVAL)
    rule.description = "a person checks every write"
    decision = decide(SET, [rule], tool_call("file_write"))
    assert decision.reason == (
        "rule writes: a person checks every write (tool file_write matches 'file_write')"
    )


def test_require_approval_carries_the_rules_approval_timeout() -> None:
    rule = tool_rule("writes", "file_write", verdict=APPROVAL)
    rule.tool.approval_timeout.FromSeconds(300)
    decision = decide(SET, [rule], tool_call("file_write"))
    assert decision.approval_timeout == Duration(seconds=300)
    no_timeout = decide(
        SET, [tool_rule("w", "file_write", verdict=APPROVAL)], tool_call("file_write")
    )
    assert not no_timeout.HasField("approval_timeout")


# Scope rules


def scope(rule_id: str = "scope", **lists: Sequence[str]) -> Rule:
    return Rule(id=rule_id, scope=ScopeRule(**lists))


@pytest.mark.parametrize(
    ("rule", "tenant", "principal", "reason"),
    [
        (scope(allowed_tenants=("acme",)), "globex", "alice", "tenant globex is not allowed"),
        (scope(denied_tenants=("globex",)), "globex", "alice", "tenant globex is denied"),
        (scope(allowed_principals=["alice"]), "acme", "bob", "principal bob is not allowed"),
        (scope(allowed_principals=["alice"]), "acme", "", "principal (none) is not allowed"),
        (scope(denied_principals=["bob"]), "acme", "bob", "principal bob is denied"),
    ],
)
def test_a_scope_rule_denies_tenants_and_principals_out_of_scope(
    rule: Rule, tenant: str, principal: str, reason: str
) -> None:
    for call in (tool_call("search", tenant, principal), model_call("gpt-4o", tenant, principal)):
        decision = decide(SET, [rule], call)
        assert (decision.verdict, matched(decision)) == (DENY, "scope")
        assert decision.reason == f"rule scope: {reason}"


def test_a_scope_rule_lets_tenants_and_principals_in_scope_through() -> None:
    rules = [
        scope(allowed_tenants=["acme"], denied_principals=["mallory"]),
        tool_rule("files", "file_*", verdict=APPROVAL),
    ]
    assert decide(SET, rules, tool_call("search")).verdict == ALLOW
    assert matched(decide(SET, rules, tool_call("file_write"))) == "files"


def test_denying_rules_come_first_wherever_they_are() -> None:
    rules = [
        tool_rule("allow-all", "*", verdict=ALLOW),
        scope("no-globex", denied_tenants=("globex",)),
        Rule(id="limits", limits=LimitsRule(max_tool_calls=3)),
    ]
    assert matched(decide(SET, rules, tool_call("search", tenant="globex"))) == "no-globex"
    assert matched(decide(SET, rules, tool_call("search", tool_calls=3))) == "limits"
    assert matched(decide(SET, rules, tool_call("search", tool_calls=2))) == "allow-all"


def test_the_first_denying_scope_or_limits_rule_decides() -> None:
    rules = [
        Rule(id="turns", limits=LimitsRule(max_turns=10)),
        scope("first", denied_tenants=("globex",)),
        scope("second", allowed_tenants=("acme",)),
    ]
    assert matched(decide(SET, rules, model_call("m", tenant="globex", turns=99))) == "turns"
    assert matched(decide(SET, rules, model_call("m", tenant="globex"))) == "first"
    assert matched(decide(SET, rules, model_call("m", tenant="initech"))) == "second"


# Limits rules


def test_max_turns_denies_the_model_call_past_the_limit_only() -> None:
    rules = [Rule(id="turns", limits=LimitsRule(max_turns=5))]
    assert decide(SET, rules, model_call("m", turns=4)).verdict == ALLOW
    denied = decide(SET, rules, model_call("m", turns=5))
    assert denied.verdict == DENY
    assert denied.reason == "rule turns: model calls: 5 of at most 5"
    assert decide(SET, rules, tool_call("search", turns=50)).verdict == ALLOW


def test_max_tool_calls_counts_every_tool() -> None:
    rules = [Rule(id="tools", limits=LimitsRule(max_tool_calls=3))]
    assert decide(SET, rules, tool_call("search", tool_calls=2)).verdict == ALLOW
    denied = decide(SET, rules, tool_call("search", tool_calls=3))
    assert denied.reason == "rule tools: tool calls: 3 of at most 3"
    assert decide(SET, rules, model_call("m")).verdict == ALLOW


def test_max_tool_calls_per_tool_counts_that_tool_only() -> None:
    rules = [Rule(id="writes", limits=LimitsRule(max_tool_calls_per_tool={"file_write": 5}))]
    counts = JobCounts(tool_calls=40, tool_calls_per_tool={"file_write": 5, "search": 35})
    denied = decide(SET, rules, Call("acme", "alice", tool="file_write", counts=counts))
    assert denied.verdict == DENY
    assert denied.reason == "rule writes: tool calls of file_write: 5 of at most 5"
    assert decide(SET, rules, Call("acme", "alice", tool="search", counts=counts)).verdict == ALLOW
    assert decide(SET, rules, tool_call("file_write")).verdict == ALLOW


def test_a_zero_limit_denies_every_such_call() -> None:
    rules = [Rule(id="no-tools", limits=LimitsRule(max_tool_calls=0))]
    assert decide(SET, rules, tool_call("search")).verdict == DENY


def test_limits_apply_to_their_tenants_only() -> None:
    rules = [Rule(id="trial", limits=LimitsRule(tenants=["trial"], max_turns=1))]
    assert decide(SET, rules, model_call("m", tenant="trial", turns=1)).verdict == DENY
    assert decide(SET, rules, model_call("m", tenant="acme", turns=1)).verdict == ALLOW


# Validation


def invalid_field(rules: list[Rule]) -> str:
    with pytest.raises(FieldInvalid) as error:
        validate_rules(rules)
    return error.value.field


def test_well_formed_rules_of_every_kind_pass() -> None:
    approval = tool_rule("writes", "file_*", verdict=APPROVAL)
    approval.tool.approval_timeout.FromSeconds(60)
    validate_rules(
        [
            approval,
            model_rule("models", "gpt-*", verdict=ALLOW, tenants=("acme",)),
            scope("scope", denied_principals=["mallory"]),
            Rule(id="limits_1", limits=LimitsRule(max_tool_calls_per_tool={"shell": 0})),
        ]
    )


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        (Rule(tool=ToolRule(patterns=["x"], verdict=DENY)), "policy_set.rules[1].id"),
        (tool_rule("bad id!", "x"), "policy_set.rules[1].id"),
        (tool_rule("x" * 64, "x"), "policy_set.rules[1].id"),
        (Rule(id="kindless"), "policy_set.rules[1]"),
        (tool_rule("t"), "policy_set.rules[1].tool.patterns"),
        (model_rule("m"), "policy_set.rules[1].model.patterns"),
        (tool_rule("t", "ok", ""), "policy_set.rules[1].tool.patterns[1]"),
        (
            tool_rule("t", "x", verdict=Verdict.VERDICT_UNSPECIFIED),
            "policy_set.rules[1].tool.verdict",
        ),
        (model_rule("m", "x", verdict=Verdict.ValueType(7)), "policy_set.rules[1].model.verdict"),
        (tool_rule("t", "x", tenants=("",)), "policy_set.rules[1].tool.tenants[0]"),
        (model_rule("m", "x", principals=("a", "")), "policy_set.rules[1].model.principals[1]"),
        (scope("s"), "policy_set.rules[1].scope"),
        (scope("s", denied_tenants=("",)), "policy_set.rules[1].scope.denied_tenants[0]"),
        (Rule(id="l", limits=LimitsRule()), "policy_set.rules[1].limits"),
        (Rule(id="l", limits=LimitsRule(max_turns=-1)), "policy_set.rules[1].limits.max_turns"),
        (
            Rule(id="l", limits=LimitsRule(max_tool_calls_per_tool={"": 1})),
            "policy_set.rules[1].limits.max_tool_calls_per_tool",
        ),
        (
            Rule(id="l", limits=LimitsRule(max_tool_calls_per_tool={"shell": -2})),
            "policy_set.rules[1].limits.max_tool_calls_per_tool[shell]",
        ),
        (tool_rule("first", "x"), "policy_set.rules[1].id"),
    ],
)
def test_a_bad_rule_is_invalid_and_names_its_field(rule: Rule, field: str) -> None:
    assert invalid_field([tool_rule("first", "*"), rule]) == field


def test_an_approval_timeout_must_be_positive_and_go_with_require_approval() -> None:
    negative = tool_rule("t", "x", verdict=APPROVAL)
    negative.tool.approval_timeout.seconds = -1
    assert invalid_field([negative]) == "policy_set.rules[0].tool.approval_timeout"
    with_deny = model_rule("m", "x", verdict=DENY)
    with_deny.model.approval_timeout.FromSeconds(5)
    assert invalid_field([with_deny]) == "policy_set.rules[0].model.approval_timeout"


def test_fields_this_server_does_not_know_are_rejected() -> None:
    unknown_field_100 = bytes([0xA0, 0x06, 0x01])
    rule = Rule.FromString(tool_rule("t", "x").SerializeToString() + unknown_field_100)
    assert invalid_field([rule]) == "policy_set.rules[0]"
    inner = ToolRule.FromString(
        ToolRule(patterns=["x"], verdict=DENY).SerializeToString() + unknown_field_100
    )
    assert invalid_field([Rule(id="t", tool=inner)]) == "policy_set.rules[0].tool"


def test_at_most_a_thousand_rules() -> None:
    rules = [tool_rule(f"r{i}", "x") for i in range(MAX_RULES)]
    validate_rules(rules)
    assert invalid_field([*rules, tool_rule("extra", "x")]) == "policy_set.rules"
