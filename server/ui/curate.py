"""The curators' pages (curator or admin): the queue (down-rated answers, answers with unsupported citations,
corrections awaiting review), the correction editor (PMIDs picked from the evidence or a search, every
``[PMID:n]`` checked against the corpus as you type), review with a note and its history, and JSONL import
with a per-line report. Corrections go through ``FeedbackService`` like ``POST /v1/feedback``."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template

from finetune.dataset import validate_correction
from finetune.ratings import QUEUE_KINDS, RatingStore, Review
from finetune.store import AnswerStore, Correction, CorrectionStore
from generation.citations import cited_pmids
from pubmind.audit import AuditEntry, AuditLog
from pubmind.errors import Forbidden, InvalidInput
from pubmind.records import Article
from pubmind.settings import Settings
from retrieval.store import CorpusStore
from server.auth import Principal, require_role
from server.feedback.protocol import FeedbackIn
from server.feedback.service import FeedbackService
from server.query.protocol import QueryRequest
from server.query.service import QueryService
from server.ui.render import answer_html
from server.ui.views import convert, form_value, page, render

UiRequest = Request[Principal, Any, Any]
CURATOR = [require_role("curator")]
MAX_IMPORT_LINES = 5_000
_STATUSES = ("pending", "accepted", "rejected")


def _label(article: Article | None, n: int = 110) -> str:
    """An article's title, or the start of its abstract when it has none."""
    if article is None:
        return "(not in the corpus)"
    text = article.title or article.abstract_text
    return text if len(text) <= n else text[:n].rsplit(" ", 1)[0] + "…"


def _html(body: str, status: int = 200) -> Response[str]:
    return Response(body, media_type=MediaType.HTML, status_code=status)


@get("/curate", include_in_schema=False, guards=CURATOR)
async def queue(request: UiRequest, ui_ratings: NamedDependency[RatingStore],
                kind: Annotated[list[str] | None, QueryParameter(max_items=3)] = None,
                q: Annotated[str, QueryParameter(max_length=300)] = "") -> Template:
    kinds = tuple(kind) if kind else QUEUE_KINDS
    items = await anyio.to_thread.run_sync(lambda: ui_ratings.queue(kinds, q))
    return page("curate_queue.html", request, items=items, kinds=kinds, q=q,
                labels={"down": "Rated down", "unsupported": "Unsupported citations", "pending": "Awaiting review"})


async def _editor(request: UiRequest, answers: AnswerStore, ratings: RatingStore, corpus: CorpusStore,
                  answer_id: str | None) -> Template:
    ans = ask = None
    evidence: list[dict[str, Any]] = []
    if answer_id is not None:
        ans = await anyio.to_thread.run_sync(answers.get, answer_id)
        ask = await anyio.to_thread.run_sync(ratings.ask, answer_id)
        pmids = [int(e["pmid"]) for e in ask.evidence] if ask else [p for p, _ in ans.retrieved]
        arts = await anyio.to_thread.run_sync(corpus.get_many, pmids)
        evidence = [{"pmid": p, "title": _label(arts.get(p)), "year": arts[p].year if p in arts else None}
                    for p in pmids]
    cited = set(cited_pmids(ans.answer)) if ans else set()
    return page("curate_editor.html", request, ans=ans, evidence=evidence, cited=cited)


@get("/curate/correct/{answer_id:str}", include_in_schema=False, guards=CURATOR)
async def correct(request: UiRequest, answer_id: FromPath[str], answers: NamedDependency[AnswerStore],
                  ui_ratings: NamedDependency[RatingStore], corpus: NamedDependency[CorpusStore]) -> Template:
    return await _editor(request, answers, ui_ratings, corpus, answer_id)


@get("/curate/new", include_in_schema=False, guards=CURATOR)
async def new(request: UiRequest, answers: NamedDependency[AnswerStore], ui_ratings: NamedDependency[RatingStore],
              corpus: NamedDependency[CorpusStore]) -> Template:
    return await _editor(request, answers, ui_ratings, corpus, None)


@post("/curate/check", include_in_schema=False, guards=CURATOR, status_code=200)
async def check(request: UiRequest, corpus: NamedDependency[CorpusStore]) -> Response[str]:
    """htmx: every PMID the draft cites, found in the corpus (with its title) or not."""
    form = await request.form()
    text = form_value(form, "corrected_answer", max_chars=20_000)
    pmids = cited_pmids(text)
    found = await anyio.to_thread.run_sync(corpus.get_many, pmids)
    rows = [{"pmid": p, "title": _label(found.get(p)), "ok": p in found} for p in pmids]
    return _html(render(request, "_pmid_check.html", rows=rows))


