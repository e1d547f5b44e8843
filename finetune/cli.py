"""``pubmind feedback ...``, ``pubmind retune``, ``pubmind adapters ...``: the re-tuning loop from a shell."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from pubmind.cliutil import audit, emit_json, get_settings, handle_errors
from pubmind.errors import InvalidInput, PubmindError

REVIEW_ACTIONS = {"accepted": "correction.accept", "rejected": "correction.reject", "pending": "correction.edit"}


@click.group("feedback")
def feedback_group() -> None:
    """Curator corrections: list, accept/reject, bulk import."""


@feedback_group.command("list")
@click.option("--status", type=click.Choice(["pending", "accepted", "rejected"]), help="Only this status.")
@handle_errors
def feedback_list(status: str | None) -> None:
    """Print corrections as JSON."""
    import msgspec

    from finetune.store import CorrectionStore

    with CorrectionStore(get_settings().app_db) as store:
        emit_json(msgspec.to_builtins(store.find(status)))


@feedback_group.command("review")
@click.argument("feedback_ids", nargs=-1, required=True)
@click.option("--status", type=click.Choice(["accepted", "rejected", "pending"]), required=True)
@click.option("--reviewer", default=lambda: f"cli:{os.environ.get('USER', 'unknown')}", show_default="cli:$USER")
@handle_errors
def feedback_review(feedback_ids: tuple[str, ...], status: str, reviewer: str) -> None:
    """Accept or reject corrections by id."""
    from finetune.store import CorrectionStore

    settings = get_settings()
    with CorrectionStore(settings.app_db) as store:
        for fid in feedback_ids:
            before = store.get(fid).status
            store.set_status(fid, status, reviewer)
            audit(settings, REVIEW_ACTIONS[status], fid, before={"status": before},
                  after={"status": status, "reviewer": reviewer})
            click.echo(f"{fid}: {status}")


@feedback_group.command("import")
@click.argument("path", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--curator", default=lambda: f"cli:{os.environ.get('USER', 'unknown')}", show_default="cli:$USER",
              help="Recorded as the author of the corrections.")
@click.option("--accept", is_flag=True, help="Import as accepted (already reviewed), else pending.")
@handle_errors
def feedback_import(path: Path, curator: str, accept: bool) -> None:
    """Bulk-import corrections from a JSONL file. Every line is validated first (citations and PMIDs must be
    in the corpus); any error aborts the import with the line numbers, nothing is stored.

    \b
    One JSON object per line:
      {"question": str, "corrected_answer": str citing [PMID:n], "pmids": [int, ...],
       "rating": 1-5 (optional), "note": str (optional), "answer_id": str (optional)}
    """
    from finetune.dataset import validate_correction
    from finetune.store import Answer, AnswerStore, CorrectionStore
    from retrieval.store import CorpusStore

    settings = get_settings()
    corpus, answers = CorpusStore(settings.corpus_db), AnswerStore(settings.app_db)
    rows: list[tuple[str, str, list[int], Answer | None, dict[str, Any]]] = []
    errors: list[str] = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise InvalidInput(f"expected a JSON object, got {type(obj).__name__}")
                if unknown := sorted(set(obj) - {"question", "corrected_answer", "pmids", "rating", "note",
                                                 "answer_id"}):
                    raise InvalidInput(f"unknown fields {unknown}")
                q, a, pmids = validate_correction(
                    corpus, question=obj.get("question"), corrected_answer=obj.get("corrected_answer"),
                    pmids=obj.get("pmids", []), rating=obj.get("rating"), note=obj.get("note", ""),
                    max_question_chars=settings.server.max_question_chars)
                answer = answers.get(obj["answer_id"]) if obj.get("answer_id") is not None else None
                rows.append((q, a, pmids, answer, obj))
            except json.JSONDecodeError as e:
                errors.append(f"{path}:{n}: invalid JSON: {e}")
            except PubmindError as e:
                errors.append(f"{path}:{n}: {e.message}")
    if errors:
        for err in errors[:50]:
            click.echo(f"error: {err}", err=True)
        raise InvalidInput(f"{len(errors)} invalid lines in {path}; nothing imported")
    with CorrectionStore(settings.app_db) as store:
        for q, a, pmids, answer, obj in rows:
            c = store.add(question=q, corrected_answer=a, pmids=pmids, curator=curator, answer=answer,
                          rating=obj.get("rating"), note=obj.get("note", ""), source=f"import:{path.name}",
                          status="accepted" if accept else "pending")
            audit(settings, "correction.submit", c.id, after={"status": c.status, "source": c.source})
    click.echo(f"imported {len(rows)} corrections from {path} as {'accepted' if accept else 'pending'}")


@feedback_group.command("pubmedqa")
@click.argument("source", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--limit", type=int, default=None, help="Only the first N items.")
@handle_errors
def feedback_pubmedqa(source: Path, out: Path, limit: int | None) -> None:
    """Convert PubMedQA (ori_pqal.json) into the import JSONL: question -> "<Yes|No|Maybe>. <long answer>
    [PMID:n]" citing the item's own abstract (which must be ingested for the import to validate)."""
    data = json.loads(source.read_text())
    items = list(data.items())[:limit]
    with out.open("w") as f:
        for pmid, v in items:
            answer = f"{v['final_decision'].capitalize()}. {' '.join(v['LONG_ANSWER'].split())} [PMID:{int(pmid)}]"
            f.write(json.dumps({"question": v["QUESTION"], "corrected_answer": answer, "pmids": [int(pmid)]}) + "\n")
    click.echo(f"wrote {len(items)} corrections to {out}")


