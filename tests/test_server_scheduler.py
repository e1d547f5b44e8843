"""Scheduled work in `pubmind serve`: periodic tasks (errors reported and retried, audited, stopped at
shutdown) and the scheduled PubMed sync against a local NLM-style mirror."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.pipeline import Pipeline
from pubmind.audit import AuditLog
from pubmind.settings import Settings
from retrieval.indexer import Indexer
from server import scheduler
from server.metrics import Metrics
from tests.fixtures_ingest import SAMPLE_1334, SAMPLE_1335
from tests.nlm_mirror import Mirror, MirrorServer, add_file


def counter(metrics: Metrics, task: str, result: str) -> float:
    value = metrics.registry.get_sample_value("pubmind_scheduled_runs_total", {"task": task, "result": result})
    return value or 0.0


def test_periodic_task_runs_reports_errors_and_stops() -> None:
    calls: list[int] = []
    audited: list[dict[str, Any]] = []

    def run() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return {"n": len(calls)}

    metrics = Metrics()
    task = scheduler.PeriodicTask("demo", 0.01, run, first_delay_s=0.0, audit=audited.append)

    async def main() -> None:
        running = scheduler.start([task], metrics)
        for _ in range(500):  # bounded: 5 s at most
            if len(calls) >= 3:
                break
            await asyncio.sleep(0.01)
        await scheduler.stop(running)
        assert all(t.done() for t in running)

    asyncio.run(main())
    assert len(calls) >= 3
    assert counter(metrics, "demo", "error") == 1
    assert counter(metrics, "demo", "ok") >= 2
    assert audited[1] == {"error": "OSError: disk full"}
    assert audited[0] == {"n": 1}


def test_tasks_follow_the_settings(make_settings: Any) -> None:
    assert [t.name for t in scheduler.scheduled_tasks(make_settings())] == ["retention"]
    s = make_settings(sync={"interval_hours": 24})
    tasks = {t.name: t for t in scheduler.scheduled_tasks(s)}
    assert tasks["sync"].interval_s == 24 * 3600


@pytest.fixture()
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    root = tmp_path / "mirror"
    add_file(root, "baseline", "pubmed26n1334.xml.gz", SAMPLE_1334)
    add_file(root, "updatefiles", "pubmed26n1335.xml.gz", SAMPLE_1335)
    with MirrorServer(root) as m:
        yield m


@pytest.mark.network
def test_scheduled_sync_applies_new_files_and_is_audited(make_settings: Any, mirror: Mirror,
                                                         hash_embedder: Any) -> None:
    settings: Settings = make_settings(sync={"mirror": mirror.url, "interval_hours": 24})
    sync_task = next(t for t in scheduler.scheduled_tasks(settings) if t.name == "sync")
    with Indexer(settings, embedder=hash_embedder) as ix:
        sync_task.run = lambda: scheduler.sync(settings, Pipeline(settings, indexer=ix, progress=False))
        first = sync_task.run()
        again = sync_task.run()
    assert first["applied"] == ["baseline/pubmed26n1334.xml.gz", "updatefiles/pubmed26n1335.xml.gz"]
    assert again["applied"] == []
    assert sync_task.audit is not None
    sync_task.audit(first)
    trail = AuditLog(settings.app_db)
    rows = trail.query(action="sync.run")
    trail.close()
    assert rows[0].key_id == "system:scheduler"
    assert rows[0].after["applied"] == first["applied"]
