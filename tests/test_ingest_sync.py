"""``pubmind sync``. Tests marked ``network`` run against a local NLM-style mirror on 127.0.0.1 (tests/nlm_mirror.py)
built from the real files in ../shared/data.

The mirror: baseline/pubmed26n1334 and updatefiles/pubmed26n1335 (the real current-DTD samples with their
real NLM ``.md5`` sidecars), and updatefiles/pubmed26n1336 (the real pmparser update sample pubmed20n1016,
26 articles and 262 deletions, under the next number, with a computed sidecar).
"""

from __future__ import annotations

import fcntl
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest.cli import corpus_stats
from ingest.parse import iter_records
from ingest.pipeline import Pipeline
from ingest.sync import STATE_KEY, RemoteFile, Syncer, SyncState, parse_listing, read_state
from pubmind.errors import Conflict
from pubmind.records import Article, Deletion
from retrieval.indexer import Indexer
from tests.conftest import SHARED_DATA, CliResult
from tests.fixtures_ingest import SAMPLE_1334, SAMPLE_1335, HashEmbedder
from tests.nlm_mirror import Mirror, MirrorServer, add_file, md5_sidecar

UPDATE_26_SAMPLE = SHARED_DATA / "pmparser/inst/extdata/pubmed20n1016.xml.gz"
FILES = {"baseline/pubmed26n1334.xml.gz": SAMPLE_1334, "updatefiles/pubmed26n1335.xml.gz": SAMPLE_1335,
         "updatefiles/pubmed26n1336.xml.gz": UPDATE_26_SAMPLE}
ORDER = list(FILES)


def expected_pmids(*files: Path) -> dict[int, int]:
    """PMID -> highest version after applying the files' records in order (what the store must hold)."""
    out: dict[int, int] = {}
    for f in files:
        for r in iter_records(f, check_md5=False):
            if isinstance(r, Deletion):
                for p in r.pmids:
                    out.pop(p, None)
            else:
                out[r.pmid] = max(out.get(r.pmid, 0), r.version)
    return out


def pmids(path: Path) -> set[int]:
    return {r.pmid for r in iter_records(path, check_md5=False) if isinstance(r, Article)}


@pytest.fixture()
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    root = tmp_path / "mirror"
    for label, src in FILES.items():
        folder, name = label.split("/")
        add_file(root, folder, name, src)
    (root / "baseline" / "README.txt").write_text("PubMed baseline (test mirror)\n")
    with MirrorServer(root) as m:
        yield m


@pytest.fixture()
def indexer(settings, hash_embedder: HashEmbedder) -> Iterator[Indexer]:
    with Indexer(settings, embedder=hash_embedder) as ix:
        yield ix


@pytest.fixture()
def make_syncer(settings, indexer: Indexer, mirror: Mirror) -> Iterator[Callable[..., Syncer]]:
    made: list[Syncer] = []

    def make(**kw: object) -> Syncer:
        s = Syncer(settings, mirror=mirror.url, pipeline=Pipeline(settings, indexer=indexer, progress=False),
                   progress=False, **kw)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture()
def sync_cli(cli: Callable[..., CliResult], hash_embedder: HashEmbedder, monkeypatch: pytest.MonkeyPatch,
             mirror: Mirror) -> Callable[..., CliResult]:
    """``pubmind ...`` in-process (the conftest ``cli``), the embedder swapped for the hash stand-in, the
    mirror set by env."""
    monkeypatch.setattr("retrieval.embed.Embedder", lambda _cfg: hash_embedder)
    monkeypatch.setenv("PUBMIND_SYNC__MIRROR", mirror.url)
    return cli


def applied(settings) -> list[str]:
    return list(read_state(settings).applied)


# ------------------------------------------------------------------------------------------ no network
def test_parse_listing_reads_an_nlm_index_page() -> None:
    html = ('<html><head><title>Index of /pubmed/updatefiles</title></head><body><h1>Index of /pubmed/updatefiles</h1>'
            '<pre>Name  Last modified  Size  <hr><a href="/pubmed/">Parent Directory</a>   -\n'
            '<a href="README.txt">README.txt</a> 2025-12-10 15:31  3.7K\n'
            '<a href="pubmed26n1336.xml.gz">pubmed26n1336.xml.gz</a> 2025-12-12 14:05  4.1M\n'
            '<a href="pubmed26n1336.xml.gz.md5">pubmed26n1336.xml.gz.md5</a> 2025-12-12 14:05   60\n'
            '<a href="/pubmed/updatefiles/pubmed26n1335.xml.gz">pubmed26n1335.xml.gz</a> 2025-12-11 14:05  4.0M\n'
            '<a href="stats/">stats/</a>\n<hr></pre></body></html>')
    files = parse_listing(html, "https://mirror.example/pubmed/updatefiles/", "updatefiles")
    assert [f.name for f in files] == ["pubmed26n1335.xml.gz", "pubmed26n1336.xml.gz"]
    assert files[1].url == "https://mirror.example/pubmed/updatefiles/pubmed26n1336.xml.gz"
    assert (files[0].year, files[0].number) == (26, 1335)


