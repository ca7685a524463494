"""Resume tokens as a person handles them: pasted into a command line."""

from __future__ import annotations

import re

from services.jobs.actions import hash_resume_token, new_resume_token


def test_a_token_is_43_base64url_characters_never_beginning_with_a_dash() -> None:
    # One base64url token in 64 would begin with '-'; 2000 draws would all but surely meet one.
    tokens = [new_resume_token() for _ in range(2000)]

    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{42}", token) for token in tokens)
    assert len(set(tokens)) == len(tokens)


def test_only_the_tokens_hash_is_kept_and_it_tells_tokens_apart() -> None:
    first, second = new_resume_token(), new_resume_token()

    assert hash_resume_token(first) == hash_resume_token(first)
    assert hash_resume_token(first) != hash_resume_token(second)
    assert first.encode() not in hash_resume_token(first)
