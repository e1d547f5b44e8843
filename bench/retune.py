"""Re-tuning benchmark on the tiny model: training tokens/s, and the time from an accepted correction to the
new adapter version being served.

    .venv/bin/python bench/retune.py --home /tmp/bench-retune [--model DIR] [--vllm-url URL]
        [--articles 50] [--corrections 4] [--epochs 40] [--threads 1] [--out result.json]

What it does:
1. Builds the tiny model (``finetune.tiny``, tokenizer trained on PubMedQA) into ``--model`` if missing, and
   indexes ``--articles`` PubMedQA abstracts into ``--home`` if it has no index yet.
2. Uses the vLLM at ``--vllm-url`` or launches one (``generation.supervisor.VllmSupervisor``, stopped at the end).
3. Serves the API in-process (uvicorn, auth on); a curator key posts ``--corrections`` corrections (PubMedQA
   questions -> short answers citing the article) and accepts them; the clock starts at the last accept.
4. An admin key starts ``POST /v1/retune``; the job is polled until it ends; then ``/v1/query`` with the
   adapter name is repeated until the new version answers. Reported: per-stage times of the job, training
   tokens/s, and accepted -> served seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import free_port  # noqa: E402
from pubmind.settings import Settings, load_settings  # noqa: E402

PUBMEDQA = ROOT.parent / "shared" / "data" / "pubmedqa" / "data" / "ori_pqal.json"
ADAPTER = "bench"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def settings_for(home: Path, model: Path, vllm_url: str, vllm_port: int) -> Settings:
    os.environ["PUBMIND_PRESET"] = "test"
    os.environ.pop("PUBMIND_CONFIG", None)
    return load_settings(home=home, llm={"model": str(model), "vllm_url": vllm_url, "vllm_port": vllm_port,
                                         "max_loras": 2, "max_lora_rank": 8, "vllm_args": ["--dtype", "float32"]},
                         retrieval={"context_tokens": 96})


def prepare(home: Path, model: Path, n_articles: int) -> dict[int, dict[str, Any]]:
    from finetune.tiny import build_tiny_causal_lm
    from retrieval.pubmedqa import load_pubmedqa, to_article

    data = load_pubmedqa(PUBMEDQA)
    if not (model / "config.json").exists():
        print(f"building the tiny model in {model}", flush=True)
        texts = [" ".join(v["CONTEXTS"]) + " " + v["LONG_ANSWER"] + " " + v["QUESTION"] for v in data.values()]
        build_tiny_causal_lm(model, texts)
    s = settings_for(home, model, "http://127.0.0.1:1", 1)
    if not s.index_dir.exists():
        from retrieval.embed import Embedder
        from retrieval.indexer import Indexer

        print(f"indexing {n_articles} PubMedQA abstracts into {home}", flush=True)
        with Indexer(s, Embedder(s.embedding)) as ix:
            ix.apply([to_article(p, r) for p, r in list(data.items())[:n_articles]], progress=False)
    return dict(list(data.items())[:n_articles])


def serve(app: Any) -> tuple[str, Any, threading.Thread]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def run(args: argparse.Namespace) -> dict[str, Any]:
    from server.app import create_app
    from server.auth import KeyStore

    home, model = Path(args.home).absolute(), Path(args.model).absolute()
    data = prepare(home, model, args.articles)
    sup = None
    settings = settings_for(home, model, args.vllm_url or "", free_port())
    if not args.vllm_url:
        from generation.supervisor import VllmSupervisor

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        print("starting vLLM", flush=True)
        sup = VllmSupervisor(settings)
        sup.start()  # the API below talks to it as its supervisor (its per-launch key from the key file)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the job process's torch threads
    ks = KeyStore(settings.app_db)
    tag = uuid.uuid4().hex[:6]
    keys = {r: ks.create(f"bench-{r}-{tag}", r) for r in ("curator", "admin", "reader")}
    ks.close()
    url, server, thread = serve(create_app(settings, supervisor=sup))
    try:
        def client(role: str) -> httpx.Client:
            return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys[role]}"}, timeout=300)

        with client("curator") as cur, client("admin") as adm, client("reader") as rd:
            before = rd.get("/v1/adapters").json()["data"]
            prev = next((a["current"] for a in before if a["name"] == ADAPTER), None)
            for pmid, v in list(data.items())[:args.corrections]:
                phrase = " ".join(v["LONG_ANSWER"].split()[:5]).rstrip(".,;:")
                r = cur.post("/v1/feedback", json={"question": v["QUESTION"], "pmids": [pmid],
                                                   "corrected_answer": f"{v['final_decision'].capitalize()}. "
                                                                       f"{phrase} [PMID:{pmid}]."})
                r.raise_for_status()
                adm.patch(f"/v1/feedback/{r.json()['id']}", json={"status": "accepted"}).raise_for_status()  # not its author
            t_accepted = time.monotonic()
            hp = {"target_modules": ALL_LINEAR, "learning_rate": 0.01, "batch_size": 1, "epochs": args.epochs,
                  "lora_dropout": 0.0}
            r = adm.post("/v1/retune", json={"adapter": ADAPTER, "hyperparameters": hp,
                                             "min_examples": args.corrections})
            r.raise_for_status()
            job_id = r.json()["job_id"]
            last = None
            while True:
                job = adm.get(f"/v1/retune/{job_id}").json()
                p = job["progress"]
                line = f"{job['status']} {p.get('stage')} step {p.get('step')}/{p.get('total_steps')} loss {p.get('loss')}"
                if line != last:
                    print(f"  [{time.monotonic() - t_accepted:6.1f}s] {line}", flush=True)
                    last = line
                if job["status"] not in ("queued", "running"):
                    break
                time.sleep(0.5)
            t_job = time.monotonic()
            if job["status"] != "succeeded" or not job["promoted"]:
                raise SystemExit(f"job did not promote a version: {json.dumps(job, default=str)[:2000]}")
            question = next(iter(data.values()))["QUESTION"]
            while True:  # served = a query by adapter name is answered by the new version
                q = rd.post("/v1/query", json={"question": question, "model": ADAPTER})
                q.raise_for_status()
                if q.json()["adapter"] == job["lora_name"]:
                    break
                time.sleep(0.2)
            t_served = time.monotonic()
        stages = job["stages"]
        order = sorted(stages, key=stages.get)
        stage_s = {s: round((stages[order[i + 1]] if i + 1 < len(order) else job["finished_at"]) - stages[s], 2)
                   for i, s in enumerate(order)}
        return {
            "model": str(model), "corrections": args.corrections, "previous_version": prev,
            "new_version": job["lora_name"], "dataset": {k: job["dataset"][k] for k in ("train", "heldout", "hash")},
            "training": job["training"], "stage_seconds": stage_s,
            "job_seconds": round(job["finished_at"] - job["started_at"], 2),
            "process_start_seconds": round(job["started_at"] - job["created_at"], 2),
            "accepted_to_job_done_seconds": round(t_job - t_accepted, 2),
            "accepted_to_served_seconds": round(t_served - t_accepted, 2),
            "gate": {"backend": job["evaluation"]["backend"], "reasons": job["evaluation"]["reasons"]},
            "torch_threads": args.threads,
        }
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        if sup is not None:
            sup.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", required=True, help="PUBMIND_HOME for the benchmark (created, indexed once).")
    ap.add_argument("--model", default=None, help="Tiny model directory (default HOME/tiny-llm; built if missing).")
    ap.add_argument("--vllm-url", default="", help="Running vLLM serving --model (default: launch one).")
    ap.add_argument("--articles", type=int, default=50, help="PubMedQA abstracts to index.")
    ap.add_argument("--corrections", type=int, default=4, help="Corrections to submit and accept.")
    ap.add_argument("--epochs", type=float, default=40, help="Training epochs.")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the job process.")
    ap.add_argument("--out", default=None, help="Also write the result JSON here.")
    args = ap.parse_args()
    args.model = args.model or str(Path(args.home) / "tiny-llm")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