@get("/curate/search", include_in_schema=False, guards=CURATOR)
async def search(request: UiRequest, query_service: NamedDependency[QueryService],
                 q: Annotated[str, QueryParameter(max_length=2000)] = "") -> Response[str]:
    """htmx: corpus search (the query service's search mode) to pick PMIDs from."""
    if not q.strip():
        return _html("")
    found = await query_service.search(QueryRequest(question=q.strip(), mode="search", k=10))
    return _html(render(request, "_search_hits.html", hits=found.evidence))


def _pmids(form: Any) -> list[int]:
    out = []
    for raw in form.getall("pmids", []):
        try:
            out.append(int(raw))
        except (TypeError, ValueError):
            raise InvalidInput(f"pmids must be whole numbers, got {raw!r}", param="pmids") from None
    return list(dict.fromkeys(out))


@post("/curate/corrections", include_in_schema=False, guards=CURATOR, status_code=303)
async def submit(request: UiRequest, feedback_service: NamedDependency[FeedbackService]) -> Redirect:
    form = await request.form()
    answer_id = form_value(form, "answer_id", max_chars=64).strip() or None
    question = form_value(form, "question", max_chars=20_000).strip() or None
    data = convert({"corrected_answer": form_value(form, "corrected_answer", max_chars=20_000),
                    "answer_id": answer_id, "question": question, "pmids": _pmids(form),
                    "note": form_value(form, "note", max_chars=5_000)}, FeedbackIn)
    fb = await feedback_service.submit(data, by=request.user)
    return Redirect(f"/ui/curate/corrections/{fb.id}", status_code=303)


@get("/curate/corrections", include_in_schema=False, guards=CURATOR)
async def corrections(request: UiRequest, feedback_service: NamedDependency[FeedbackService],
                      status: Annotated[str, QueryParameter(max_length=20)] = "") -> Template:
    if status and status not in _STATUSES:
        raise InvalidInput(f"status must be one of {list(_STATUSES)}, got {status!r}", param="status")
    found = await feedback_service.find(status or None, limit=1000, offset=0)  # type: ignore[arg-type]
    return page("corrections.html", request, items=sorted(found.data, key=lambda c: -c.created_at), status=status)


def review_history(audit: list[AuditEntry], notes: list[Review]) -> list[dict[str, Any]]:
    """The audit trail's entries for a correction (oldest first), each review with its workbench note."""
    unused = list(notes)
    out = []
    for e in audit:
        after = e.after if isinstance(e.after, dict) else {}
        note = next((n for n in unused if n.status == after.get("status") and n.reviewer == after.get("reviewer")
                     and abs(n.created_at - e.at) < 60), None)
        if note is not None:
            unused.remove(note)
        out.append({"at": e.at, "action": e.action.removeprefix("correction."), "by": after.get("reviewer") or e.key_id,
                    "role": e.role, "status": after.get("status"), "note": note.note if note else ""})
    return out


def _may_review(settings: Settings, user: Principal, fb: Correction) -> str | None:
    """Why ``user`` may not review ``fb`` (None: they may)."""
    if fb.curator == user.name and not settings.server.curators_review_own:
        return (f"{user.name!r} wrote this correction; another curator must review it "
                f"(settings: server.curators_review_own)")
    return None


@get("/curate/corrections/{correction_id:str}", include_in_schema=False, guards=CURATOR)
async def correction(request: UiRequest, correction_id: FromPath[str], feedback_service: NamedDependency[FeedbackService],
                     ui_ratings: NamedDependency[RatingStore], corpus: NamedDependency[CorpusStore],
                     settings: NamedDependency[Settings]) -> Template:
    fb = await feedback_service.get(correction_id)
    history = review_history(await feedback_service.history(correction_id),
                             await anyio.to_thread.run_sync(ui_ratings.reviews, correction_id))
    arts = await anyio.to_thread.run_sync(corpus.get_many, list(dict.fromkeys([*fb.pmids, *cited_pmids(fb.corrected_answer)])))
    pmids = [{"pmid": p, "title": _label(arts.get(p))} for p in fb.pmids]
    return page("correction.html", request, fb=fb, history=history, pmids=pmids,
                answer=answer_html(fb.corrected_answer, list(arts)),
                original=answer_html(str(fb.provenance.get("original_answer") or ""),
                                     fb.provenance.get("retrieved_pmids") or []),
                blocked=_may_review(settings, request.user, fb))


