"""Load benchmark of ``POST /v1/query``: p50/p95 latency and throughput under concurrent clients, and the server's
overhead against calling vLLM directly with the same prompts.

    .venv/bin/python bench/server.py --home /tmp/bench-home --model /tmp/tiny-llm [--vllm-url URL]
        [--articles 200] [--clients 32] [--requests 256] [--k 5] [--max-tokens 64] [--out result.json]

What it does:
1. Indexes ``--articles`` PubMedQA abstracts (from ../shared/data) into ``--home`` if it has no index yet.
2. Uses the vLLM at ``--vllm-url`` or launches one (``generation.supervisor.VllmSupervisor``, stopped at the end).
3. Runs ``pubmind serve --vllm-url ...`` as a subprocess (auth on, a fresh reader key) and sends ``--requests``
   answer-mode queries (PubMedQA questions) from ``--clients`` concurrent clients. Every request must succeed.
4. Builds the very same prompts in-process (``server.rag.RagService.prepare``: the server's own code) and sends
   them straight to vLLM with the same concurrency, max_tokens and temperature (greedy: identical outputs).
5. Overhead = (server latency - direct vLLM latency) / server latency, i.e. everything but generation
   (HTTP, auth, retrieval, prompt building, citation check, provenance write) as a share of end-to-end time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import free_port  # noqa: E402
from pubmind.records import Article  # noqa: E402
from pubmind.settings import Settings, load_settings  # noqa: E402

PUBMEDQA = ROOT.parent / "shared" / "data" / "pubmedqa" / "data" / "ori_pqal.json"


def pubmedqa(n: int) -> tuple[list[Article], list[str]]:
    """The first ``n`` PubMedQA abstracts (``retrieval.pubmedqa``'s conversion) and their questions."""
    from retrieval.pubmedqa import load_pubmedqa, to_article

    data = list(load_pubmedqa(PUBMEDQA).items())[:n]
    return [to_article(pmid, rec) for pmid, rec in data], [rec["QUESTION"] for _, rec in data]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def summary(lat: list[float], wall: float) -> dict[str, float]:
    return {"n": len(lat), "p50_ms": pct(lat, 50) * 1000, "p95_ms": pct(lat, 95) * 1000,
            "mean_ms": statistics.fmean(lat) * 1000, "throughput_rps": len(lat) / wall, "wall_s": wall}


async def run_load(n: int, clients: int, send: Any) -> tuple[list[float], list[Any], float]:
    """``n`` calls of ``send(i)`` from ``clients`` concurrent workers; (latencies, results, wall time)."""
    latencies: list[float] = [0.0] * n
    results: list[Any] = [None] * n
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            results[i] = await send(i)
            latencies[i] = time.perf_counter() - t0

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, results, time.perf_counter() - t0


def ensure_index(settings: Settings, articles: list[Article]) -> None:
    from retrieval.index import disk_generation
    from retrieval.indexer import Indexer

    if disk_generation(settings.index_dir) is not None:
        return
    print(f"indexing {len(articles)} PubMedQA abstracts into {settings.home} ...", flush=True)
    with Indexer(settings) as ix:
        ix.apply(articles, progress=False)


def start_api(settings: Settings, vllm_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PUBMIND_HOME": str(settings.home), "PUBMIND_LLM__MODEL": settings.llm.model,
           "PUBMIND_LLM__VLLM_URL": vllm_url, "PUBMIND_LLM__VLLM_API_KEY": settings.llm.vllm_api_key,
           "PUBMIND_SERVER__RATE_LIMIT_PER_MINUTE": "1000000",
           "PUBMIND_LLM__MAX_TOKENS": str(settings.llm.max_tokens)}
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "pubmind"), "serve", "--port", str(port),
                                 "--log-level", "warning"], env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"API exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"API not ready within 300 s:\n{log.read_text()[-3000:]}")