def _parse_overrides(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--set expects KEY=VALUE, got {item!r}", param="set")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


@click.command("retune")
@click.option("--adapter", required=True, help="Adapter name; the job creates its next version NAME@vN.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Hyperparameter override, e.g. --set epochs=5 --set learning_rate=1e-4 (JSON values).")
@click.option("--min-examples", type=int, default=None, help="Accepted corrections needed (settings default).")
@click.option("--pubmedqa", type=click.Path(dir_okay=False, exists=True), help="Also gate on PubMedQA accuracy.")
@click.option("--wait/--no-wait", default=False, help="Follow the job, printing progress, until it ends.")
@click.option("--threads", type=int, default=None, help="torch CPU threads of the job process (default: finetune.threads).")
@handle_errors
def retune_cmd(adapter: str, overrides: tuple[str, ...], min_examples: int | None, pubmedqa: str | None,
               wait: bool, threads: int | None) -> None:
    """Start a re-tune job (dataset -> LoRA training -> evaluation gate -> promotion) in its own process."""
    from finetune.jobs import JobRunner, job_view
    from finetune.store import CorrectionStore, Job, JobStore

    settings = get_settings()
    runner = JobRunner(settings, JobStore(settings.app_db), CorrectionStore(settings.app_db), train_threads=threads)
    job = runner.submit(adapter, hyperparameters=_parse_overrides(overrides), min_examples=min_examples,
                        created_by=f"cli:{os.environ.get('USER', 'unknown')}",
                        evaluation={"pubmedqa_path": pubmedqa} if pubmedqa else None)
    audit(settings, "retune.start", job.id, after={"adapter": adapter, "hyperparameters": job.hyperparameters})
    click.echo(f"job {job.id} started (log: {settings.jobs_dir / job.id / 'log.txt'})", err=True)
    if not wait:
        emit_json({"job_id": job.id, "status": job.status})
        return

    def show(j: Job) -> None:
        p = j.progress
        click.echo(f"[{j.status}] {p.get('stage')} step={p.get('step')}/{p.get('total_steps')} loss={p.get('loss')}",
                   err=True)

    job = runner.wait(job.id, on_progress=show)
    emit_json(job_view(job))
    if job.status != "succeeded":
        sys.exit(1)


@click.group("adapters")
def adapters_group() -> None:
    """Adapter versions: list, promote, roll back."""


@adapters_group.command("list")
@handle_errors
def adapters_list() -> None:
    """Every adapter with its versions (manifest, evaluation) and the current one."""
    from finetune.registry import AdapterRegistry

    emit_json(AdapterRegistry(get_settings().adapters_dir).summary())


@adapters_group.command("promote")
@click.argument("name")
@click.argument("version", type=int)
@handle_errors
def adapters_promote(name: str, version: int) -> None:
    """Serve VERSION of NAME (loaded into vLLM if it is running)."""
    from finetune.registry import AdapterRegistry
    from generation.deploy import run_with_deployer

    settings = get_settings()
    reg = AdapterRegistry(settings.adapters_dir)
    before = reg.current(name) if name in reg.names() else None
    served = run_with_deployer(settings, reg, lambda d: d.promote(
        name, version, by=f"cli:{os.environ.get('USER', 'unknown')}", reason="manual promotion"))
    v = reg.current(name)
    audit(settings, "adapter.promote", name, before={"current": before and before.version},
          after={"current": v and v.version})
    emit_json({"adapter": name, "current": v and v.version, "lora_name": v and v.lora_name, "served": served})


@adapters_group.command("rollback")
@click.argument("name")
@handle_errors
def adapters_rollback(name: str) -> None:
    """Serve the previously current version of NAME again."""
    from finetune.registry import AdapterRegistry
    from generation.deploy import run_with_deployer

    settings = get_settings()
    reg = AdapterRegistry(settings.adapters_dir)
    before = reg.current(name) if name in reg.names() else None
    served = run_with_deployer(settings, reg, lambda d: d.rollback(
        name, by=f"cli:{os.environ.get('USER', 'unknown')}", reason="rollback"))
    v = reg.current(name)
    audit(settings, "adapter.rollback", name, before={"current": before and before.version},
          after={"current": v and v.version})
    emit_json({"adapter": name, "current": v and v.version, "lora_name": v and v.lora_name, "served": served})


@click.command("make-tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--texts-from-store/--no-texts-from-store", default=True,
              help="Train the tokenizer on the corpus store's titles and abstracts (if there is one).")
def make_tiny_model_cmd(out_dir: str, texts_from_store: bool) -> None:
    """Build a tiny random Llama + tokenizer + chat template in OUT_DIR (CPU demos and tests)."""
    from finetune.tiny import build_tiny_causal_lm

    texts: list[str] = []
    settings = get_settings()
    if texts_from_store and settings.corpus_db.exists():
        import sqlite3

        con = sqlite3.connect(f"file:{settings.corpus_db}?mode=ro", uri=True)
        texts = [t for (t,) in con.execute("SELECT text FROM chunks LIMIT 20000")]
        con.close()
    click.echo(str(build_tiny_causal_lm(out_dir, texts)))


COMMANDS = [feedback_group, retune_cmd, adapters_group, make_tiny_model_cmd]
