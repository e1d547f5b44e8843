"""The admins' pages: Models (each adapter's versions on a timeline, a version's gate report beside its
parent's, promote and roll back with confirmation), Re-tune (start a job, follow it live with its loss curve,
cancel it, its log tail; re-tune policies) and Keys (create, shown once; list; revoke).

Every change goes through the API's services (``AdapterService`` loads into vLLM first and records the audit
trail; ``RetuneService``, ``PolicyService``, ``KeyService``), so the workbench never bypasses what the API checks
and records. Every handler is admin-only (``require_role("admin")``), GETs included."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
from litestar import MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template

from finetune.evaluate import METRICS
from finetune.jobs import TUNABLE
from finetune.registry import AdapterRegistry, check_name
from finetune.store import ACTIVE_JOB_STATUSES, CorrectionStore
from pubmind.errors import Conflict, InvalidInput, NotFound
from pubmind.settings import RetunePolicy, Settings
from server.adapters.protocol import AdapterRecords
from server.adapters.service import AdapterService
from server.auth import ROLES, Principal, check_role, require_role
from server.keys.service import KeyService
from server.retune.policy import PolicyService
from server.retune.protocol import RetuneIn
from server.retune.service import RetuneService
from server.ui.views import form_int, form_value, page, render

UiRequest = Request[Principal, Any, Any]
ADMIN = [require_role("admin")]
LOG_TAIL_BYTES = 8000
# Hyperparameters on the Re-tune form: name -> type (empty fields keep settings.finetune's value)
HP_TYPES: dict[str, type] = {"epochs": float, "learning_rate": float, "lora_r": int, "lora_alpha": int,
                             "lora_dropout": float, "batch_size": int, "max_seq_len": int, "distractors": int,
                             "heldout_fraction": float, "seed": int, "target_modules": list}


# ---- view models ----------------------------------------------------------------------------------------
def metric_rows(candidate: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[dict[str, Any]]:
    """(metric, candidate, baseline, delta) for each gate metric either side has."""
    rows = []
    for m in METRICS:
        c, b = candidate.get(m), baseline.get(m)
        if isinstance(c, int | float) or isinstance(b, int | float):
            delta = c - b if isinstance(c, int | float) and isinstance(b, int | float) else None
            rows.append({"metric": m, "candidate": c, "baseline": b, "delta": delta})
    return rows


def sample_pairs(candidate: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[dict[str, str]]:
    """The gate's sample answers side by side (same held-out questions, same order)."""
    cs, bs = candidate.get("samples") or [], baseline.get("samples") or []
    return [{"question": c.get("question", ""), "candidate": c.get("answer", ""), "baseline": b.get("answer", "")}
            for c, b in zip(cs, bs, strict=False)]


def version_row(v: Mapping[str, Any]) -> dict[str, Any]:
    """One version of the timeline, from ``AdapterRegistry.summary()``'s version record."""
    m = v.get("manifest") or {}
    ev = m.get("evaluation") or {}
    ds = m.get("dataset") or {}
    hp = {k: val for k, val in (m.get("hyperparameters") or {}).items() if k in TUNABLE}
    return {"version": v["version"], "lora_name": v["lora_name"], "current": v["current"],
            "created_at": m.get("created_at"), "parent": m.get("parent_version"),
            "dataset_hash": m.get("dataset_hash") or ds.get("hash"), "train": ds.get("train"),
            "heldout": ds.get("heldout"), "hyperparameters": hp, "training": m.get("metrics") or {},
            "gate": None if not ev else ev.get("promote"), "reasons": ev.get("reasons") or [],
            "metrics": metric_rows(ev.get("candidate_metrics") or {}, ev.get("baseline_metrics") or {}),
            "job_id": m.get("job_id")}


async def _records(adapter_service: AdapterService) -> list[dict[str, Any]]:
    listing = await adapter_service.list(detail=True)
    assert isinstance(listing, AdapterRecords)
    return listing.data


async def _adapter(adapter_service: AdapterService, name: str) -> dict[str, Any]:
    check_name(name)
    for a in await _records(adapter_service):
        if a["name"] == name:
            return a
    raise NotFound(f"adapter {name!r} not found", param="adapter")


# ---- Models ---------------------------------------------------------------------------------------------
@get("/models", include_in_schema=False, guards=ADMIN)
async def models_page(request: UiRequest, adapter_service: NamedDependency[AdapterService],
                      registry: NamedDependency[AdapterRegistry]) -> Template:
    def rollback_to(name: str) -> int | None:
        try:
            return registry.rollback_target(name).version
        except Conflict:
            return None

    adapters = [{"name": a["name"], "current": a["current"], "history": list(reversed(a["history"])),
                 "versions": [version_row(v) for v in reversed(a["versions"])],
                 "rollback_to": await anyio.to_thread.run_sync(rollback_to, a["name"])}
                for a in await _records(adapter_service)]
    return page("models.html", request, adapters=adapters)


