"""``pubmind ingest file|pubmed``, ``pubmind stats`` and ``pubmind article``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import msgspec

from pubmind.cliutil import audit, emit_json, get_settings, handle_errors
from pubmind.errors import InvalidInput, NotFound
from pubmind.settings import Settings


@click.group("ingest")
def ingest_group() -> None:
    """Load PubMed records (files or an E-utilities query) into the corpus store and the index."""


@ingest_group.command("file")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--force", is_flag=True, help="Re-apply files already ingested with the same MD5.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--ray", "ray_address", metavar="ADDRESS", default=None,
              help="Embed on a Ray cluster: 'local' (start one here), 'auto' or ray://HOST:10001 "
                   "(ingest.executor=ray, ingest.ray_address).")
@handle_errors
def ingest_file_cmd(paths: tuple[str, ...], force: bool, as_json: bool, no_progress: bool,
                    ray_address: str | None) -> None:
    """Ingest PubMed XML (.xml, .xml.gz), MEDLINE text (.txt, .nbib) files or directories of them.

    Bad files are skipped (nothing of them is applied) and listed at the end; the exit code is then 1.
    """
    from ingest.pipeline import run_files

    settings = get_settings()
    if ray_address is not None:
        ingest = settings.ingest.model_copy(update={"executor": "ray", "ray_address": ray_address})
        settings = settings.model_copy(update={"ingest": ingest})
    report = run_files(settings, paths, force=force, progress=not no_progress)
    summary = report.summary()
    audit(settings, "ingest.run", ",".join(paths)[:1000], after={"files": summary["files"],
                                                                "articles": summary["articles"],
                                                                "deletions": summary["deletions"]})
    if as_json:
        emit_json(summary)
    else:
        f = summary["files"]
        click.echo(f"files: {f['ingested']} ingested, {f['skipped']} unchanged (skipped), {f['failed']} failed; "
                   f"{summary['articles']} articles, {summary['deletions']} deletions; "
                   f"{summary['sync'].get('embedded', 0)} chunks embedded in {summary['seconds']} s"
                   + (f"; parsed by {summary['parse_workers']}" if summary["parse_workers"] else ""))
    for bad in report.failed:
        click.echo(f"error: {bad.error}", err=True)
    if report.failed:
        click.echo(f"error: {len(report.failed)} of {len(report.files)} files could not be ingested", err=True)
        sys.exit(1)


@ingest_group.command("pubmed")
@click.option("--query", "-q", required=True, help="PubMed query, e.g. 'crispr AND 2020[dp]'.")
@click.option("--mindate", help="Earliest publication date (YYYY, YYYY/MM or YYYY/MM/DD).")
@click.option("--maxdate", help="Latest publication date (YYYY, YYYY/MM or YYYY/MM/DD).")
@click.option("--max", "max_records", type=click.IntRange(min=1), help="Fetch at most this many records for this query in total "
              "(an interrupted or capped run resumes where it stopped).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@handle_errors
def ingest_pubmed_cmd(query: str, mindate: str | None, maxdate: str | None, max_records: int | None,
                      as_json: bool, no_progress: bool) -> None:
    """Fetch a query's records through NCBI E-utilities (resumable) and ingest them."""
    from ingest.pipeline import Pipeline

    settings = get_settings()
    with Pipeline(settings, progress=not no_progress) as p:
        out = p.ingest_query(query, mindate=mindate, maxdate=maxdate, max_records=max_records)
    audit(settings, "ingest.run", f"pubmed:{query}"[:1000], after={"articles": out["articles"],
                                                                  "deletions": out["deletions"]})
    if as_json:
        emit_json(out)
    else:
        click.echo(f"{out['articles']} articles, {out['deletions']} deletions fetched with {out['requests']} "
                   f"requests; {out['sync'].get('embedded', 0)} chunks embedded in {out['seconds']} s")


