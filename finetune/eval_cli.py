"""``pubmind eval answers`` and ``pubmind eval list``: added to the ``eval`` group that ``retrieval.cli`` defines
(retrieval must not import finetune, so the subcommands attach from here, through the ``pubmind.commands``
entry point ``eval_answers``)."""

from __future__ import annotations

from pathlib import Path

import click

from pubmind.cliutil import emit_json, get_settings, handle_errors
from retrieval.cli import eval_group


@eval_group.command("answers")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), required=True,
              help="PubMedQA ori_pqal.json (the test split is read from test_ground_truth.json beside it).")
@click.option("--split", type=click.Choice(["test", "all"]), default="test", show_default=True,
              help="test: the official 500-question test split; all: every question in --data.")
@click.option("--limit", type=int, default=None, help="Only the first N questions of the split.")
@click.option("--model", "models", multiple=True,
              help="base, NAME (its current version) or NAME@vN; repeatable (default: base). The first is the "
                   "reference the others are compared with.")
@click.option("--setting", type=click.Choice(["reasoning-required", "reasoning-free"]),
              default="reasoning-required", show_default=True,
              help="reasoning-required: retrieve from an index of the PubMedQA abstracts; reasoning-free: the "
                   "question's own abstract is the only evidence.")
@click.option("--no-retrieval", is_flag=True, help="The model alone: no evidence (overrides --setting).")
@click.option("--vllm-url", default=None,
              help="A running vLLM serving llm.model (default: llm.vllm_url, else one is launched for the run).")
@click.option("--max-tokens", type=int, default=None, help="Max answer tokens (default: llm.max_tokens).")
@click.option("--perplexity/--no-perplexity", default=True, show_default=True,
              help="Score the gold long answer's perplexity (vLLM prompt_logprobs, one request at a time: vLLM 0.32 "
                   "with LoRA crashes when such a request is batched with others, so avoid it on a vLLM that "
                   "serves users).")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON (without per-question records).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the printed report (Markdown, or JSON with --json) to this file.")
@handle_errors
def eval_answers(data_path: str, split: str, limit: int | None, models: tuple[str, ...], setting: str,
                 no_retrieval: bool, vllm_url: str | None, max_tokens: int | None, perplexity: bool,
                 as_json: bool, out_path: str | None) -> None:
    """Answer PubMedQA questions with one or more models through the serving prompt and citation checks:
    accuracy, macro-F1, citations, ROUGE-L, perplexity, latency; deltas with paired-bootstrap 95% CIs."""
    from finetune.answer_eval import evaluate_answers, markdown

    run = evaluate_answers(get_settings(), data_path, models=models or ("base",), split=split, limit=limit,
                           setting="no-retrieval" if no_retrieval else setting, vllm_url=vllm_url,
                           max_tokens=max_tokens, perplexity=perplexity, progress=not as_json)
    if as_json:
        import json

        text = json.dumps({k: v for k, v in run.items() if k != "records"}, indent=2, default=str)
    else:
        text = markdown(run) + f"\n\nstored: {run['path']}"
    click.echo(text)
    if out_path:
        Path(out_path).write_text(text + "\n")


@eval_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@handle_errors
def eval_list(as_json: bool) -> None:
    """Stored answer-evaluation runs, newest first."""
    from finetune.answer_eval import list_runs

    runs = list_runs(get_settings())
    if as_json:
        emit_json(runs)
        return
    for r in runs:
        if "error" in r:
            click.echo(f"{r['id']}  {r['error']}  ({r['path']})")
            continue
        acc = "  ".join(f"{m}={'-' if v is None else f'{v:.3f}'}" for m, v in r["accuracy"].items())
        click.echo(f"{r['id']}  {r['created_at']}  {r['split']} n={r['n']}  {r['setting']}  accuracy: {acc}")
    if not runs:
        click.echo("no stored runs")


COMMANDS = [eval_group]