async def bench(args: argparse.Namespace, settings: Settings, vllm_url: str, questions: list[str]) -> dict[str, Any]:
    from server.auth import KeyStore
    from server.services import build_services

    ks = KeyStore(settings.app_db)
    name = f"bench-{os.getpid()}-{int(time.time())}"
    key = ks.create(name, "reader")
    port = free_port()
    log = settings.logs_dir / "bench-api.log"
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    api = start_api(settings, vllm_url, port, log)
    qs = [questions[i % len(questions)] for i in range(args.requests)]
    try:
        limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits,
                                     headers={"Authorization": f"Bearer {key}"}) as c:
            async def query(i: int) -> dict[str, Any]:
                r = await c.post("/v1/query", json={"question": qs[i], "k": args.k, "max_tokens": args.max_tokens})
                return {"status": r.status_code, "body": r.json()}

            for i in range(min(4, len(qs))):  # warm-up (model graphs, caches)
                await query(i)
            print(f"server: {args.requests} requests, {args.clients} clients ...", flush=True)
            lat_s, res_s, wall_s = await run_load(args.requests, args.clients, query)
    finally:
        api.send_signal(signal.SIGINT)
        try:
            api.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(api.pid, signal.SIGKILL)
        ks.revoke(name)
        ks.close()
    errors = [r for r in res_s if r["status"] != 200]

    # the same prompts, built by the server's own code in this process, sent straight to vLLM
    services = build_services(settings.model_copy(update={"llm": settings.llm.model_copy(update={"vllm_url": vllm_url})}))
    rag = services.rag
    prompts = []
    for q in qs:
        prep = await rag.prepare(q, k=args.k, mode=None, filters=None, model="base", max_tokens=args.max_tokens)
        prompts.append(prep.messages)
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    auth = {"Authorization": f"Bearer {settings.llm.vllm_api_key}"} if settings.llm.vllm_api_key else {}
    async with httpx.AsyncClient(base_url=vllm_url, timeout=600, limits=limits, headers=auth) as v:
        async def direct(i: int) -> dict[str, Any]:
            r = await v.post("/v1/chat/completions", json={
                "model": rag.base_name, "messages": prompts[i], "max_tokens": args.max_tokens,
                "temperature": settings.llm.temperature})
            return {"status": r.status_code, "body": r.json()}

        for i in range(min(4, len(qs))):
            await direct(i)
        print(f"direct vLLM: {args.requests} requests, {args.clients} clients ...", flush=True)
        lat_d, res_d, wall_d = await run_load(args.requests, args.clients, direct)
    await services.aclose()
    errors_d = [r for r in res_d if r["status"] != 200]

    ok = [r["body"] for r in res_s if r["status"] == 200]
    tm = {k: statistics.fmean(b["timings_ms"].get(k, 0.0) for b in ok) for k in
          ("retrieval", "prompt", "generation", "verify", "total")} if ok else {}
    server, direct_s = summary(lat_s, wall_s), summary(lat_d, wall_d)
    tokens_s = [b["usage"]["completion_tokens"] for b in ok]
    tokens_d = [r["body"]["usage"]["completion_tokens"] for r in res_d if r["status"] == 200]
    return {
        "config": {"requests": args.requests, "clients": args.clients, "k": args.k, "max_tokens": args.max_tokens,
                   "articles": args.articles, "model": settings.llm.model, "cpus": os.cpu_count()},
        "server": server, "direct_vllm": direct_s,
        "errors": {"server": len(errors), "direct": len(errors_d),
                   "examples": [e["body"] for e in (errors + errors_d)[:3]]},
        "completion_tokens_mean": {"server": statistics.fmean(tokens_s) if tokens_s else 0,
                                   "direct": statistics.fmean(tokens_d) if tokens_d else 0},
        "server_timings_mean_ms": tm,
        "overhead": {
            "p50": (server["p50_ms"] - direct_s["p50_ms"]) / server["p50_ms"],
            "mean": (server["mean_ms"] - direct_s["mean_ms"]) / server["mean_ms"],
            "in_server_non_generation_share": ((tm["total"] - tm["generation"]) / server["mean_ms"]) if tm else None,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True, type=Path)
    ap.add_argument("--model", help="base model dir (default: llm.model from settings)")
    ap.add_argument("--vllm-url", default="")
    ap.add_argument("--vllm-api-key", default="", help="API key of the vLLM at --vllm-url (llm.vllm_api_key)")
    ap.add_argument("--articles", type=int, default=200)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--vllm-args", default='["--dtype", "float32"]', help="JSON list for a launched vLLM")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("PUBMIND_PRESET", "test")
    llm: dict[str, Any] = {"max_tokens": max(args.max_tokens, 1), "vllm_args": json.loads(args.vllm_args),
                           "max_loras": 2, "vllm_port": free_port()}
    if args.model:
        llm["model"] = args.model
    if args.vllm_api_key:
        llm["vllm_api_key"] = args.vllm_api_key
    settings = load_settings(home=args.home, llm=llm)
    articles, questions = pubmedqa(args.articles)
    ensure_index(settings, articles)

    supervisor = None
    vllm_url = args.vllm_url
    try:
        if not vllm_url:
            from generation.supervisor import VllmSupervisor

            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            supervisor = VllmSupervisor(settings)
            print(f"launching vLLM at {supervisor.url} ...", flush=True)
            supervisor.start()
            vllm_url = supervisor.url
            key = supervisor.key_path.read_text().strip()  # its per-launch API key
            settings = settings.model_copy(update={"llm": settings.llm.model_copy(update={"vllm_api_key": key})})
        result = asyncio.run(bench(args, settings, vllm_url, questions))
    finally:
        if supervisor is not None:
            supervisor.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    if result["errors"]["server"] or result["errors"]["direct"]:
        raise SystemExit(f"FAILED: {result['errors']['server']} server / {result['errors']['direct']} direct errors")


if __name__ == "__main__":
    main()
