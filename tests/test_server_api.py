"""End-to-end API tests: a real vLLM (CPU, tiny model), a real 50-article PubMedQA index, the API served by
uvicorn on a local port, exercised over HTTP with httpx and the official ``openai`` client."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fixtures_server import LiveServer, api_settings, bearer, create_keys

pytestmark = [pytest.mark.vllm, pytest.mark.integration, pytest.mark.network]

QUESTION = "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"
LACE_PMID = 21645374  # the PubMedQA article this question was written for


def make_adapter(tiny_model_dir: Path, out: Path) -> Path:
    """A real PEFT LoRA (rank 8) for the tiny model, saved like a training run would."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def live(server_home: Path, tiny_model_dir: Path, vllm_server: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from finetune.registry import AdapterRegistry
    from server.app import create_app

    settings = api_settings(server_home, tiny_model_dir, vllm_server)
    reg = AdapterRegistry(settings.adapters_dir)
    if "lace" not in reg.names():
        src = make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"))
        reg.promote("lace", reg.create_version("lace", src, {"base_model": str(tiny_model_dir)}).version)
    keys = create_keys(settings, tag=f"-{uuid.uuid4().hex[:6]}")
    with LiveServer(create_app(settings)) as srv:
        yield {"url": srv.url, "keys": keys, "settings": settings, "app": srv.server.config.app}


def client(live: dict[str, Any], role: str = "reader") -> httpx.Client:
    return httpx.Client(base_url=live["url"], headers=bearer(live["keys"][role]), timeout=120)


