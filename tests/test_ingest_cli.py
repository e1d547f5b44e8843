"""Ingest pipeline (store + index bookkeeping, all-or-nothing files) and the CLI commands."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.cli import corpus_stats
from ingest.parse import iter_records
from ingest.pipeline import Pipeline, discover
from pubmind.errors import BadSourceFile, NotFound
from pubmind.records import Article, Deletion
from retrieval.indexer import Indexer
from tests.fixtures_ingest import BASELINE_1015, ENTREZ, SAMPLE_1334, SAMPLE_1335, UPDATE_1016


def _expected_pmids(*files: Path) -> dict[int, int]:
    """PMID -> highest version after applying the files' records in order (what the store must hold)."""
    out: dict[int, int] = {}
    for f in files:
        for r in iter_records(f):
            if isinstance(r, Deletion):
                for p in r.pmids:
                    out.pop(p, None)
            else:
                out[r.pmid] = max(out.get(r.pmid, 0), r.version)
    return out


@pytest.fixture()
def pipeline(settings, hash_embedder) -> Iterator[Pipeline]:
    with Indexer(settings, embedder=hash_embedder) as ix:
        yield Pipeline(settings, indexer=ix, progress=False)


def test_baseline_then_update(pipeline: Pipeline, settings) -> None:
    r1 = pipeline.ingest_files([BASELINE_1015])
    assert [f.status for f in r1.files] == ["ingested"]
    assert r1.files[0].articles == 756
    st = corpus_stats(settings)
    assert st["articles"] == 754
    assert st["chunks"] > 754
    assert st["vectors"] == st["chunks"]
    assert pipeline.indexer.store.get(31828225).version == 4
    r2 = pipeline.ingest_files([UPDATE_1016])
    assert r2.files[0].deletions == 218
    want = _expected_pmids(BASELINE_1015, UPDATE_1016)
    st = corpus_stats(settings)
    assert st["articles"] == len(want)
    assert st["vectors"] == st["chunks"]
    assert st["pending_chunks"] == 0
    stored = pipeline.indexer.store.versions(want)
    assert stored == want
    gone = next(r.pmids for r in iter_records(UPDATE_1016) if isinstance(r, Deletion))
    assert pipeline.indexer.store.versions(gone) == {}


def test_reingest_is_skipped_and_forcing_changes_nothing(pipeline: Pipeline, settings, hash_embedder) -> None:
    pipeline.ingest_files([SAMPLE_1334])
    before, encoded = corpus_stats(settings), hash_embedder.encoded
    again = pipeline.ingest_files([SAMPLE_1334])
    assert [f.status for f in again.files] == ["skipped"]
    forced = pipeline.ingest_files([SAMPLE_1334], force=True)
    a = forced.files[0].apply
    assert forced.files[0].status == "ingested"
    assert a["inserted"] == a["updated"]
    assert a["updated"] == a["chunks_added"]
    assert a["chunks_added"] == 0
    assert a["unchanged"] == 30
    assert corpus_stats(settings) == before
    assert hash_embedder.encoded == encoded  # nothing re-embedded


def test_a_directory_goes_past_bad_files_and_applies_nothing_of_them(pipeline: Pipeline, settings,
                                                                    tmp_path: Path) -> None:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    shutil.copy(SAMPLE_1334, d / "a_good.xml.gz")
    (d / "b_truncated.xml.gz").write_bytes(BASELINE_1015.read_bytes()[:300_000])  # yields ~270 records first
    (d / "c_empty.xml").write_bytes(b"")
    shutil.copy(ENTREZ / "taxonomy.xml", d / "sub" / "d_taxonomy.xml")
    (d / "notes.md").write_text("not a PubMed file: ignored in a directory")
    report = pipeline.ingest_files([d])
    assert [(Path(f.path).name, f.status) for f in report.files] == [
        ("a_good.xml.gz", "ingested"), ("b_truncated.xml.gz", "failed"), ("c_empty.xml", "failed"),
        ("d_taxonomy.xml", "failed")]
    errors = [f.error for f in report.failed]
    assert "b_truncated.xml.gz: truncated or corrupt gzip" in errors[0]
    assert "c_empty.xml:1: empty file" in errors[1]
    assert "<TaxaSet> is not PubMed" in errors[2]
    st = corpus_stats(settings)
    assert st["articles"] == 30
    assert st["files"] == 1
    truncated = {a.pmid for a in iter_records(BASELINE_1015)}
    assert pipeline.indexer.store.versions(truncated) == {}  # none of the partially parsed records
    assert not list((settings.home / "ingest").glob("spool-*"))  # staging cleaned up


