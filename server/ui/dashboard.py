"""The Dashboard (curators, admins): charts over time from pubmind's own records, for people without Grafana.

Sources (read-only queries of ``settings.app_db`` and the corpus store): ``answers`` (created_at, timings_ms.total,
citations), ``ratings`` (created_at, value), ``feedback`` (created_at, status, reviewed_at), the audit trail
(``adapter.promote`` / ``adapter.rollback``) and the corpus' ``files`` (done_at, inserted, deleted) with its
current article count. The aggregations are the pure functions below (days and weeks in UTC); the page sends
their output to uPlot (``static/vendor``, committed) as JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import Template

from pubmind.errors import InvalidInput
from pubmind.settings import Settings
from server.auth import Principal, require_role
from server.ui.views import page

DAY_S = 86400


# ---- pure aggregations ------------------------------------------------------------------------------------
def day_start(ts: float) -> int:
    """Unix seconds of the UTC midnight starting ``ts``'s day."""
    return int(ts // DAY_S * DAY_S)


def week_start(ts: float) -> int:
    """Unix seconds of the UTC Monday 00:00 starting ``ts``'s ISO week."""
    d = day_start(ts)
    return d - dt.datetime.fromtimestamp(d, dt.UTC).weekday() * DAY_S


def day_range(since: float, until: float) -> list[int]:
    """Every UTC day start from ``since``'s day to ``until``'s day, inclusive."""
    return list(range(day_start(since), day_start(until) + 1, DAY_S))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def per_day(times: Iterable[float], since: float, until: float) -> list[tuple[int, int]]:
    """(day, events that day) for every day of the window (days without events: 0)."""
    counts = Counter(day_start(t) for t in times if since <= t <= until)
    return [(d, counts.get(d, 0)) for d in day_range(since, until)]


def latency_per_day(rows: Iterable[tuple[float, float]], since: float,
                    until: float) -> list[tuple[int, float | None, float | None]]:
    """(day, p50 ms, p95 ms) of answers' total time; ``rows``: (created_at, total_ms). None on days without."""
    by: dict[int, list[float]] = defaultdict(list)
    for t, ms in rows:
        if since <= t <= until:
            by[day_start(t)].append(ms)
    return [(d, percentile(by[d], 50), percentile(by[d], 95)) for d in day_range(since, until)]


def share_per_day(rows: Iterable[tuple[float, int, int]], since: float, until: float) -> list[tuple[int, float | None]]:
    """(day, sum(part) / sum(whole)) per day; ``rows``: (time, part, whole). None on days with whole 0.
    E.g. unsupported citations / citations, or down ratings / ratings."""
    part: Counter[int] = Counter()
    whole: Counter[int] = Counter()
    for t, p, w in rows:
        if since <= t <= until:
            part[day_start(t)] += p
            whole[day_start(t)] += w
    return [(d, part[d] / whole[d] if whole[d] else None) for d in day_range(since, until)]


def corrections_per_week(rows: Iterable[tuple[float, str, float | None]], since: float,
                         until: float) -> list[tuple[int, int, int]]:
    """(week, submitted, accepted): submitted by created_at, accepted by reviewed_at (status 'accepted');
    ``rows``: (created_at, status, reviewed_at). Every week of the window."""
    submitted: Counter[int] = Counter()
    accepted: Counter[int] = Counter()
    for created, status, reviewed in rows:
        if since <= created <= until:
            submitted[week_start(created)] += 1
        if status == "accepted" and reviewed is not None and since <= reviewed <= until:
            accepted[week_start(reviewed)] += 1
    weeks = range(week_start(since), week_start(until) + 1, 7 * DAY_S)
    return [(w, submitted[w], accepted[w]) for w in weeks]


def promotions(rows: Iterable[tuple[float, str, str, Any, Any]]) -> list[dict[str, Any]]:
    """Promotions and rollbacks, oldest first; ``rows``: audit (at, action, adapter, before, after) of
    ``adapter.promote`` / ``adapter.rollback``."""
    out = []
    for at, action, adapter, before, after in sorted(rows, key=lambda r: r[0]):
        out.append({"at": at, "action": action.removeprefix("adapter."), "adapter": adapter,
                    "from": (before or {}).get("current"), "to": (after or {}).get("current")})
    return out


def corpus_growth(files: Iterable[tuple[float, int, int]], current: int, since: float,
                  now: float) -> list[tuple[float, int]]:
    """(time, articles) at ``since``, after each file ingested in the window, and ``now``. ``files``: (done_at,
    inserted, deleted); sizes are counted back from ``current`` (articles added without a file count from the
    start)."""
    out, size = [(now, current)], current
    for done_at, inserted, deleted in sorted(files, reverse=True):
        if done_at < since:
            break
        out.append((done_at, size))
        size -= inserted - deleted
    out.append((since, size))
    return sorted(out)


# ---- reading the records ----------------------------------------------------------------------------------
def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _rows(db: sqlite3.Connection, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):  # nothing recorded yet
            return []
        raise


def collect(settings: Settings, since: float, until: float) -> dict[str, Any]:
    """Every chart's series for the window [since, until] (unix s)."""
    app = _ro(settings.app_db)
    try:
        answers = _rows(app, "SELECT created_at, timings_ms, citations FROM answers WHERE created_at >= ?", (since,))
        ratings = _rows(app, "SELECT created_at, value FROM ratings WHERE created_at >= ?", (since,))
        corrections = _rows(app, "SELECT created_at, status, reviewed_at FROM feedback "
                                 "WHERE created_at >= ? OR reviewed_at >= ?", (since, since))
        audit = _rows(app, "SELECT at, action, target, before, after FROM audit WHERE action IN "
                           "('adapter.promote', 'adapter.rollback') ORDER BY id")
    finally:
        app.close()
    corpus = _ro(settings.corpus_db)
    try:
        files = [(t, json.loads(c)) for t, c in _rows(corpus, "SELECT done_at, counts FROM files")]
        articles = _rows(corpus, "SELECT COUNT(*) FROM articles")[0][0] if Path(settings.corpus_db).exists() else 0
    finally:
        corpus.close()
    totals = [(t, float(json.loads(tm).get("total", 0.0))) for t, tm, _ in answers]
    cites = [json.loads(c) for _, _, c in answers]
    unsupported = [(t, sum(1 for c in cs if not c.get("supported")), len(cs))
                   for (t, _, _), cs in zip(answers, cites, strict=True)]
    return {
        "questions": per_day([t for t, _, _ in answers], since, until),
        "latency": latency_per_day(totals, since, until),
        "unsupported": share_per_day(unsupported, since, until),
        "down": share_per_day([(t, int(v < 0), 1) for t, v in ratings], since, until),
        "corrections": corrections_per_week(corrections, since, until),
        "promotions": promotions([(a, act, tgt, json.loads(b) if b else None, json.loads(af) if af else None)
                                  for a, act, tgt, b, af in audit]),
        "corpus": corpus_growth([(t, int(c.get("inserted", 0)), int(c.get("deleted", 0))) for t, c in files],
                                articles, since, until),
        "totals": {"answers": len(answers), "ratings": len(ratings), "articles": articles,
                   "down": sum(1 for _, v in ratings if v < 0),
                   "p95_ms": percentile([ms for _, ms in totals], 95)},
    }


@get("/dashboard", include_in_schema=False, guards=[require_role("curator")])
async def dashboard(request: Request[Principal, Any, Any], settings: NamedDependency[Settings],
                    days: FromQuery[int] = 30) -> Template:
    if not 1 <= days <= 366:
        raise InvalidInput(f"days must be between 1 and 366, got {days}", param="days")
    now = time.time()
    data = await anyio.to_thread.run_sync(collect, settings, now - days * DAY_S, now)
    return page("dashboard.html", request, data=data, days=days)


HANDLERS = [dashboard]