def corpus_stats(settings: Settings) -> dict[str, Any]:
    """Store counts plus the number of vectors in the saved index (read-only; no embedder loaded)."""
    from retrieval.store import CorpusStore

    if not settings.corpus_db.exists():
        stats: dict[str, Any] = {"articles": 0, "chunks": 0}
    else:
        with CorpusStore(settings.corpus_db) as store:
            stats = store.stats()
    manifest = settings.index_dir / "manifest.json"
    stats["vectors"] = int(json.loads(manifest.read_text())["count"]) if manifest.exists() else 0
    return stats


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def stats_cmd(as_json: bool) -> None:
    """Corpus size: articles, chunks, vectors (and bookkeeping counts)."""
    stats = corpus_stats(get_settings())
    if as_json:
        emit_json(stats)
    else:
        for k, v in stats.items():
            click.echo(f"{k}: {v}")


@click.command("article")
@click.argument("pmid", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
@handle_errors
def article_cmd(pmid: int, as_json: bool) -> None:
    """Show one stored article (exit 1 if the PMID is not in the corpus)."""
    from retrieval.store import CorpusStore

    settings = get_settings()
    art = None
    if settings.corpus_db.exists():
        with CorpusStore(settings.corpus_db) as store:
            art = store.get(pmid)
    if art is None:
        raise NotFound(f"PMID {pmid} is not in the corpus ({settings.corpus_db})", param="pmid")
    if as_json:
        emit_json({**msgspec.to_builtins(art), "retracted": art.retracted, "url": art.url})
        return
    click.echo(f"PMID {art.pmid} (v{art.version}) {art.url}")
    click.echo(art.title)
    click.echo(f"{art.journal_iso or art.journal} {art.pub_date or ''}".strip())
    if art.authors:
        click.echo(", ".join(a.display for a in art.authors))
    if art.doi:
        click.echo(f"doi: {art.doi}")
    if art.retracted:
        click.echo("RETRACTED")
    if art.abstract:
        click.echo("")
        click.echo(art.abstract_text)


@click.command("sync")
@click.option("--mirror", help="PubMed distribution folder with baseline/ and updatefiles/ "
              "(default: the sync.mirror setting, NLM's https://ftp.ncbi.nlm.nih.gov/pubmed/).")
@click.option("--baseline-only", is_flag=True, help="Apply only baseline files.")
@click.option("--updates-only", is_flag=True, help="Apply only update files.")
@click.option("--max-files", type=click.IntRange(min=1), help="Apply at most this many files (in order) this run.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bars (log lines still go to stderr).")
@handle_errors
def sync_cmd(mirror: str | None, baseline_only: bool, updates_only: bool, max_files: int | None,
             as_json: bool, no_progress: bool) -> None:
    """Mirror NLM's PubMed baseline and update files: download what is new (resumable, MD5-checked) and
    apply it in order, each file once. Exit 1 if a file is refused (later files wait for the next run)."""
    from ingest.sync import Syncer

    if baseline_only and updates_only:
        raise InvalidInput("--baseline-only and --updates-only exclude each other", param="baseline_only")
    settings = get_settings()
    with Syncer(settings, mirror=mirror, progress=not no_progress,
                log=lambda msg: click.echo(msg, err=True)) as syncer:
        report = syncer.run(baseline=not updates_only, updates=not baseline_only, max_files=max_files)
    audit(settings, "sync.run", mirror or settings.sync.mirror,
          after={"applied": [f["file"] for f in report.applied], "failed": report.failed})
    if as_json:
        emit_json(report.summary())
    elif not report.new:
        click.echo(f"nothing new: {report.applied_before} files applied before, all up to date")
    else:
        arts, dels = sum(f["articles"] for f in report.applied), sum(f["deletions"] for f in report.applied)
        click.echo(f"{len(report.applied)} of {len(report.new)} new files applied ({arts} articles, {dels} deletions, "
                   f"{report.downloaded_bytes / 1e6:.1f} MB downloaded, {report.index.get('embedded', 0)} chunks "
                   f"embedded) in {report.seconds} s"
                   + (f"; parsed by {report.parse_workers}" if report.parse_workers else ""))
    if report.failed:
        click.echo(f"error: {report.failed['error']}", err=True)
        click.echo(f"error: {report.failed['file']} refused; {len(report.waiting)} later files wait", err=True)
        sys.exit(1)


COMMANDS = [ingest_group, stats_cmd, article_cmd, sync_cmd]