def _rf(folder: str, year: int, number: int) -> RemoteFile:
    name = f"pubmed{year:02d}n{number:04d}.xml.gz"
    return RemoteFile(folder, name, year, number, f"http://127.0.0.1:1/pubmed/{folder}/{name}")


def test_plan_refuses_out_of_order_files_and_updates_on_an_unfinished_baseline(settings) -> None:
    s = Syncer(settings, mirror="http://127.0.0.1:1/pubmed/")
    done = SyncState(year=26, applied={"baseline/pubmed26n0001.xml.gz": {}, "updatefiles/pubmed26n0005.xml.gz": {}})
    late = {"baseline": [_rf("baseline", 26, 1)], "updatefiles": [_rf("updatefiles", 26, 4), _rf("updatefiles", 26, 5)]}
    with pytest.raises(Conflict, match=r"updatefiles/pubmed26n0004.xml.gz is new on the mirror but numbered before"):
        s.plan(late, done)
    half = SyncState(year=26, applied={"baseline/pubmed26n0001.xml.gz": {}})
    listing = {"baseline": [_rf("baseline", 26, 1), _rf("baseline", 26, 2)], "updatefiles": [_rf("updatefiles", 26, 3)]}
    with pytest.raises(Conflict, match=r"baseline of this home is unfinished \(1 baseline files left"):
        s.plan(listing, half, baseline=False)
    assert [f.name for f in s.plan(listing, half)] == ["pubmed26n0002.xml.gz", "pubmed26n0003.xml.gz"]
    mixed = {"baseline": [_rf("baseline", 26, 1), _rf("baseline", 27, 1)], "updatefiles": []}
    with pytest.raises(Conflict, match=r"several annual baselines \(pubmed26n\*, pubmed27n\*\)"):
        s.plan(mixed, SyncState())
    s.close()


# ------------------------------------------------------------------------------------------ mirror
@pytest.mark.network
def test_first_sync_applies_baseline_then_updates_in_order(make_syncer, mirror: Mirror, settings, indexer) -> None:
    mirror.delay["pubmed26n1334.xml.gz"] = 0.5  # the baseline file arrives last; it must still apply first
    report = make_syncer().run()
    assert report.failed is None
    assert [a["file"] for a in report.applied] == ORDER
    assert applied(settings) == ORDER
    done_at = {Path(p).name: f["done_at"] for p, f in indexer.store.files().items()}
    assert sorted(done_at, key=done_at.__getitem__) == [label.split("/")[1] for label in ORDER]
    want = expected_pmids(*FILES.values())
    assert indexer.store.versions(want) == want
    st = corpus_stats(settings)
    assert st["articles"] == len(want)
    assert st["vectors"] == st["chunks"]
    assert report.downloaded_bytes == sum(p.stat().st_size for p in FILES.values())
    assert not list(settings.downloads_dir.rglob("*.xml.gz*"))  # keep_downloads is off by default


def _sync_home(settings, mirror: Mirror, embedder: HashEmbedder,
               on_log: Callable[[str], None] = lambda m: None) -> tuple[Any, list[str], tuple[Any, ...]]:
    """One sync of ``mirror`` into the home of ``settings``: the report, the log lines and what the home holds
    (versions, corpus stats, chunk ids). ``on_log`` sees each log line as it is written."""
    logs: list[str] = []

    def log(m: str) -> None:
        logs.append(m)
        on_log(m)

    want = expected_pmids(*FILES.values())
    with Indexer(settings, embedder=embedder) as ix, \
            Syncer(settings, mirror=mirror.url, pipeline=Pipeline(settings, indexer=ix, progress=False),
                   progress=False, log=log) as syncer:
        report = syncer.run()
        held = ix.store.versions(want), corpus_stats(settings), ix.store.chunk_ids_of(sorted(want))
    assert report.failed is None
    assert [a["file"] for a in report.applied] == ORDER
    assert held[0] == want
    assert not list(settings.ingest_dir.glob("spool-*"))
    return report, logs, held