def sse_events(text: str) -> list[tuple[str, Any]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_health_ready(live: dict[str, Any]) -> None:
    r = httpx.get(live["url"] + "/health", headers=bearer(live["keys"]["admin"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert body["index"]["count"] > 0
    assert body["index"]["version"]
    assert httpx.get(live["url"] + "/health").json() == {"status": "ready", "reason": None}


def test_query_answer_records_provenance(live: dict[str, Any]) -> None:
    from finetune.store import AnswerStore
    from server.auth import KeyStore
    from server.rag import conversation_hash

    with client(live) as c:
        r = c.post("/v1/query", json={"question": QUESTION, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("ans_")
    assert isinstance(body["answer"], str)
    assert body["answer"]
    assert body["model"] == "base"
    assert body["adapter"] is None
    assert body["index_version"]
    ev = body["evidence"]
    assert len(ev) == 5
    assert [e["rank"] for e in ev] == [1, 2, 3, 4, 5]
    assert LACE_PMID in [e["pmid"] for e in ev]
    assert all(e["url"] == f"https://pubmed.ncbi.nlm.nih.gov/{e['pmid']}/" for e in ev)
    in_prompt = {e["pmid"] for e in ev if e["in_prompt"]}
    assert in_prompt
    assert {c["pmid"] for c in body["citations"]} <= in_prompt
    assert not set(body["unsupported_citations"]) & in_prompt
    assert {"retrieval", "prompt", "generation", "verify", "total"} <= set(body["timings_ms"])
    assert body["usage"]["completion_tokens"] > 0
    fs = AnswerStore(live["settings"].app_db)
    stored = fs.get(body["id"])
    fs.close()
    assert stored.question == QUESTION
    assert stored.answer == body["answer"]
    assert stored.model == "base"
    assert [p for p, _ in stored.retrieved] == [e["pmid"] for e in ev]
    assert stored.index_version == body["index_version"]
    assert stored.timings_ms["generation"] > 0
    ks = KeyStore(live["settings"].app_db)
    reader = ks.authenticate(live["keys"]["reader"])
    ks.close()
    assert reader is not None
    assert stored.requester == reader.key_id
    assert stored.sampling is not None
    assert stored.sampling["max_tokens"] > 0
    assert stored.conversation_sha256 == conversation_hash([{"role": "user", "content": QUESTION}])
    assert stored.stack is not None
    assert stored.stack["vllm"] == "0.32.0"


def test_query_stream_event_order(live: dict[str, Any]) -> None:
    with client(live) as c:
        r = c.post("/v1/query", json={"question": QUESTION, "k": 3, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [e for e, _ in events]
    assert names[0] == "evidence"
    assert names[-2:] == ["citations", "done"]
    assert set(names[1:-2]) == {"delta"}
    assert len(names) > 3
    assert len(events[0][1]["evidence"]) == 3
    answer = "".join(d["text"] for e, d in events if e == "delta")
    cites = events[-2][1]
    assert cites["answer"] == answer
    assert cites["id"] == events[-1][1]["id"]


def test_query_search_mode_with_filters(live: dict[str, Any]) -> None:
    with client(live) as c:
        r = c.post("/v1/query", json={"question": QUESTION, "mode": "search", "k": 10,
                                      "filters": {"year_from": 2012}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] is None
    assert body["citations"] == []
    assert "generation" not in body["timings_ms"]
    assert body["evidence"]
    assert all(e["year"] >= 2012 for e in body["evidence"])
    assert LACE_PMID not in [e["pmid"] for e in body["evidence"]]  # 2011: filtered out before top-k


def test_citation_verification_end_to_end(live: dict[str, Any]) -> None:
    """Citations in a generated answer are checked against the evidence in the prompt: an evidence PMID is a
    citation, a PMID outside it is reported as unsupported and never listed as a source."""
    import asyncio

    rag = live["app"].state.rag
    outside = 99999999

    async def run() -> Any:
        prep = await rag.prepare(QUESTION, k=3, mode=None, filters=None, model="base", max_tokens=None)
        cited = prep.in_prompt[0]
        text = f"Mitochondria are involved [PMID:{cited}] but see (PMID: {outside})."
        return cited, await rag.finish(prep, text, "stop", 10, 12, 5.0)

    cited, ans = asyncio.run(run())
    assert [c.pmid for c in ans.citations] == [cited]
    assert ans.unsupported == [outside]
    from finetune.store import AnswerStore

    fs = AnswerStore(live["settings"].app_db)
    stored = fs.get(ans.id)
    fs.close()
    assert stored.citations == [{"pmid": cited, "supported": True}, {"pmid": outside, "supported": False}]


def test_openai_client_chat(live: dict[str, Any]) -> None:
    oa = openai.OpenAI(base_url=live["url"] + "/v1", api_key=live["keys"]["reader"], max_retries=0)
    msgs = [{"role": "system", "content": "ignored"}, {"role": "user", "content": QUESTION}]
    resp = oa.chat.completions.create(model="base", messages=msgs, max_tokens=16)
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens > 0
    extra = resp.model_extra
    assert extra["answer_id"].startswith("ans_")
    assert isinstance(extra["citations"], list)

    chunks = list(oa.chat.completions.create(model="base", messages=msgs, max_tokens=16, stream=True,
                                             stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finals) == 1
    assert finals[0].model_extra["answer_id"].startswith("ans_")
    assert isinstance(finals[0].model_extra["citations"], list)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0

    # a conversation: retrieval on the last user message, earlier turns kept
    conv = [{"role": "user", "content": "What is PCD?"}, {"role": "assistant", "content": "Cell death."}, msgs[1]]
    assert oa.chat.completions.create(model="base", messages=conv, max_tokens=8).choices[0].message.content


def test_openai_client_models_adapter_and_errors(live: dict[str, Any]) -> None:
    oa = openai.OpenAI(base_url=live["url"] + "/v1", api_key=live["keys"]["reader"], max_retries=0)
    ids = [m.id for m in oa.models.list()]
    assert ids[0] == "base"
    assert "lace" in ids
    assert "lace@v1" in ids
    # the adapter is loaded into vLLM on first use, by alias and by version
    r1 = oa.chat.completions.create(model="lace", messages=[{"role": "user", "content": QUESTION}], max_tokens=8)
    assert r1.model == "lace"
    assert r1.choices[0].message.content
    with client(live) as c:
        body = c.post("/v1/query", json={"question": QUESTION, "model": "lace@v1", "k": 2}).json()
    assert body["adapter"] == "lace@v1"
    assert body["model"] == "lace@v1"
    llm = live["settings"].llm
    assert "lace@v1" in httpx.get(llm.vllm_url + "/v1/models", headers=bearer(llm.vllm_api_key)).text

    with pytest.raises(openai.NotFoundError) as e:
        oa.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="last message must have role 'user'"):
        oa.chat.completions.create(model="base", messages=[{"role": "assistant", "content": "x"}])
    bad = openai.OpenAI(base_url=live["url"] + "/v1", api_key="pm_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid or revoked API key"):
        bad.models.list()


def test_articles_and_metrics(live: dict[str, Any]) -> None:
    with client(live) as c:
        art = c.get(f"/v1/articles/{LACE_PMID}").json()
        assert art["article"]["pmid"] == LACE_PMID
        assert art["article"]["year"] == 2011
        assert "lace plant" in " ".join(sec["text"] for sec in art["article"]["abstract"])
        assert art["url"].endswith(f"/{LACE_PMID}/")
        assert c.get("/v1/articles/1").status_code == 404
    text = httpx.get(live["url"] + "/metrics").text
    assert "pubmind_generation_seconds_count{model=\"base\"}" in text
    assert 'pubmind_tokens_total{kind="completion",model="base"}' in text
    assert "pubmind_retrieval_seconds_count" in text
    assert 'route="/v1/query",status="200"' in text


def test_chat_ui_requests_against_real_vllm(live: dict[str, Any]) -> None:
    """What a chat UI sends, against the real vLLM: its built-in tools with no tool_choice, a background title
    task with max_tokens 1000 on 'base:plain', and streaming with include_usage."""
    tools = [{"type": "function", "function": {"name": "web_search", "description": "Search the web",
                                               "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
    with client(live) as c:
        r = c.post("/v1/chat/completions", json={"model": "base", "messages": [{"role": "user", "content": QUESTION}],
                                                 "tools": tools, "max_tokens": 8})
        assert r.status_code == 200, r.text
        assert "tool_calls" not in r.json()["choices"][0]["message"]
        assert r.json()["answer_id"].startswith("ans_")
        title = [{"role": "system", "content": "Generate a concise, 3-5 word title for the chat."},
                 {"role": "user", "content": QUESTION}]
        r = c.post("/v1/chat/completions", json={"model": "base:plain", "messages": title, "max_tokens": 1000})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["completion_tokens"] <= live["settings"].llm.max_tokens
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert body["citations"] == []
    oa = openai.OpenAI(base_url=live["url"] + "/v1", api_key=live["keys"]["reader"], max_retries=0)
    chunks = list(oa.chat.completions.create(model="base", messages=[{"role": "user", "content": QUESTION}],
                                             max_tokens=8, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
