"""The names DESIGN.md promises resolve from the top-level package."""

from __future__ import annotations

import pytest

import prunekit as pk


@pytest.mark.parametrize("name", sorted(pk._PUBLIC))
def test_public_name_resolves(name: str) -> None:
    assert getattr(pk, name) is not None
    assert name in dir(pk)


def test_unknown_name_is_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pk.nope  # noqa: B018
