"""The shape of a JSON document, named once for every wire and file format that carries one."""

from __future__ import annotations

from typing import TypeAlias

# Any JSON value: what json.loads returns and json.dumps takes. A reader narrows it
# (isinstance) before it trusts a field; a writer builds it from these types only.
JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None
# A JSON object: the document most formats are.
JSONObject: TypeAlias = dict[str, JSON]
