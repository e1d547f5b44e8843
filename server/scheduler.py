"""Periodic background work inside ``pubmind serve``: each task runs in a worker thread every ``interval``
seconds (the first run after ``first_delay``), never two runs of one task at once, and stops with the app.

Tasks here: the scheduled PubMed sync (``sync.interval_hours``; new index generations are swapped in live by
the IndexHolder) and retention (``retention.interval_hours``). Each run is logged, counted in the metrics
(``pubmind_scheduled_runs_total{task, result}``) and, when it changes state, recorded in the audit trail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ingest.pipeline import Pipeline
from pubmind.audit import Actor, AuditLog
from pubmind.settings import Settings
from server.metrics import Metrics

log = logging.getLogger("pubmind.scheduler")


@dataclass
class PeriodicTask:
    name: str
    interval_s: float
    run: Callable[[], dict[str, Any]]  # blocking; returns a summary (logged, and audited by ``audit``)
    first_delay_s: float = 60.0
    audit: Callable[[dict[str, Any]], None] | None = None
    last: dict[str, Any] = field(default_factory=dict)  # {"at", "seconds", "result" | "error"}

    async def loop(self, metrics: Metrics) -> None:
        assert self.interval_s > 0, self.interval_s
        await anyio.sleep(self.first_delay_s)
        while True:
            t0 = time.time()
            try:
                summary = await anyio.to_thread.run_sync(self.run)
                self.last = {"at": t0, "seconds": round(time.time() - t0, 1), "result": summary}
                metrics.scheduled.labels(self.name, "ok").inc()
                log.info("%s finished in %.1f s: %s", self.name, time.time() - t0, summary)
                if self.audit is not None:
                    self.audit(summary)
            except Exception as e:  # a failed run is reported and retried at the next interval
                self.last = {"at": t0, "seconds": round(time.time() - t0, 1), "error": f"{type(e).__name__}: {e}"}
                metrics.scheduled.labels(self.name, "error").inc()
                log.error("%s failed: %s", self.name, self.last["error"])
                if self.audit is not None:
                    self.audit({"error": self.last["error"]})
            await anyio.sleep(self.interval_s)


def scheduled_tasks(settings: Settings) -> list[PeriodicTask]:
    """The tasks ``settings`` asks for."""
    tasks = [PeriodicTask("retention", settings.retention.interval_hours * 3600, lambda: retention(settings),
                          first_delay_s=5.0, audit=lambda s: audit(settings, "retention.run", str(settings.home), s))]
    if settings.sync.interval_hours > 0:
        tasks.append(PeriodicTask("sync", settings.sync.interval_hours * 3600, lambda: sync(settings),
                                  first_delay_s=settings.sync.first_delay_seconds,
                                  audit=lambda s: audit(settings, "sync.run", settings.sync.mirror, s)))
    return tasks


def retention(settings: Settings) -> dict[str, Any]:
    from server.retention import apply_retention

    return apply_retention(settings)


def sync(settings: Settings, pipeline: Pipeline | None = None) -> dict[str, Any]:
    """One sync run; a refused file makes the run an error (later files wait for the next run). ``pipeline``:
    an open ingest pipeline to apply files with (default: one with the configured embedder)."""
    from ingest.sync import Syncer

    with Syncer(settings, pipeline=pipeline, progress=False, log=lambda msg: log.info("sync: %s", msg)) as syncer:
        report = syncer.run(baseline=True, updates=True, max_files=None)
    summary = {"applied": [f["file"] for f in report.applied], "failed": report.failed,
               "waiting": len(report.waiting), "downloaded_bytes": report.downloaded_bytes}
    if report.failed:
        raise RuntimeError(f"sync refused {report.failed['file']}: {report.failed['error']}; "
                           f"{len(report.waiting)} later files wait")
    return summary


def audit(settings: Settings, action: str, target: str, summary: dict[str, Any]) -> None:
    trail = AuditLog(settings.app_db)
    try:
        trail.record(action, target, Actor.system("scheduler"), after=summary)
    finally:
        trail.close()


def start(tasks: list[PeriodicTask], metrics: Metrics) -> list[asyncio.Task[None]]:
    """Run each task's loop in the event loop; cancel the returned tasks at shutdown."""
    return [asyncio.create_task(t.loop(metrics), name=f"scheduled-{t.name}") for t in tasks]


async def stop(running: list[asyncio.Task[None]]) -> None:
    for t in running:
        t.cancel()
    await asyncio.gather(*running, return_exceptions=True)
