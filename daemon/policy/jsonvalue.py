"""JSON as a type: what ``json.loads`` gives back, and what the API and the store hand on.

``JSON`` is any JSON value; ``JSONObject`` a JSON object. Code that knows a record's shape
uses a TypedDict for it (the store's rows, the status snapshot); these are for the values
whose shape is open: an event's ``data``, a memory's value, a wire body before it is checked.
"""

from __future__ import annotations

from typing import TypeAlias, Union

# Union with forward references, not a string: the aliases are real objects at run time too
# (typing.get_type_hints of a TypedDict that uses them, as tests/test_store_rows.py does).
JSON: TypeAlias = Union[None, bool, int, float, str, list["JSON"], dict[str, "JSON"]]  # noqa: UP007
JSONObject: TypeAlias = dict[str, JSON]
