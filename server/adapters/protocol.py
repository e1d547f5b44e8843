"""Wire format of ``/v1/adapters``. Readers get names, versions and headline metrics (``AdapterView``); admins
get the registry's full record (manifests with paths and datasets, evaluation reports, promotion history)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

MAX_VERSION = 1_000_000


class PromoteIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    version: Annotated[int, msgspec.Meta(ge=1, le=MAX_VERSION, description="Version number N of NAME@vN to serve.")]


class VersionView(msgspec.Struct, kw_only=True):
    version: int
    lora_name: str  # NAME@vN, usable as a model name
    current: bool
    created_at: float | None
    promoted_by_gate: bool | None  # the evaluation gate's decision (None: not evaluated)
    metrics: dict[str, float]  # held-out headline metrics of the gate (citation validity/recall, F1, ROUGE-L, ...)


class AdapterView(msgspec.Struct, kw_only=True):
    name: str
    current: int | None
    current_lora_name: str | None
    versions: list[VersionView]


class AdapterList(msgspec.Struct, kw_only=True):
    """What readers see."""

    data: list[AdapterView]


class AdapterRecords(msgspec.Struct, kw_only=True):
    """What admins see: ``AdapterRegistry.summary()`` (versions with manifests, paths, evaluation reports, and the
    promotion history with key names)."""

    data: list[dict[str, Any]]


class Promoted(msgspec.Struct, kw_only=True):
    adapter: str
    current: int
    lora_name: str
    served: dict[str, Any]  # what the deployer loaded/unloaded in vLLM, or why vLLM was not reached