def _hold_last_update_until_baseline_applied(mirror: Mirror) -> Callable[[str], None]:
    """The mirror holds back the last update file until the baseline file is applied (at most
    ``mirror.hold_s``): a sync that waited for every download before applying would get it only when the
    hold times out, after which ``_applied_while_downloading`` fails. No guess at how long parsing takes."""
    applied = threading.Event()
    mirror.hold["pubmed26n1336.xml.gz"] = applied
    return lambda m: applied.set() if m.startswith("applied baseline/pubmed26n1334.xml.gz") else None


def _applied_while_downloading(logs: list[str]) -> bool:
    """The baseline file was applied before the (held) last update file had arrived (its download is logged
    when the sync takes it, in order)."""
    applied = next(i for i, m in enumerate(logs) if m.startswith("applied baseline/pubmed26n1334.xml.gz"))
    arrived = next(i for i, m in enumerate(logs) if m.startswith("downloaded updatefiles/pubmed26n1336"))
    return applied < arrived


@pytest.mark.network
def test_files_are_parsed_in_parallel_processes_and_applied_as_they_are_ready(
        make_settings, mirror: Mirror, hash_embedder: HashEmbedder, tmp_path: Path) -> None:
    """With 2 parse processes the sync applies the same corpus as one process does, in the same order. A
    file still downloading does not hold back one already parsed: the baseline file is applied while the
    last update file is still on its way."""
    one, _, held_one = _sync_home(make_settings(home=tmp_path / "w1", ingest={"workers": 1}), mirror, hash_embedder)
    assert one.parse_workers == ""  # parsed in the writer
    release = _hold_last_update_until_baseline_applied(mirror)
    two, logs, held_two = _sync_home(make_settings(home=tmp_path / "w2", ingest={"workers": 2}), mirror,
                                     hash_embedder, on_log=release)
    assert two.parse_workers.startswith("2 processes ("), two.parse_workers
    assert f"parsing on {two.parse_workers}" in logs
    assert _applied_while_downloading(logs), logs
    assert held_two == held_one


@pytest.mark.network
@pytest.mark.integration
def test_sync_parses_on_ray(make_settings, mirror: Mirror, hash_embedder: HashEmbedder, local_ray,
                            tmp_path: Path) -> None:
    """``ingest.executor = "ray"``: the sync's files are parsed by Ray tasks, with the same result."""
    _, _, held_one = _sync_home(make_settings(home=tmp_path / "w1", ingest={"workers": 1}), mirror, hash_embedder)
    release = _hold_last_update_until_baseline_applied(mirror)
    report, logs, held = _sync_home(make_settings(home=tmp_path / "ray", ingest={"executor": "ray"}), mirror,
                                    hash_embedder, on_log=release)
    assert report.parse_workers.startswith("Ray tasks (local; ")
    assert any(m.startswith("parsing on Ray tasks (local; ") for m in logs), logs
    assert _applied_while_downloading(logs), logs
    assert held == held_one


@pytest.mark.network
def test_second_sync_is_a_no_op(make_syncer, mirror: Mirror, settings, indexer, hash_embedder) -> None:
    make_syncer().run()
    state, stats, encoded = indexer.store.get_meta(STATE_KEY), corpus_stats(settings), hash_embedder.encoded
    gets = len(mirror.file_gets())
    logs: list[str] = []
    again = make_syncer(log=logs.append).run()
    assert again.new == []
    assert again.applied == []
    assert "nothing new: this home is up to date with the mirror" in logs
    assert indexer.store.get_meta(STATE_KEY) == state
    assert corpus_stats(settings) == stats
    assert hash_embedder.encoded == encoded
    assert len(mirror.file_gets()) == gets  # only the two index pages were fetched


@pytest.mark.network
def test_partial_downloads_resume_with_range(make_syncer, mirror: Mirror, settings, indexer) -> None:
    # an earlier run left 10,000 bytes of the baseline file; the connection drops mid-way through 1335;
    # a .part that is not a prefix of 1336 fails its MD5 and is fetched again from the start
    part = settings.downloads_dir / "baseline" / "pubmed26n1334.xml.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(SAMPLE_1334.read_bytes()[:10_000])
    bad = settings.downloads_dir / "updatefiles" / "pubmed26n1336.xml.gz.part"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x1f\x8b" + b"\0" * 5_000)
    mirror.cut["pubmed26n1335.xml.gz"] = 40_000
    report = make_syncer().run()
    assert report.failed is None
    assert mirror.gets("pubmed26n1334.xml.gz") == ["bytes=10000-"]
    assert mirror.gets("pubmed26n1335.xml.gz") == [None, "bytes=40000-"]
    assert mirror.gets("pubmed26n1336.xml.gz") == ["bytes=5002-", None]
    sizes = {a["file"]: a["bytes"] for a in report.applied}
    assert sizes["baseline/pubmed26n1334.xml.gz"] == SAMPLE_1334.stat().st_size - 10_000
    assert sizes["updatefiles/pubmed26n1335.xml.gz"] == SAMPLE_1335.stat().st_size
    want = expected_pmids(*FILES.values())
    assert indexer.store.versions(want) == want


