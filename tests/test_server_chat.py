"""``/v1/chat/completions`` as a drop-in OpenAI backend for chat UIs (issue 8), against a real index and a fake
vLLM that records what reaches it: every field of the pinned ``openai`` package's request is accepted, the
ones pubmind honours reach vLLM as they should, tools never break a chat, unknown fields are ignored, large
max_tokens are capped, ':plain' models skip retrieval, and the answer carries PubMed links, url_citation
annotations and the evidence consulted, the same whole or streamed."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsBase,
    CompletionCreateParamsStreaming,
)

from tests.fixtures_server import FakeVllm, LiveServer, api_settings, bearer, create_keys

pytestmark = [pytest.mark.integration, pytest.mark.network]

QUESTION = "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?"
USER = {"role": "user", "content": QUESTION}
CAP = 64  # llm.max_tokens of the test preset

# A valid value for every field of OpenAI's Chat Completions request (a field the pinned openai package adds
# fails test_every_openai_field_has_a_case until it is handled here).
VALID: dict[str, Any] = {
    "messages": [USER], "model": "base", "stream": False,
    "audio": {"voice": "alloy", "format": "mp3"}, "frequency_penalty": 0.5, "function_call": "auto",
    "functions": [{"name": "lookup", "parameters": {"type": "object", "properties": {}}}],
    "logit_bias": {"50256": -100}, "logprobs": True, "max_completion_tokens": 9, "max_tokens": 9,
    "metadata": {"chat": "c1"}, "modalities": ["text"], "moderation": {"model": "omni-moderation-latest"}, "n": 1,
    "parallel_tool_calls": False, "prediction": {"type": "content", "content": "x"}, "presence_penalty": -0.5,
    "prompt_cache_key": "k1", "prompt_cache_options": {"mode": "implicit"}, "prompt_cache_retention": "24h",
    "reasoning_effort": "low", "response_format": {"type": "json_object"}, "safety_identifier": "u-hash",
    "seed": 1234, "service_tier": "auto", "stop": ["\n\nQ:"], "store": False,
    "stream_options": {"include_usage": True}, "temperature": 0.7, "tool_choice": "auto",
    "tools": [{"type": "function", "function": {"name": "web_search", "parameters": {"type": "object"}}}],
    "top_logprobs": 2, "top_p": 0.9, "user": "alice", "verbosity": "low",
    "web_search_options": {"search_context_size": "low"},
}
# field -> (key in the body vLLM receives, value it must have)
HONOURED: dict[str, tuple[str, Any]] = {
    "frequency_penalty": ("frequency_penalty", 0.5), "presence_penalty": ("presence_penalty", -0.5),
    "logit_bias": ("logit_bias", {"50256": -100}), "logprobs": ("logprobs", True), "top_logprobs": ("top_logprobs", 2),
    "max_completion_tokens": ("max_tokens", 9), "max_tokens": ("max_tokens", 9),
    "response_format": ("response_format", {"type": "json_object"}), "seed": ("seed", 1234),
    "stop": ("stop", ["\n\nQ:"]), "temperature": ("temperature", 0.7), "top_p": ("top_p", 0.9),
}


def openai_fields() -> set[str]:
    return set(CompletionCreateParamsBase.__annotations__) | set(CompletionCreateParamsStreaming.__annotations__)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeVllm]:
    f = FakeVllm()
    yield f
    f.close()


def make_api(server_home: Path, tiny_model_dir: Path, fake: FakeVllm, **server: Any
             ) -> Iterator[tuple[TestClient[Any], dict[str, str]]]:
    from server.app import create_app

    settings = api_settings(server_home, tiny_model_dir, fake.url, **server)
    keys = create_keys(settings, tag=f"-{uuid.uuid4().hex[:6]}")
    with TestClient(create_app(settings)) as c:
        yield c, bearer(keys["reader"])


@pytest.fixture(scope="module")
def api(server_home: Path, tiny_model_dir: Path, fake: FakeVllm) -> Iterator[tuple[TestClient[Any], dict[str, str]]]:
    yield from make_api(server_home, tiny_model_dir, fake)


def chat(api: tuple[TestClient[Any], dict[str, str]], fake: FakeVllm, **body: Any) -> tuple[Any, dict[str, Any]]:
    """POST a chat; (response, the body vLLM received)."""
    c, h = api
    before = len(fake.requests)
    r = c.post("/v1/chat/completions", json={"model": "base", "messages": [USER], "k": 3, **body}, headers=h)
    return r, (fake.requests[-1] if len(fake.requests) > before else {})


def stream_chunks(text: str) -> list[Any]:
    datas = [block.removeprefix("data: ") for block in text.strip().split("\n\n")]
    assert datas[-1] == "[DONE]"
    return [json.loads(d) for d in datas[:-1]]


def test_every_openai_field_has_a_case() -> None:
    assert openai_fields() - set(VALID) == set()


@pytest.mark.parametrize("field", sorted(openai_fields()))
def test_openai_field_accepted_and_mapped(api: tuple[TestClient[Any], dict[str, str]], fake: FakeVllm,
                                          field: str) -> None:
    r, sent = chat(api, fake, **{field: VALID[field]})
    assert r.status_code == 200, r.text
    if field in HONOURED:
        key, value = HONOURED[field]
        assert sent[key] == value
    elif field not in ("messages", "model", "stream", "stream_options"):
        assert field not in sent  # accepted, not passed on


def test_unmapped_defaults_reach_vllm(api: tuple[TestClient[Any], dict[str, str]], fake: FakeVllm) -> None:
    _, sent = chat(api, fake)
    assert sent["max_tokens"] == CAP
    assert sent["temperature"] == 0.0  # llm.temperature
    assert sent["messages"][0]["role"] == "system"


def test_tools_without_tool_choice_answer_in_text(api: tuple[TestClient[Any], dict[str, str]], fake: FakeVllm) -> None:
    r, sent = chat(api, fake, tools=VALID["tools"])
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert message["content"]
    assert "tool_calls" not in message
    assert "tools" not in sent


def test_unknown_fields_ignored_and_logged_once(api: tuple[TestClient[Any], dict[str, str]], fake: FakeVllm,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pubmind.server"):
        for _ in range(2):
            r, sent = chat(api, fake, x_ui_session={"id": 1})
            assert r.status_code == 200, r.text
            assert "x_ui_session" not in sent
    assert [rec.message for rec in caplog.records].count(
        "/v1/chat/completions: ignoring unknown request field 'x_ui_session' (logged once)") == 1


def test_pubmind_extensions_keep_their_validation(api: tuple[TestClient[Any], dict[str, str]], fake: FakeVllm) -> None:
    r, _ = chat(api, fake, filters={"year_form": 2000})
    assert r.status_code == 400
    assert "year_form" in r.json()["error"]["message"]


def test_max_tokens_above_the_cap_is_served_up_to_it(api: tuple[TestClient[Any], dict[str, str]],
                                                     fake: FakeVllm) -> None:
    fake.finish_reason = "length"
    try:
        r, sent = chat(api, fake, model="base:plain", max_tokens=1000,
                       messages=[{"role": "system", "content": "Write a 3-5 word title."}, USER])
    finally:
        fake.finish_reason = "stop"
    assert r.status_code == 200, r.text
    assert sent["max_tokens"] == CAP
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_plain_model_is_plain_chat(api: tuple[TestClient[Any], dict[str, str]], fake: FakeVllm) -> None:
    system = {"role": "system", "content": "Write a 3-5 word title for the chat."}
    r, sent = chat(api, fake, model="base:plain", messages=[system, USER])
    assert r.status_code == 200, r.text
    assert sent["messages"] == [system, USER]
    assert sent["model"] == "base"
    body = r.json()
    assert body["model"] == "base:plain"
    assert body["citations"] == []
    assert body["answer_id"] is None
    assert body["choices"][0]["message"]["content"] == fake.text_for(sent)


def test_models_list_plain_twins(api: tuple[TestClient[Any], dict[str, str]]) -> None:
    c, h = api
    ids = [m["id"] for m in c.get("/v1/models", headers=h).json()["data"]]
    assert ids[:2] == ["base", "base:plain"]


def test_answer_links_annotations_and_evidence_consulted(api: tuple[TestClient[Any], dict[str, str]],
                                                         fake: FakeVllm) -> None:
    r, sent = chat(api, fake)
    body = r.json()
    content = body["choices"][0]["message"]["content"]
    (cited,) = [c["pmid"] for c in body["citations"]]
    link = f"[PMID:{cited}](https://pubmed.ncbi.nlm.nih.gov/{cited}/)"
    assert content.startswith(f"Mitochondria take part {link}")
    assert "[PMID:99999999](" not in content  # not in the evidence: never a link
    assert body["unsupported_citations"] == [99999999]
    (note,) = body["choices"][0]["message"]["annotations"]
    span = note["url_citation"]
    assert note["type"] == "url_citation"
    assert content[span["start_index"]:span["end_index"]] == link
    assert span["url"] == f"https://pubmed.ncbi.nlm.nih.gov/{cited}/"
    assert span["title"] == body["citations"][0]["title"]
    consulted = content.split("Evidence consulted:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    in_prompt = sorted({int(p) for p in re.findall(r"\[PMID:(\d+)\]", sent["messages"][-1]["content"])})
    assert sorted(int(line.rsplit("(PMID:", 1)[1].rstrip(")")) for line in consulted) == in_prompt
    assert "References:\n- [" in content
    assert "not sources: 99999999" in content


def test_stream_gives_the_same_text_annotations_and_usage(api: tuple[TestClient[Any], dict[str, str]],
                                                          fake: FakeVllm) -> None:
    whole, _ = chat(api, fake)
    streamed, _ = chat(api, fake, stream=True, stream_options={"include_usage": True})
    assert streamed.status_code == 200, streamed.text
    chunks = stream_chunks(streamed.text)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    message = whole.json()["choices"][0]["message"]
    assert text == message["content"]
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(final) == 1
    assert final[0]["choices"][0]["delta"]["annotations"] == message["annotations"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert all(c["usage"] is None for c in chunks[:-1])


def test_evidence_consulted_can_be_turned_off(server_home: Path, tiny_model_dir: Path, fake: FakeVllm) -> None:
    for api in make_api(server_home, tiny_model_dir, fake, evidence_consulted=False):
        r, _ = chat(api, fake)
        content = r.json()["choices"][0]["message"]["content"]
        assert "References:" in content
        assert "Evidence consulted" not in content


def test_official_client_reads_annotations_and_usage_chunk(server_home: Path, tiny_model_dir: Path,
                                                           fake: FakeVllm) -> None:
    import openai

    from server.app import create_app

    settings = api_settings(server_home, tiny_model_dir, fake.url)
    key = create_keys(settings, tag=f"-{uuid.uuid4().hex[:6]}")["reader"]
    with LiveServer(create_app(settings)) as srv:
        oa = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)
        msg = oa.chat.completions.create(model="base", messages=[USER]).choices[0].message  # type: ignore[list-item]
        assert msg.annotations is not None
        assert msg.annotations[0].type == "url_citation"
        span = msg.annotations[0].url_citation
        assert msg.content is not None
        assert msg.content[span.start_index:span.end_index].startswith("[PMID:")
        chunks = list(oa.chat.completions.create(model="base", messages=[USER], stream=True,  # type: ignore[list-item]
                                                 stream_options={"include_usage": True}))
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.total_tokens == 18
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == msg.content


def test_responses_api_with_the_official_client(server_home: Path, tiny_model_dir: Path, fake: FakeVllm) -> None:
    """/v1/responses: plain text in and out, the same retrieval, links and url_citation annotations as chat,
    streamed and not."""
    import openai

    from server.app import create_app

    settings = api_settings(server_home, tiny_model_dir, fake.url)
    key = create_keys(settings, tag=f"-{uuid.uuid4().hex[:6]}")["reader"]
    with LiveServer(create_app(settings)) as srv:
        oa = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)
        r = oa.responses.create(model="base", input=QUESTION, max_output_tokens=1000)
        assert r.status == "completed"
        assert fake.requests[-1]["max_tokens"] == CAP
        text = r.output_text
        assert "](https://pubmed.ncbi.nlm.nih.gov/" in text
        note = r.output[0].content[0].annotations[0]  # type: ignore[union-attr]
        assert note.type == "url_citation"
        assert text[note.start_index:note.end_index].startswith("[PMID:")  # type: ignore[union-attr]
        assert r.usage is not None
        assert r.usage.total_tokens == 18
        events = list(oa.responses.create(model="base", input=[{"role": "user", "content": QUESTION}], stream=True))
        assert events[0].type == "response.created"
        assert events[-1].type == "response.completed"
        streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert streamed == text
        plain = oa.responses.create(model="base:plain", instructions="Title this chat.", input=QUESTION)
        assert fake.requests[-1]["messages"] == [{"role": "system", "content": "Title this chat."}, USER]
        assert "Evidence consulted" not in plain.output_text
