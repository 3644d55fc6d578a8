"""Names of params, metrics and tags: checked alike wherever they are stored, so searches find them."""

from __future__ import annotations

from typing import Any

from loopml.errors import ValidationError

MAX_KEY_LENGTH = 250  # the key columns' width


def check_key(key: Any, kind: str) -> None:
    """Refuse an empty, over-long or space-padded `kind` key (kind: 'metric', 'param', 'tag'...)."""
    if not isinstance(key, str) or not key:
        raise ValidationError(f"A {kind} key must be a non-empty string, got {key!r}.")
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationError(
            f"{kind.capitalize()} key '{key[:40]}...' has {len(key)} characters; the limit is {MAX_KEY_LENGTH}."
        )
    if key != key.strip():
        raise ValidationError(
            f"{kind.capitalize()} key {key!r} starts or ends with white space; strip it so searches find it."
        )