@pytest.mark.network
def test_a_corrupt_file_is_refused_and_later_files_wait(sync_cli, mirror: Mirror, settings) -> None:
    side = mirror.root / "updatefiles" / "pubmed26n1335.xml.gz.md5"
    side.write_text("MD5(pubmed26n1335.xml.gz)= 0123456789abcdef0123456789abcdef\n")
    code, out, err = sync_cli("sync", "--no-progress", "--json")
    assert code == 1
    assert "pubmed26n1335.xml.gz: refused, nothing of it applied: " in err
    assert "MD5 mismatch" in err
    rep = json.loads(out)
    assert rep["failed"]["file"] == "updatefiles/pubmed26n1335.xml.gz"
    assert rep["waiting"] == ["updatefiles/pubmed26n1336.xml.gz"]
    assert applied(settings) == ["baseline/pubmed26n1334.xml.gz"]
    from retrieval.store import CorpusStore

    with CorpusStore(settings.corpus_db) as store:
        assert store.versions(pmids(SAMPLE_1335) - pmids(SAMPLE_1334)) == {}  # nothing of 1335
        assert store.versions(pmids(UPDATE_26_SAMPLE)) == {}  # 1336 waits
    assert mirror.gets("pubmed26n1335.xml.gz") == [None, None]  # one fresh re-download, then refused
    assert not (settings.downloads_dir / "updatefiles" / "pubmed26n1335.xml.gz").exists()
    side.write_text(md5_sidecar(SAMPLE_1335))  # the mirror is fixed: the next run catches up, in order
    code, out, err = sync_cli("sync", "--no-progress", "--json")
    assert code == 0, err
    assert [a["file"] for a in json.loads(out)["applied"]] == ORDER[1:]


@pytest.mark.network
def test_a_file_that_does_not_parse_is_refused(make_syncer, mirror: Mirror, settings, indexer, tmp_path: Path) -> None:
    broken = tmp_path / "pubmed26n1335.xml.gz"
    broken.write_bytes(SAMPLE_1335.read_bytes()[:50_000])  # truncated gzip, with a matching .md5
    add_file(mirror.root, "updatefiles", "pubmed26n1335.xml.gz", broken)
    report = make_syncer().run()
    assert report.failed is not None
    assert report.failed["file"] == "updatefiles/pubmed26n1335.xml.gz"
    assert "pubmed26n1335.xml.gz: truncated or corrupt gzip" in report.failed["error"]
    assert report.waiting == ["updatefiles/pubmed26n1336.xml.gz"]
    assert applied(settings) == ["baseline/pubmed26n1334.xml.gz"]
    assert indexer.store.versions(pmids(SAMPLE_1335) - pmids(SAMPLE_1334)) == {}
    assert indexer.store.versions(pmids(UPDATE_26_SAMPLE)) == {}  # parsed ahead maybe, never applied
    assert not list(settings.ingest_dir.glob("spool-*"))  # the parsing in flight was stopped, its spools removed


@pytest.mark.network
def test_http_503_is_retried_with_backoff_and_retries_are_bounded(make_syncer, mirror: Mirror, settings) -> None:
    mirror.fail["baseline"].extend([503])  # the index page
    mirror.fail["pubmed26n1334.xml.gz"].extend([503, 503])
    mirror.fail["pubmed26n1335.xml.gz"].extend([503] * 10)  # more than max_retries (2): the run stops there
    sleeps: list[float] = []
    report = make_syncer(sleep=sleeps.append).run()
    assert mirror.gets("pubmed26n1334.xml.gz") == [None, None, None]
    assert [a["file"] for a in report.applied] == ORDER[:1]
    assert report.failed is not None
    assert "pubmed26n1335.xml.gz: failed after 3 attempts (last: HTTP 503)" in report.failed["error"]
    assert len(mirror.gets("pubmed26n1335.xml.gz")) == 3
    assert report.waiting == ORDER[2:]
    assert sorted(sleeps) == sorted([0.01, 0.01, 0.02, 0.01, 0.02])  # doubling from backoff_seconds
    assert applied(settings) == ORDER[:1]


