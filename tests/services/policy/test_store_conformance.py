"""The PolicySetStore conformance suite, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from agentrt.policy.v1.policy_pb2 import PolicySet, Rule, ToolRule, Verdict

from services.kit.errors import Aborted, AlreadyExists, FieldInvalid, NotFound, RequestIdReused
from services.policy.store import NewPolicySet, PolicySetChange, PolicySetStore

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def rule(rule_id: str, pattern: str = "*") -> Rule:
    return Rule(id=rule_id, tool=ToolRule(patterns=[pattern], verdict=Verdict.VERDICT_DENY))


def new_set(
    policy_set_id: str = "production",
    rules: tuple[Rule, ...] = (rule("deny-all"),),
    request_id: str = "",
    request_hash: bytes = b"hash-1",
) -> NewPolicySet:
    return NewPolicySet(policy_set_id, "for production jobs", rules, request_id, request_hash)


async def create(store: PolicySetStore, policy_set_id: str = "production") -> PolicySet:
    created, fresh = await store.create(new_set(policy_set_id), T0)
    assert fresh
    return created


# Create and get


async def test_create_makes_version_one_with_an_etag_and_times(store: PolicySetStore) -> None:
    created = await create(store)

    assert created.name == "policySets/production"
    assert created.description == "for production jobs"
    assert [r.id for r in created.rules] == ["deny-all"]
    assert created.version == 1
    assert created.etag
    assert created.create_time.ToDatetime(tzinfo=UTC) == T0
    assert created.update_time.ToDatetime(tzinfo=UTC) == T0
    assert await store.get("production") == created


async def test_create_with_a_taken_id_is_already_exists(store: PolicySetStore) -> None:
    await create(store)
    with pytest.raises(AlreadyExists):
        await store.create(new_set(rules=(rule("other"),)), later(1))
    assert [r.id for r in (await store.get("production")).rules] == ["deny-all"]


async def test_create_with_a_seen_request_id_returns_the_first_set(store: PolicySetStore) -> None:
    first, created = await store.create(new_set(request_id="req-1"), T0)
    again, created_again = await store.create(new_set(request_id="req-1"), later(1))

    assert created and not created_again
    assert again == first


async def test_a_request_id_reused_with_another_body_is_refused(store: PolicySetStore) -> None:
    await store.create(new_set(request_id="req-1"), T0)
    with pytest.raises(RequestIdReused):
        await store.create(new_set("staging", request_id="req-1", request_hash=b"h2"), later(1))
    with pytest.raises(NotFound):
        await store.get("staging")


async def test_concurrent_creates_with_one_request_id_make_one_set(store: PolicySetStore) -> None:
    results = await asyncio.gather(
        *(store.create(new_set(request_id="req-1"), T0) for _ in range(8))
    )
    assert sum(created for _, created in results) == 1
    assert len({policy_set.etag for policy_set, _ in results}) == 1


async def test_get_of_an_unknown_set_is_not_found(store: PolicySetStore) -> None:
    with pytest.raises(NotFound) as error:
        await store.get("nope")
    assert error.value.metadata == {"name": "policySets/nope"}


# List


async def test_list_pages_through_the_sets_by_name(store: PolicySetStore) -> None:
    ids = ["b-set", "a-set", "c-1", "c-set", "a"]
    for policy_set_id in ids:
        await create(store, policy_set_id)

    names: list[str] = []
    token = ""
    pages = 0
    while True:
        page, token = await store.list(2, token)
        names += [policy_set.name for policy_set in page]
        pages += 1
        if not token:
            break
    assert names == [f"policySets/{i}" for i in sorted(ids)]
    assert pages == 3


async def test_list_of_nothing_is_one_empty_page(store: PolicySetStore) -> None:
    assert await store.list(10, "") == ([], "")


async def test_a_foreign_page_token_is_invalid(store: PolicySetStore) -> None:
    for token in ("garbage!", "YWZ0ZXI6", "bzEw"):
        with pytest.raises(FieldInvalid) as error:
            await store.list(10, token)
        assert error.value.field == "page_token"


# Update


async def test_update_replaces_named_fields_and_bumps_the_version(store: PolicySetStore) -> None:
    created = await create(store)

    updated = await store.update(
        "production", PolicySetChange(rules=[rule("a"), rule("b")]), created.etag, later(5)
    )

    assert updated.version == 2
    assert updated.etag != created.etag
    assert updated.description == "for production jobs"
    assert [r.id for r in updated.rules] == ["a", "b"]
    assert updated.create_time == created.create_time
    assert updated.update_time.ToDatetime(tzinfo=UTC) == later(5)
    assert await store.get("production") == updated

    described = await store.update(
        "production", PolicySetChange(description="new words"), "", later(6)
    )
    assert described.version == 3
    assert described.description == "new words"
    assert [r.id for r in described.rules] == ["a", "b"]


async def test_update_can_empty_the_rules_and_the_description(store: PolicySetStore) -> None:
    await create(store)
    updated = await store.update(
        "production", PolicySetChange(description="", rules=[]), "", later(1)
    )
    assert (updated.description, list(updated.rules)) == ("", [])


async def test_update_with_a_stale_etag_is_aborted_and_changes_nothing(
    store: PolicySetStore,
) -> None:
    created = await create(store)
    current = await store.update("production", PolicySetChange(description="v2"), "", later(1))

    for stale in (created.etag, "not-an-etag", "7-0"):
        with pytest.raises(Aborted) as error:
            await store.update("production", PolicySetChange(description="v3"), stale, later(2))
        assert (error.value.code, error.value.reason_name) == ("ABORTED", "ETAG_MISMATCH")
    assert await store.get("production") == current


async def test_concurrent_updates_with_one_etag_let_exactly_one_win(
    store: PolicySetStore,
) -> None:
    created = await create(store)

    async def update(n: int) -> PolicySet | Aborted:
        change = PolicySetChange(description=f"writer {n}")
        try:
            return await store.update("production", change, created.etag, later(n))
        except Aborted as error:
            return error

    results = await asyncio.gather(*(update(n) for n in range(10)))

    winners = [result for result in results if isinstance(result, PolicySet)]
    assert len(winners) == 1
    assert sum(isinstance(result, Aborted) for result in results) == 9
    assert await store.get("production") == winners[0]
    assert winners[0].version == 2


async def test_concurrent_updates_without_etags_all_count(store: PolicySetStore) -> None:
    await create(store)
    await asyncio.gather(
        *(store.update("production", PolicySetChange(description=f"{n}"), "", T0) for n in range(6))
    )
    assert (await store.get("production")).version == 7


async def test_update_of_an_unknown_set_is_not_found(store: PolicySetStore) -> None:
    for etag in ("", "1-0"):
        with pytest.raises(NotFound):
            await store.update("nope", PolicySetChange(description="x"), etag, T0)


# Delete


async def test_delete_removes_the_set(store: PolicySetStore) -> None:
    created = await create(store)
    await store.delete("production", created.etag)
    with pytest.raises(NotFound):
        await store.get("production")
    with pytest.raises(NotFound):
        await store.delete("production", "")


async def test_delete_with_a_stale_etag_is_aborted_and_keeps_the_set(
    store: PolicySetStore,
) -> None:
    created = await create(store)
    await store.update("production", PolicySetChange(description="v2"), "", later(1))
    with pytest.raises(Aborted):
        await store.delete("production", created.etag)
    assert (await store.get("production")).version == 2


async def test_an_etag_of_a_deleted_set_does_not_match_its_successor(
    store: PolicySetStore,
) -> None:
    old = await create(store)
    await store.delete("production", "")
    await store.create(new_set(), later(1))
    with pytest.raises(Aborted):
        await store.update("production", PolicySetChange(description="x"), old.etag, later(2))


async def test_a_deleted_sets_id_and_request_id_can_be_used_again(store: PolicySetStore) -> None:
    await store.create(new_set(request_id="req-1"), T0)
    await store.delete("production", "")
    again, created = await store.create(new_set(request_id="req-1"), later(1))
    assert created
    assert again.version == 1
