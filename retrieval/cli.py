"""``pubmind search`` and ``pubmind eval retrieval``."""

from __future__ import annotations

import click

from pubmind.cliutil import emit_json, get_settings, handle_errors

SNIPPET_CHARS = 300  # snippet length shown in text output


@click.command("search")
@click.argument("query")
@click.option("--k", type=int, default=None, help="Number of hits (default: retrieval.k).")
@click.option("--mode", type=click.Choice(["dense", "lexical", "hybrid"]), default=None,
              help="Retriever (default: retrieval.mode).")
@click.option("--year-from", type=int, default=None, help="Only articles published in or after this year.")
@click.option("--year-to", type=int, default=None, help="Only articles published in or before this year.")
@click.option("--journal", "journals", multiple=True, help="Journal title or ISO abbreviation (repeatable).")
@click.option("--mesh", "mesh", multiple=True, help="MeSH descriptor (repeatable; any of them).")
@click.option("--mesh-major", is_flag=True, help="Only where a --mesh descriptor is a major topic.")
@click.option("--pubtype", "publication_types", multiple=True, help="Publication type (repeatable).")
@click.option("--language", "languages", multiple=True, help="ISO 639-2 language code, e.g. eng (repeatable).")
@click.option("--exclude-retracted", is_flag=True, help="Leave out retracted articles.")
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON.")
@handle_errors
def search_cmd(query: str, k: int | None, mode: str | None, year_from: int | None, year_to: int | None,
               journals: tuple[str, ...], mesh: tuple[str, ...], mesh_major: bool,
               publication_types: tuple[str, ...], languages: tuple[str, ...], exclude_retracted: bool,
               as_json: bool) -> None:
    """Search the local corpus (hybrid dense + BM25 by default)."""
    from retrieval.search import Searcher
    from retrieval.store import Filters

    filters = Filters(year_from=year_from, year_to=year_to, journals=journals, mesh=mesh,
                      mesh_major_only=mesh_major, publication_types=publication_types, languages=languages,
                      exclude_retracted=exclude_retracted)
    searcher = Searcher.open(get_settings())
    try:
        hits = searcher.search(query, k=k, mode=mode, filters=filters)
    finally:
        searcher.close()
    if as_json:
        emit_json([h.to_dict() for h in hits])
        return
    for i, h in enumerate(hits, 1):
        meta = ", ".join(str(x) for x in (h.journal, h.year) if x)
        click.echo(f"{i:>2}. [PMID:{h.pmid}] {h.title or '(untitled)'}" + (f" ({meta})" if meta else ""))
        snip = h.snippet if len(h.snippet) <= SNIPPET_CHARS else h.snippet[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " ..."
        click.echo(f"    score={h.score:.4f}  {snip}")
    if not hits:
        click.echo("no hits")


@click.group("eval")
def eval_group() -> None:
    """Evaluate retrieval (and, from finetune, answers) on PubMedQA."""


@eval_group.command("retrieval")
@click.option("--dataset", type=click.Choice(["pubmedqa"]), default="pubmedqa", show_default=True)
@click.option("--data", "data_path", type=click.Path(dir_okay=False), required=True,
              help="PubMedQA ori_pqal.json.")
@click.option("--queries", "queries_path", type=click.Path(dir_okay=False), default=None,
              help="TSV 'pmid<TAB>query' with a header row (default: the dataset's questions).")
@click.option("--mode", "modes", type=click.Choice(["dense", "lexical", "hybrid"]), multiple=True,
              help="Modes to evaluate (repeatable; default: all three).")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep the index here and reuse it next time (default: a temporary folder).")
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON.")
@handle_errors
def eval_retrieval(dataset: str, data_path: str, queries_path: str | None, modes: tuple[str, ...],
                   workdir: str | None, as_json: bool) -> None:
    """Recall@1/5/10, MRR and nDCG@10 per mode on a throwaway index of the dataset's abstracts."""
    from retrieval.pubmedqa import evaluate_retrieval
    from retrieval.search import MODES

    res = evaluate_retrieval(get_settings(), data_path, queries_path, modes or MODES, workdir,
                             progress=not as_json)
    if as_json:
        emit_json(res)
        return
    for mode, m in res.items():
        click.echo(f"{mode:8s} " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in m.items()))


COMMANDS = [search_cmd, eval_group]
