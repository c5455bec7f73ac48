"""jsonutil.compact: the fast walk gives exactly what the plain recursive definition gives."""

from __future__ import annotations

from collections import UserString
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from service.jsonutil import compact


def reference(value: Any) -> Any:
    """The definition compact() had before it was made fast (and must still meet)."""
    if isinstance(value, Mapping):
        out = {k: reference(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [reference(v) for v in value if v not in (None, "", [], {})]
    return value


LEAVES = st.sampled_from([
    None, "", "x", 0, 0.0, -0.0, 1, 2.5, True, False, [], {}, (), (1,),
    MappingProxyType({}), MappingProxyType({"a": None}), UserString(""),
])
JSON_LIKE = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("abcd"), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(JSON_LIKE)
def test_same_as_the_definition(value: Any) -> None:
    got, want = compact(value), reference(value)
    assert got == want
    assert repr(got) == repr(want)  # same types and member order too


@pytest.mark.parametrize(("value", "expected"), [
    ({"a": None, "b": "", "c": [], "d": {}, "e": 0, "f": False}, {"e": 0, "f": False}),
    ({"a": {"b": None}}, {}),                  # a member empty after compaction goes
    ([{"a": None}, None, ""], [{}]),           # an array item is judged before compaction
    ({"a": [None, ""]}, {}),
])
def test_cases(value: Any, expected: Any) -> None:
    assert compact(value) == expected
