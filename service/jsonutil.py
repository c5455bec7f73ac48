"""JSON helpers shared across layers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_EMPTY = (None, "", [], {})
_LEAVES = frozenset({str, int, float, bool, type(None)})  # JSON values compact() returns as they are
_NEVER_EMPTY = frozenset({int, float, bool})               # equal to none of _EMPTY
_OBJECT = (dict, Mapping)  # dict first: isinstance's exact-type fast path, before the ABC check


def compact(value: Any) -> Any:
    """Drop null, empty-string, empty-list and empty-object members, recursively.

    An object member is dropped when it is empty after compaction; an array item when it is empty
    before (so ``[{"a": null}]`` becomes ``[{}]``). It walks the whole response on every call, so
    the JSON types are sorted out by ``type()``: an exact str, dict or list is empty when it is
    falsy, a number or bool never is, and anything else is compared with ``_EMPTY`` as such.
    """
    if isinstance(value, _OBJECT):
        out = {}
        for key, item in value.items():
            kind = type(item)
            if kind is str:
                if item:
                    out[key] = item
            elif kind is dict or kind is list:
                item = compact(item)  # a dict or a list again
                if item:
                    out[key] = item
            elif kind in _NEVER_EMPTY:
                out[key] = item
            else:
                if kind not in _LEAVES:
                    item = compact(item)
                if item not in _EMPTY:
                    out[key] = item
        return out
    if isinstance(value, list):
        items = []
        for item in value:
            kind = type(item)
            if kind is str:
                if item:
                    items.append(item)
            elif kind is dict or kind is list:
                if item:
                    items.append(compact(item))
            elif kind in _NEVER_EMPTY:
                items.append(item)
            elif item not in _EMPTY:
                items.append(item if kind in _LEAVES else compact(item))
        return items
    return value