@get("/models/{name:str}/versions/{version:int}", include_in_schema=False, guards=ADMIN)
async def version_page(request: UiRequest, name: FromPath[str], version: FromPath[int],
                       adapter_service: NamedDependency[AdapterService]) -> Template:
    a = await _adapter(adapter_service, name)
    rec = next((v for v in a["versions"] if v["version"] == version), None)
    if rec is None:
        raise NotFound(f"adapter {name!r} has no version {version}", param="version")
    row = version_row(rec)
    ev = rec["manifest"].get("evaluation") or {}
    parent = next((version_row(v) for v in a["versions"] if v["version"] == row["parent"]), None)
    trained = metric_rows(ev.get("candidate_trained_metrics") or {}, ev.get("baseline_trained_metrics") or {})
    return page("models_version.html", request, adapter=name, v=row, parent=parent, ev=ev, trained=trained,
                samples=sample_pairs(ev.get("candidate_metrics") or {}, ev.get("baseline_metrics") or {}),
                promoted_before=version in {h["version"] for h in a["history"] if h.get("action") == "promote"})


@get("/models/{name:str}/confirm", include_in_schema=False, guards=ADMIN)
async def confirm_page(request: UiRequest, name: FromPath[str], registry: NamedDependency[AdapterRegistry],
                       action: FromQuery[str], version: FromQuery[int | None] = None) -> Template:
    """The confirmation step of a promotion or a rollback (what will be served instead of what)."""
    check_name(name)
    current = await anyio.to_thread.run_sync(registry.current, name)
    if action == "promote":
        if version is None:
            raise InvalidInput("version is required to promote", param="version")
        target = await anyio.to_thread.run_sync(registry.get, name, version)
    elif action == "rollback":
        target = await anyio.to_thread.run_sync(registry.rollback_target, name)
    else:
        raise InvalidInput(f"action must be 'promote' or 'rollback', got {action!r}", param="action")
    return page("models_confirm.html", request, adapter=name, action=action, target=target.version,
                current=current.version if current else None)


@post("/models/{name:str}/promote", include_in_schema=False, guards=ADMIN, status_code=303)
async def promote(request: UiRequest, name: FromPath[str], adapter_service: NamedDependency[AdapterService]) -> Redirect:
    form = await request.form()
    version = form_int(form, "version", lo=1, hi=1_000_000)
    if version is None:
        raise InvalidInput("version is required to promote", param="version")
    done = await adapter_service.promote(name, version, by=request.user)
    return Redirect(f"/ui/models?done=promote&adapter={name}&current={done.current}#adapter-{name}", status_code=303)


@post("/models/{name:str}/rollback", include_in_schema=False, guards=ADMIN, status_code=303)
async def rollback(request: UiRequest, name: FromPath[str], adapter_service: NamedDependency[AdapterService]) -> Redirect:
    done = await adapter_service.rollback(name, by=request.user)
    return Redirect(f"/ui/models?done=rollback&adapter={name}&current={done.current}#adapter-{name}", status_code=303)


# ---- Re-tune --------------------------------------------------------------------------------------------
def hyperparameters(form: Any) -> dict[str, Any]:
    """The form's non-empty ``hp_*`` fields, typed (a bad number is InvalidInput naming the field)."""
    out: dict[str, Any] = {}
    for key, kind in HP_TYPES.items():
        raw = form_value(form, f"hp_{key}", max_chars=500).strip()
        if not raw:
            continue
        if kind is list:
            out[key] = [p.strip() for p in raw.split(",") if p.strip()]
            continue
        try:
            out[key] = kind(raw)
        except ValueError:
            raise InvalidInput(f"hp_{key} must be {'a whole number' if kind is int else 'a number'}, got {raw!r}",
                               param=f"hp_{key}") from None
    return out


def log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a job's log (from a line start), '' when there is none yet."""
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - limit))
        data = f.read()
    text = data.decode("utf-8", errors="replace")
    return text.split("\n", 1)[1] if size > limit and "\n" in text else text


@get("/retune", include_in_schema=False, guards=ADMIN)
async def retune_page(request: UiRequest, retune_service: NamedDependency[RetuneService],
                      policy_service: NamedDependency[PolicyService], registry: NamedDependency[AdapterRegistry],
                      corrections: NamedDependency[CorrectionStore], settings: NamedDependency[Settings]) -> Template:
    jobs = list(reversed((await retune_service.find(None)).data))
    names = await anyio.to_thread.run_sync(registry.names)
    accepted = await anyio.to_thread.run_sync(corrections.count, "accepted")
    policies = await anyio.to_thread.run_sync(policy_service.views)
    defaults = {k: getattr(settings.finetune, k) for k in HP_TYPES}
    defaults["target_modules"] = ", ".join(settings.finetune.target_modules)
    return page("retune.html", request, jobs=jobs, names=names, accepted=accepted, policies=policies,
                defaults=defaults, min_examples=settings.finetune.min_examples,
                check_s=settings.finetune.policy_check_seconds)


@post("/retune", include_in_schema=False, guards=ADMIN, status_code=303)
async def retune_start(request: UiRequest, retune_service: NamedDependency[RetuneService]) -> Redirect:
    form = await request.form()
    adapter = check_name(form_value(form, "adapter", max_chars=64).strip())
    data = RetuneIn(adapter=adapter, hyperparameters=hyperparameters(form),
                    min_examples=form_int(form, "min_examples", lo=1, hi=10_000_000))
    started = await retune_service.start(data, by=request.user)
    return Redirect(f"/ui/retune/{started.job_id}", status_code=303)