@post("/curate/corrections/{correction_id:str}/review", include_in_schema=False, guards=CURATOR, status_code=303)
async def review(request: UiRequest, correction_id: FromPath[str], feedback_service: NamedDependency[FeedbackService],
                 ui_ratings: NamedDependency[RatingStore], settings: NamedDependency[Settings]) -> Redirect:
    form = await request.form()
    status = form_value(form, "status", max_chars=20)
    if status not in ("accepted", "rejected"):
        raise InvalidInput(f"status must be 'accepted' or 'rejected', got {status!r}", param="status")
    note = form_value(form, "note", max_chars=5_000)
    fb = await feedback_service.get(correction_id)
    if why := _may_review(settings, request.user, fb):
        raise Forbidden(why, param="status")
    await feedback_service.review(correction_id, status, by=request.user)  # type: ignore[arg-type]
    await anyio.to_thread.run_sync(ui_ratings.add_review, correction_id, request.user.name, status, note)
    return Redirect(f"/ui/curate/corrections/{correction_id}", status_code=303)


@get("/curate/import", include_in_schema=False, guards=CURATOR)
async def import_page(request: UiRequest) -> Template:
    return page("import.html", request, report=None)


def import_lines(data: bytes, *, filename: str, by: Principal, check_only: bool, corpus: CorpusStore,
                 corrections: CorrectionStore, audit: AuditLog, settings: Settings) -> list[dict[str, Any]]:
    """One report row per non-blank line: ``{"line", "ok", "message", "id"}``. Each line is a FeedbackIn
    object (``question``, ``corrected_answer``, ``pmids``, optional ``note``/``rating``) checked against the
    corpus like ``POST /v1/feedback``; valid lines are stored as pending corrections unless ``check_only``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"file {filename!r} is not UTF-8 text: {e}", param="file") from None
    lines = text.splitlines()
    if len(lines) > MAX_IMPORT_LINES:
        raise InvalidInput(f"file has {len(lines)} lines, the limit is {MAX_IMPORT_LINES}", param="file")
    report = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = msgspec.json.decode(line, type=FeedbackIn)
            if item.question is None:
                raise InvalidInput("question is required in an imported line", param="question")
            q, answer, pmids = validate_correction(
                corpus, question=item.question, corrected_answer=item.corrected_answer, pmids=item.pmids,
                rating=item.rating, note=item.note, max_question_chars=settings.server.max_question_chars)
        except (msgspec.DecodeError, msgspec.ValidationError, InvalidInput) as e:
            report.append({"line": n, "ok": False, "message": getattr(e, "message", None) or str(e), "id": None})
            continue
        fb_id = None
        if not check_only:
            fb = corrections.add(question=q, corrected_answer=answer, pmids=pmids, curator=by.name,
                                 rating=item.rating, note=item.note, source=f"import:{filename}")
            audit.record("correction.submit", fb.id, by.actor,
                         after={"status": fb.status, "answer_id": None, "pmids": fb.pmids, "source": fb.source})
            fb_id = fb.id
        report.append({"line": n, "ok": True, "message": "imported" if fb_id else "valid", "id": fb_id})
    return report


@post("/curate/import", include_in_schema=False, guards=CURATOR, status_code=200)
async def import_file(request: UiRequest, corpus: NamedDependency[CorpusStore],
                      corrections: NamedDependency[CorrectionStore], audit: NamedDependency[AuditLog],
                      settings: NamedDependency[Settings]) -> Template:
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise InvalidInput("file: choose a JSONL file to import", param="file")
    data = await upload.read()
    check_only = form.get("check_only") == "on"
    name = upload.filename[:100]
    report = await anyio.to_thread.run_sync(lambda: import_lines(
        data, filename=name, by=request.user, check_only=check_only, corpus=corpus,
        corrections=corrections, audit=audit, settings=settings))
    return page("import.html", request, report=report, filename=name, check_only=check_only)


HANDLERS = [queue, correct, new, check, search, submit, corrections, correction, review, import_page, import_file]
