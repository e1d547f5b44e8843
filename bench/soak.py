"""Soak test of the whole server: concurrent clients for minutes, vLLM killed once in the middle, an index swap
under load. Prints requests, errors by kind, p50/p95 latency, and the API process's RSS and open file
descriptors at start and end (they should stay flat).

    .venv/bin/python bench/soak.py --home /tmp/soak-home [--model DIR] [--minutes 10] [--clients 32]
        [--articles 200] [--max-tokens 32] [--json] [--out result.json]

What it does:
1. Indexes ``--articles`` PubMedQA abstracts (../shared/data) into ``--home`` if it has no index yet; builds a
   tiny random model there when ``--model`` is not given (CPU demo).
2. Runs ``pubmind serve`` as a subprocess: it launches and supervises vLLM (a real vLLM OpenAI server).
3. ``--clients`` workers send ``/v1/query`` (answer mode) and ``/v1/chat/completions`` (half each, a quarter of
   them streamed) until ``--minutes`` have passed. Each request has a 120 s timeout; the loop is bounded.
4. At 50% of the time it SIGKILLs the vLLM process (the supervisor must restart it; requests meanwhile get
   503s). At 25% it ingests 20 more abstracts, which saves a new index generation that the server swaps in.
5. Goal: no error other than 503 while vLLM restarts; RSS and open fds about flat: sampled every 15 s, the
   end compared with the first sample after a minute at full concurrency (pools and caches grown by then).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import free_port  # noqa: E402
from bench.server import ensure_index, pct, pubmedqa  # noqa: E402
from pubmind.settings import Settings, load_settings  # noqa: E402


def start_api(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PUBMIND_HOME": str(settings.home), "PUBMIND_PRESET": "test",
           "PUBMIND_LLM__MODEL": settings.llm.model, "PUBMIND_SERVER__RATE_LIMIT_PER_MINUTE": "1000000",
           "PUBMIND_LLM__VLLM_PORT": str(free_port()), "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("PUBMIND_LLM__VLLM_URL", None)
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "pubmind"), "serve", "--port", str(port),
                                 "--log-level", "warning"], env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"API exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"API not ready within 600 s:\n{log.read_text()[-3000:]}")


def vllm_child(api: psutil.Process) -> psutil.Process | None:
    for child in api.children(recursive=True):
        try:
            if "vllm" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def usage(api: psutil.Process) -> dict[str, float]:
    return {"rss_mib": api.memory_info().rss / 2**20, "open_fds": api.num_fds()}


async def soak(args: argparse.Namespace, settings: Settings, questions: list[str], extra: list[Any]) -> dict[str, Any]:
    from retrieval.indexer import Indexer
    from server.auth import KeyStore

    ks = KeyStore(settings.app_db)
    key_name = f"soak-{os.getpid()}-{int(time.time())}"
    key = ks.create(key_name, "reader")
    port = free_port()
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    log = settings.logs_dir / "soak-api.log"
    api_proc = start_api(settings, port, log)
    api = psutil.Process(api_proc.pid)
    latencies: list[float] = []
    kinds: Counter[str] = Counter()
    events: list[dict[str, Any]] = []
    rng = random.Random(0)
    try:
        limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits,
                                     headers={"Authorization": f"Bearer {key}"}) as c:
            async def one(i: int) -> str:
                q = questions[i % len(questions)]
                stream = rng.random() < 0.25
                if i % 2:
                    body: dict[str, Any] = {"question": q, "k": 5, "max_tokens": args.max_tokens, "stream": stream}
                    path = "/v1/query"
                else:
                    body = {"model": "base", "messages": [{"role": "user", "content": q}],
                            "max_tokens": args.max_tokens, "stream": stream}
                    path = "/v1/chat/completions"
                try:
                    if stream:
                        async with c.stream("POST", path, json=body) as r:
                            text = (await r.aread()).decode()
                            if r.status_code != 200:
                                return str(r.status_code)
                            return "stream_error" if ("event: error" in text or '"error"' in text) else "200"
                    r = await c.post(path, json=body)
                    return str(r.status_code)
                except httpx.HTTPError as e:
                    return type(e).__name__

            for i in range(4):  # warm-up
                await one(i)
            samples: list[dict[str, float]] = []
            t_start = time.monotonic()
            t_end = t_start + args.minutes * 60
            counter = 0

            async def worker() -> None:
                nonlocal counter
                while time.monotonic() < t_end:
                    i = counter
                    counter += 1
                    t0 = time.perf_counter()
                    kind = await one(i)
                    kinds[kind] += 1
                    if kind == "200":
                        latencies.append(time.perf_counter() - t0)

            def ingest_more() -> None:
                with Indexer(settings) as ix:
                    ix.apply(extra, progress=False)

            async def chaos() -> None:
                await asyncio.sleep(args.minutes * 60 * 0.25)
                t0 = time.monotonic()
                await asyncio.to_thread(ingest_more)
                events.append({"event": "index_swap", "at_s": round(t0 - t_start, 1),
                               "ingest_s": round(time.monotonic() - t0, 1)})
                await asyncio.sleep(max(0.0, t_start + args.minutes * 60 * 0.5 - time.monotonic()))
                victim = vllm_child(api)
                if victim is None:
                    events.append({"event": "vllm_kill", "error": "no vLLM child found"})
                    return
                victim.kill()
                killed = time.monotonic()
                events.append({"event": "vllm_kill", "pid": victim.pid, "at_s": round(killed - t_start, 1)})
                while time.monotonic() < t_end:  # bounded: until the run ends
                    await asyncio.sleep(1)
                    try:
                        if (await c.get("/health")).status_code == 200:
                            events.append({"event": "vllm_back", "after_s": round(time.monotonic() - killed, 1)})
                            return
                    except httpx.HTTPError:
                        pass

            async def sample() -> None:  # RSS and fds every 15 s while the load runs
                while time.monotonic() < t_end:
                    samples.append({"at_s": round(time.monotonic() - t_start, 1), **usage(api)})
                    await asyncio.sleep(15)

            await asyncio.gather(chaos(), sample(), *(worker() for _ in range(args.clients)))
            wall = time.monotonic() - t_start
            samples.append({"at_s": round(wall, 1), **usage(api)})
    finally:
        api_proc.send_signal(signal.SIGINT)
        try:
            api_proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(api_proc.pid, signal.SIGKILL)
        ks.revoke(key_name)
        ks.close()
    total = sum(kinds.values())
    # "start" is the first sample after a minute at full concurrency (connection pools, caches and worker
    # threads have grown to the load by then); growth from there to the end is what would be a leak
    warm = next((s for s in samples if s["at_s"] >= 60), samples[0])
    start_usage, end_usage = warm, samples[-1]
    unexpected = {k: v for k, v in kinds.items() if k not in ("200", "503")}
    return {
        "config": {"minutes": args.minutes, "clients": args.clients, "max_tokens": args.max_tokens,
                   "model": settings.llm.model, "cpus": os.cpu_count()},
        "requests": total, "ok": kinds.get("200", 0), "errors_by_kind": dict(kinds - Counter({"200": kinds["200"]})),
        "unexpected_errors": unexpected, "throughput_rps": total / wall if wall else 0.0,
        "latency_ok": {"p50_ms": pct(latencies, 50) * 1000 if latencies else None,
                       "p95_ms": pct(latencies, 95) * 1000 if latencies else None,
                       "mean_ms": statistics.fmean(latencies) * 1000 if latencies else None},
        "events": events, "usage_start": start_usage, "usage_end": end_usage, "usage_samples": samples,
        "ratios": {"rss_end_over_start": end_usage["rss_mib"] / start_usage["rss_mib"],
                   "fds_end_over_start": end_usage["open_fds"] / start_usage["open_fds"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True, type=Path)
    ap.add_argument("--model", help="base model dir (default: a tiny random model built in HOME)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--articles", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    assert 0 < args.minutes <= 60, "--minutes must be in (0, 60]"
    assert 1 <= args.clients <= 256, "--clients must be in [1, 256]"
    articles, questions = pubmedqa(args.articles + 20)
    model = args.model
    if not model:
        from finetune.tiny import build_tiny_causal_lm

        model = str(args.home / "tiny-llm")
        if not (Path(model) / "config.json").exists():
            build_tiny_causal_lm(model, [a.title for a in articles])
    settings = load_settings(preset="test", home=str(args.home), llm={"model": model})
    ensure_index(settings, articles[: args.articles])
    result = asyncio.run(soak(args, settings, questions[: args.articles], articles[args.articles:]))
    text = json.dumps(result, indent=2)
    if not args.json:
        print(f"{result['requests']} requests, {result['ok']} ok, errors {result['errors_by_kind']}, "
              f"p50 {result['latency_ok']['p50_ms']} ms; RSS x{result['ratios']['rss_end_over_start']:.2f}, "
              f"fds x{result['ratios']['fds_end_over_start']:.2f}")
    print(text)
    if args.out:
        args.out.write_text(text)
    if result["unexpected_errors"]:
        raise SystemExit(f"FAILED: errors other than 503: {result['unexpected_errors']}")


if __name__ == "__main__":
    main()