def _job_context(job: dict[str, Any], settings: Settings) -> dict[str, Any]:
    ev = job.get("evaluation") or {}
    return {"job": job, "active": job["status"] in ACTIVE_JOB_STATUSES,
            "loss": {"x": [s for s, _ in job["loss_history"]], "series": [["loss", [v for _, v in job["loss_history"]]]],
                     "xlabel": "step"},
            "log": log_tail(settings.jobs_dir / job["job_id"] / "log.txt"),
            "metrics": metric_rows(ev.get("candidate_metrics") or {}, ev.get("baseline_metrics") or {})}


@get("/retune/{job_id:str}", include_in_schema=False, guards=ADMIN)
async def job_page(request: UiRequest, job_id: FromPath[str], retune_service: NamedDependency[RetuneService],
                   settings: NamedDependency[Settings]) -> Template:
    job = await retune_service.get(job_id)
    return page("retune_job.html", request, **_job_context(job, settings))


@get("/retune/{job_id:str}/live", include_in_schema=False, guards=ADMIN)
async def job_live(request: UiRequest, job_id: FromPath[str], retune_service: NamedDependency[RetuneService],
                   settings: NamedDependency[Settings]) -> Response[str]:
    """The live part of a job page (htmx polls it every 2 s while the job is active; then it stops)."""
    job = await retune_service.get(job_id)
    html = render(request, "_retune_live.html", **_job_context(job, settings))
    return Response(html, media_type=MediaType.HTML)


@post("/retune/{job_id:str}/cancel", include_in_schema=False, guards=ADMIN, status_code=303)
async def job_cancel(request: UiRequest, job_id: FromPath[str], retune_service: NamedDependency[RetuneService]) -> Redirect:
    await retune_service.cancel(job_id, by=request.user)
    return Redirect(f"/ui/retune/{job_id}", status_code=303)


@post("/retune/policies", include_in_schema=False, guards=ADMIN, status_code=303)
async def policy_set(request: UiRequest, policy_service: NamedDependency[PolicyService]) -> Redirect:
    form = await request.form()
    adapter = check_name(form_value(form, "adapter", max_chars=64).strip())
    after = form_int(form, "after_corrections", lo=1, hi=1_000_000)
    raw_days = form_value(form, "every_days", max_chars=20).strip()
    try:
        every = float(raw_days) if raw_days else None
    except ValueError:
        raise InvalidInput(f"every_days must be a number of days, got {raw_days!r}", param="every_days") from None
    if every is not None and not 0 < every <= 3650:
        raise InvalidInput(f"every_days must be above 0 and at most 3650, got {every:g}", param="every_days")
    policy = RetunePolicy(after_corrections=after, every_days=every)
    await anyio.to_thread.run_sync(policy_service.set, adapter, policy, request.user)
    return Redirect("/ui/retune#policies", status_code=303)


# ---- Keys -----------------------------------------------------------------------------------------------
@get("/keys", include_in_schema=False, guards=ADMIN)
async def keys_page(request: UiRequest, key_service: NamedDependency[KeyService]) -> Template:
    keys = await key_service.list(include_revoked=True)
    return page("keys.html", request, keys=keys.data, roles=ROLES, created=None)


@post("/keys", include_in_schema=False, guards=ADMIN, status_code=201)
async def key_create(request: UiRequest, key_service: NamedDependency[KeyService]) -> Template:
    """Creates a key and shows it on this one response (never again: only its hash is stored)."""
    form = await request.form()
    name = form_value(form, "name", max_chars=100).strip()
    role = check_role(form_value(form, "role", max_chars=20))
    if not name:
        raise InvalidInput("name is empty: name who or what the key is for", param="name")
    created = await key_service.create(name, role, by=request.user)
    keys = await key_service.list(include_revoked=True)
    resp = page("keys.html", request, status_code=201, keys=keys.data, roles=ROLES, created=created)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@get("/keys/{name:str}/revoke", include_in_schema=False, guards=ADMIN)
async def key_confirm(request: UiRequest, name: FromPath[str], key_service: NamedDependency[KeyService]) -> Template:
    keys = await key_service.list()
    key = next((k for k in keys.data if k.name == name), None)
    if key is None:
        raise NotFound(f"no active API key named {name!r}", param="name")
    return page("keys_confirm.html", request, key=key, own=key.key_id == request.user.key_id)


@post("/keys/{name:str}/revoke", include_in_schema=False, guards=ADMIN, status_code=303)
async def key_revoke(request: UiRequest, name: FromPath[str], key_service: NamedDependency[KeyService]) -> Redirect:
    await key_service.revoke(name, by=request.user)
    return Redirect("/ui/keys", status_code=303)


HANDLERS = [models_page, version_page, confirm_page, promote, rollback, retune_page, retune_start, job_page, job_live,
            job_cancel, policy_set, keys_page, key_create, key_confirm, key_revoke]