def test_discover(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(BadSourceFile, match=r"x.csv: unsupported file type"):
        discover([tmp_path / "x.csv"])
    with pytest.raises(BadSourceFile, match="no such file or directory"):
        discover([tmp_path / "nope"])
    assert discover([SAMPLE_1334, SAMPLE_1334.parent]) == [SAMPLE_1334]  # de-duplicated


@pytest.mark.network
def test_query_pipeline_against_fake_eutils(eutils_settings, hash_embedder, metapub_corpus) -> None:
    with Indexer(eutils_settings, embedder=hash_embedder) as ix:
        out = Pipeline(eutils_settings, indexer=ix, progress=False).ingest_query("all[sb]", max_records=50)
        assert out["articles"] == 50
        assert out["apply"]["inserted"] == 50
        assert out["sync"]["embedded"] == ix.store.stats()["chunks"]
        assert ix.store.stats()["chunks"] > 0
        assert set(ix.store.versions(metapub_corpus)) == set(sorted(metapub_corpus, reverse=True)[:50])


# ------------------------------------------------------------------------------------------- CLI
@pytest.mark.integration
def test_cli_end_to_end_with_minilm(cli, settings, tmp_path: Path) -> None:
    code, out, err = cli("ingest", "file", "--no-progress", "--json", str(SAMPLE_1334), str(SAMPLE_1335))
    assert code == 0, err
    rep = json.loads(out)
    assert rep["files"] == {"ingested": 2, "skipped": 0, "failed": 0}
    assert rep["articles"] == 60
    code, out, _ = cli("stats", "--json")
    st = json.loads(out)
    want = _expected_pmids(SAMPLE_1334, SAMPLE_1335)
    assert code == 0
    assert st["articles"] == len(want)
    assert st["vectors"] == st["chunks"]
    assert st["chunks"] == rep["sync"]["embedded"]
    pmid = next(r.pmid for r in iter_records(SAMPLE_1334) if isinstance(r, Article))
    code, out, _ = cli("article", str(pmid), "--json")
    assert code == 0
    assert json.loads(out)["pmid"] == pmid
    code, out, err = cli("article", "1", "--json")
    assert code == 1
    assert "PMID 1 is not in the corpus" in err
    code, out, err = cli("ingest", "file", "--no-progress", str(SAMPLE_1334), str(ENTREZ / "esearch8.xml"))
    assert code == 1
    assert "1 unchanged (skipped), 1 failed" in out
    assert "; parsed by 2 processes (" in out  # the parse pool and its allocator
    assert "esearch8.xml:3: E-utilities error response" in err


@pytest.mark.integration
@pytest.mark.network
def test_cli_ingest_pubmed(cli, fake_eutils, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBMIND_EUTILS__BASE_URL", fake_eutils.url)
    monkeypatch.setenv("PUBMIND_EUTILS__REQUESTS_PER_SECOND", "100")
    monkeypatch.setenv("PUBMIND_EUTILS__BATCH_SIZE", "10")
    code, out, err = cli("ingest", "pubmed", "--no-progress", "--json", "--query", "all[sb]", "--max", "25")
    assert code == 0, err
    assert json.loads(out)["articles"] == 25
    assert fake_eutils.counts["efetch"] == 3
    code, out, err = cli("ingest", "pubmed", "--no-progress", "--query", "abcXYZ")
    assert code == 2
    assert "PhraseNotFound: abcXYZ" in err
    code, out, err = cli("ingest", "pubmed", "--query", "x", "--mindate", "soon")
    assert code == 2
    assert "mindate 'soon' is not a date" in err


def test_cli_ray_flag_selects_the_ray_executor(cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--ray ADDRESS`` sets ingest.executor=ray and ingest.ray_address for that run (the Ray path itself is
    tested in test_retrieval_distributed.py)."""
    import ingest.pipeline

    seen: list[tuple[str, str]] = []

    def fake_run_files(settings, paths, **kw):
        seen.append((settings.ingest.executor, settings.ingest.ray_address))
        raise NotFound("stop here", param="paths")

    monkeypatch.setattr(ingest.pipeline, "run_files", fake_run_files)
    assert cli("ingest", "file", "--ray", "ray://head:10001", str(tmp_path)).code == 1
    assert cli("ingest", "file", str(tmp_path)).code == 1
    assert seen == [("ray", "ray://head:10001"), ("local", "local")]