@pytest.mark.network
def test_a_new_annual_baseline_is_refused(sync_cli, mirror: Mirror, settings) -> None:
    code, _, err = sync_cli("sync", "--no-progress")
    assert code == 0, err
    for label in FILES:  # NLM's yearly turnover: a new baseline, the old update files gone
        (mirror.root / label).unlink()
    add_file(mirror.root, "baseline", "pubmed27n0001.xml.gz", SAMPLE_1334)
    before = list(mirror.log)
    code, _, err = sync_cli("sync", "--no-progress")
    assert code == 1
    assert "new annual baseline (baseline/pubmed27n0001.xml.gz, pubmed27n*)" in err
    assert "re-baseline into a new home" in err
    assert [p for p, _ in mirror.log[len(before):]] == ["/pubmed/baseline/", "/pubmed/updatefiles/"]
    assert applied(settings) == ORDER


@pytest.mark.network
def test_max_files_and_the_folder_options(sync_cli, mirror: Mirror, settings) -> None:
    code, out, err = sync_cli("sync", "--no-progress", "--max-files", "1")
    assert code == 0, err
    assert "1 of 1 new files applied (30 articles" in out
    assert applied(settings) == ORDER[:1]
    code, out, err = sync_cli("sync", "--no-progress", "--baseline-only")
    assert code == 0, err
    assert "nothing new" in out
    code, out, err = sync_cli("sync", "--no-progress", "--updates-only", "--max-files", "1")
    assert code == 0, err
    assert applied(settings) == ORDER[:2]
    code, _, err = sync_cli("sync", "--baseline-only", "--updates-only")
    assert code == 2
    assert "--baseline-only and --updates-only exclude each other" in err
    code, _, err = sync_cli("sync", "--no-progress", "--mirror", "ftp://ftp.ncbi.nlm.nih.gov/pubmed/")
    assert code == 2
    assert "mirror must be an http(s) URL" in err
    code, _, err = sync_cli("sync", "--no-progress")
    assert code == 0, err
    assert applied(settings) == ORDER


@pytest.mark.network
def test_a_run_cut_short_before_embedding_is_finished_by_the_next(make_syncer, settings, indexer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real = indexer.sync

    def killed(progress: bool = True) -> None:
        raise RuntimeError("killed while embedding")

    monkeypatch.setattr(indexer, "sync", killed)
    with pytest.raises(RuntimeError, match="killed while embedding"):
        make_syncer().run()
    assert applied(settings) == ORDER  # every file is in the store...
    assert corpus_stats(settings)["pending_chunks"] > 0  # ...but not embedded
    monkeypatch.setattr(indexer, "sync", real)
    logs: list[str] = []
    again = make_syncer(log=logs.append).run()
    assert again.new == []
    assert "embedding the chunks an interrupted run left pending" in logs
    st = corpus_stats(settings)
    assert st["vectors"] == st["chunks"]


@pytest.mark.network
def test_one_sync_per_home_at_a_time(make_syncer, settings, mirror: Mirror) -> None:
    settings.ingest_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.ingest_dir / "sync.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running 'pubmind sync' holds it
        with pytest.raises(Conflict, match="another 'pubmind sync' is running on"):
            make_syncer().run()
    assert mirror.log == []
    assert applied(settings) == []


def test_long_runs_embed_in_the_background_while_files_apply(make_settings, mirror: Mirror, hash_embedder,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With a small ``index.save_every``, the index syncs on a background thread while later files are
    applied; the run ends with every chunk embedded exactly as a foreground sync leaves it."""
    s = make_settings(index={"save_every": 50})
    started: list[bool] = []
    real = Indexer.sync_async

    def spy(self: Indexer, *a: object, **kw: object) -> bool:
        started.append(real(self, *a, **kw))  # type: ignore[arg-type]
        return started[-1]

    monkeypatch.setattr(Indexer, "sync_async", spy)
    with Indexer(s, embedder=hash_embedder) as ix:
        syncer = Syncer(s, mirror=mirror.url, pipeline=Pipeline(s, indexer=ix, progress=False), progress=False)
        try:
            report = syncer.run()
        finally:
            syncer.close()
        assert report.failed is None
        assert [a["file"] for a in report.applied] == ORDER
        assert any(started)
        assert report.index["embedded"] >= corpus_stats(s)["chunks"]
        st = corpus_stats(s)
        assert (st["pending_chunks"], st["removed_pending"]) == (0, 0)
        assert st["vectors"] == st["chunks"]
        ids = ix.index.ids()
        texts = ix.store.chunk_text(ids.tolist())
        np.testing.assert_allclose(ix.index.vectors(ids), hash_embedder.encode_passages([texts[int(i)] for i in ids]),
                                   atol=1e-5)
