"""Answer-evaluation benchmark: seconds per question and generation tokens/s of ``pubmind eval answers``.

    .venv/bin/python bench/answers.py --home /tmp/bench-answers [--model DIR_OR_HUB_ID] [--vllm-url URL]
        [--limit 20] [--setting reasoning-free|reasoning-required|no-retrieval] [--max-tokens N]
        [--preset test|default|gpu] [--out result.json]

Without ``--model`` the tiny random model (``finetune.tiny``) is built into ``--home`` (its answers are noise:
the figures are the machinery's cost, not quality). With a real instruct model, e.g.
``--model Qwen/Qwen2.5-7B-Instruct --preset gpu`` on a GPU machine, the same run gives comparable accuracy.
Uses the vLLM at ``--vllm-url`` or launches one (stopped at the end). Prints and writes: questions, wall
seconds, seconds per question (prompts + generation + scoring), generation tokens/s per model, accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import free_port  # noqa: E402
from pubmind.settings import load_settings  # noqa: E402

PUBMEDQA = ROOT.parent / "shared" / "data" / "pubmedqa" / "data" / "ori_pqal.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True, type=Path)
    ap.add_argument("--model", default=None, help="Model dir or hub id (default: the tiny model, built here).")
    ap.add_argument("--vllm-url", default=None)
    ap.add_argument("--data", type=Path, default=PUBMEDQA)
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--setting", default="reasoning-free",
                    choices=["reasoning-required", "reasoning-free", "no-retrieval"])
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--preset", default="test", choices=["test", "default", "gpu"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from finetune.answer_eval import evaluate_answers

    model = args.model
    if model is None:
        from finetune.tiny import build_tiny_causal_lm

        model = str(args.home / "tiny-llm")
        if not (Path(model) / "config.json").is_file():
            data = json.loads(args.data.read_text())
            build_tiny_causal_lm(model, [" ".join(v["CONTEXTS"]) + " " + v["LONG_ANSWER"] + " " + v["QUESTION"]
                                         for v in data.values()])
    llm: dict[str, object] = {"model": model, "vllm_port": free_port()}
    if args.model is None:
        llm["vllm_args"] = ["--dtype", "float32"]
    settings = load_settings(preset=args.preset, home=str(args.home), llm=llm)
    t0 = time.perf_counter()
    run = evaluate_answers(settings, args.data, models=["base"], split="test", limit=args.limit,
                           setting=args.setting, vllm_url=args.vllm_url, max_tokens=args.max_tokens, progress=True)
    wall = time.perf_counter() - t0
    m = run["metrics"]["base"]
    result = {"model": model, "setting": args.setting, "questions": run["dataset"]["n"],
              "wall_s": round(wall, 1), "s_per_question": round(wall / run["dataset"]["n"], 3),
              "generation_tokens_per_s": m["tokens_per_s"], "latency_s_mean": m["latency_s_mean"],
              "completion_tokens_mean": m["completion_tokens_mean"], "accuracy": m["accuracy"],
              "unparseable": m["unparseable"], "vllm": run["config"]["vllm"], "run": run["id"],
              "wall_includes_vllm_launch": args.vllm_url is None}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
