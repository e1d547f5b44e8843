"""HTTP client for a vLLM OpenAI-compatible server: chat completions (whole or streamed), runtime LoRA
loading/unloading, model listing and health.

One async client, ``VllmClient``, for the API server, the re-tune job and the CLI (a synchronous process runs
its calls with ``asyncio.run``); it imports nothing from ``server``. Every request carries the vLLM API key
(``--api-key``): a launched vLLM's per-launch key (``vllm.key`` in the logs folder, written by the supervisor)
or ``llm.vllm_api_key`` for a remote ``--vllm-url`` (``make_client``). Failures map onto ``pubmind.errors``:

* connection refused / DNS / timeouts -> ``ServiceUnavailable`` naming the URL (HTTP 503 in the API);
* vLLM 400 -> ``InvalidInput`` with vLLM's own message; 404 -> ``NotFound``; other 4xx/5xx -> ``UpstreamError``.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec

from pubmind.errors import InvalidInput, NotFound, PubmindError, ServiceUnavailable, UpstreamError
from pubmind.settings import LLMSettings, Settings

HEALTH_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5.0


class ChatResult(msgspec.Struct, kw_only=True):
    """One finished completion."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    logprobs: dict[str, Any] | None = None  # vLLM's choice logprobs when the request asked for them


class ChatDelta(msgspec.Struct, kw_only=True):
    """One streamed piece: a text delta; the last piece carries finish_reason and/or usage."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
KEY_FILE = "vllm.key"  # in settings.logs_dir: the launched vLLM's current API key (mode 0600)


def served_base_name(settings: LLMSettings) -> str:
    """Name the base model is served under in vLLM (and listed under in the API)."""
    return settings.served_name or "base"


def _vllm_message(resp: httpx.Response) -> str:
    """vLLM's error message from {"error": {"message"}} (current), {"message"} (older) or the raw text."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:500] or resp.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("message"):
            return str(body["message"])
        if body.get("detail"):
            return str(body["detail"])
    return json.dumps(body)[:500]


def _raise_for(resp: httpx.Response, what: str) -> None:
    if resp.status_code < 400:
        return
    msg = f"vLLM {what} failed ({resp.status_code}): {_vllm_message(resp)}"
    if resp.status_code == 400:
        raise InvalidInput(msg)
    if resp.status_code == 404:
        raise NotFound(msg)
    if resp.status_code == 401:
        raise UpstreamError(f"{msg}; the vLLM API key is missing or wrong (llm.vllm_api_key for a remote "
                            f"llm.vllm_url; a launched vLLM's key is in its logs folder)")
    raise UpstreamError(msg)


def _chat_body(messages: Sequence[dict[str, str]], model: str, *, max_tokens: int, temperature: float,
               stream: bool, extra: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": list(messages), "max_tokens": max_tokens,
                            "temperature": temperature, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if extra:
        body.update(extra)
    return body


def _parse_chat(data: dict[str, Any]) -> ChatResult:
    try:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return ChatResult(text=choice["message"].get("content") or "", finish_reason=choice.get("finish_reason"),
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0),
                          model=str(data.get("model", "")), logprobs=choice.get("logprobs"))
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise UpstreamError(f"vLLM chat completion response is malformed ({e!r}): {str(data)[:300]}") from e


def parse_prompt_logprobs(data: dict[str, Any]) -> tuple[list[int], list[float | None]]:
    """(prompt token ids, log-probability of each under the model) from a chat completion that asked for
    ``prompt_logprobs`` and ``return_token_ids``; the first token has no log-probability (None)."""
    try:
        ids = [int(t) for t in data["prompt_token_ids"]]
        entries = data["prompt_logprobs"]
        lps: list[float | None] = [None if e is None else float(e[str(t)]["logprob"])
                                   for t, e in zip(ids, entries, strict=True)]
    except (KeyError, TypeError, ValueError) as e:
        raise UpstreamError(f"vLLM prompt_logprobs response is malformed ({e!r}): {str(data)[:300]}") from e
    return ids, lps


def _parse_sse_line(line: str) -> ChatDelta | None:
    """One SSE line of a vLLM chat stream -> a delta (None for blank/comment lines and [DONE])."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return None
    try:
        data = json.loads(payload)
    except ValueError as e:
        raise UpstreamError(f"vLLM stream sent invalid JSON: {payload[:200]!r}") from e
    if "error" in data:
        err = data["error"]
        raise UpstreamError(f"vLLM stream error: {err.get('message') if isinstance(err, dict) else err}")
    delta = ChatDelta()
    choices = data.get("choices") or []
    if choices:
        c = choices[0]
        delta.text = (c.get("delta") or {}).get("content") or ""
        delta.finish_reason = c.get("finish_reason")
    usage = data.get("usage")
    if usage:
        delta.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        delta.completion_tokens = int(usage.get("completion_tokens") or 0)
    return delta


def key_path(settings: Settings) -> Path:
    return settings.logs_dir / KEY_FILE


def write_launch_key(path: Path, key: str) -> None:
    """Write a launch's API key readable by this user only (created 0600, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    os.replace(tmp, path)


class KeyFile:
    """The current key in a launch key file, re-read when the file changes (a restarted vLLM has a new key);
    None while there is no file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._key: str | None = None

    def __call__(self) -> str | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        if (st.st_mtime_ns, st.st_ino) != self._stamp:
            self._key, self._stamp = self.path.read_text().strip() or None, (st.st_mtime_ns, st.st_ino)
        return self._key


ApiKey = str | Callable[[], str | None] | None  # a fixed key, a provider asked on every request, or none


class _BearerAuth(httpx.Auth):
    def __init__(self, key: ApiKey) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        key = self.key() if callable(self.key) else self.key
        if key:
            request.headers["Authorization"] = f"Bearer {key}"
        yield request


class _Base:
    def __init__(self, base_url: str, *, timeout_seconds: float) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInput(f"vLLM url must start with http:// or https://, got {base_url!r}", param="vllm_url")
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self._timeout = httpx.Timeout(timeout_seconds, connect=min(CONNECT_TIMEOUT_SECONDS, timeout_seconds))

    def _unavailable(self, path: str, e: Exception) -> ServiceUnavailable:
        if isinstance(e, httpx.TimeoutException):
            return ServiceUnavailable(f"vLLM at {self.base_url} timed out on {path} "
                                      f"(timeout {self.timeout_seconds:g}s)")
        return ServiceUnavailable(f"vLLM at {self.base_url} is unreachable ({path}): "
                                  f"{type(e).__name__}: {e or 'connection failed'}")


class VllmClient(_Base):
    """Async client; one per process (it pools connections). Close with ``aclose()``. ``api_key``: sent as
    ``Authorization: Bearer`` (a callable is asked on every request)."""

    def __init__(self, base_url: str, *, timeout_seconds: float = 120.0, max_connections: int = 256,
                 api_key: ApiKey = None) -> None:
        super().__init__(base_url, timeout_seconds=timeout_seconds)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=self._timeout, auth=_BearerAuth(api_key),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def __aenter__(self) -> VllmClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, what: str, *, json_body: object = None,
                       timeout: float | None = None) -> httpx.Response:
        try:
            resp = await self._http.request(method, path, json=json_body,
                                            timeout=timeout if timeout is not None else self._timeout)
        except httpx.HTTPError as e:
            raise self._unavailable(path, e) from e
        _raise_for(resp, what)
        return resp

    async def health(self) -> None:
        """Return if vLLM answers /health with 200; raise ServiceUnavailable otherwise."""
        try:
            resp = await self._http.get("/health", timeout=HEALTH_TIMEOUT_SECONDS)
        except httpx.HTTPError as e:
            raise self._unavailable("/health", e) from e
        if resp.status_code != 200:
            raise ServiceUnavailable(f"vLLM at {self.base_url} is not healthy: /health answered {resp.status_code}")

    async def is_healthy(self) -> bool:
        try:
            await self.health()
        except PubmindError:
            return False
        return True

    async def models(self) -> list[str]:
        """Model ids vLLM serves: the base model name and every loaded LoRA adapter's name."""
        resp = await self._request("GET", "/v1/models", "model listing")
        return [m["id"] for m in resp.json().get("data", [])]

    async def chat(self, messages: Sequence[dict[str, str]], model: str, *, max_tokens: int,
                   temperature: float = 0.0, extra: dict[str, Any] | None = None) -> ChatResult:
        body = _chat_body(messages, model, max_tokens=max_tokens, temperature=temperature, stream=False,
                          extra=extra)
        resp = await self._request("POST", "/v1/chat/completions", "chat completion", json_body=body)
        return _parse_chat(resp.json())

    async def prompt_logprobs(self, messages: Sequence[dict[str, str]], model: str
                              ) -> tuple[list[int], list[float | None]]:
        """Score a given text instead of generating: ``messages`` end with an assistant turn, which the chat
        template continues (no end-of-turn); returns the prompt's token ids and each one's log-probability
        under ``model`` (vLLM ``prompt_logprobs``; the first token's is None)."""
        body = {"model": model, "messages": list(messages), "max_tokens": 1, "temperature": 0.0,
                "add_generation_prompt": False, "continue_final_message": True, "prompt_logprobs": 0,
                "return_token_ids": True}
        resp = await self._request("POST", "/v1/chat/completions", "prompt scoring", json_body=body)
        return parse_prompt_logprobs(resp.json())

    async def chat_stream(self, messages: Sequence[dict[str, str]], model: str, *, max_tokens: int,
                          temperature: float = 0.0, extra: dict[str, Any] | None = None
                          ) -> AsyncGenerator[ChatDelta, None]:
        """Text deltas as vLLM produces them; the last one carries finish_reason and token usage. Closing the
        generator closes the HTTP stream (vLLM then aborts the request)."""
        body = _chat_body(messages, model, max_tokens=max_tokens, temperature=temperature, stream=True,
                          extra=extra)
        path = "/v1/chat/completions"
        try:
            async with self._http.stream("POST", path, json=body) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for(resp, "chat completion")
                complete = False
                async for line in resp.aiter_lines():
                    complete = complete or line.strip() == "data: [DONE]"
                    delta = _parse_sse_line(line)
                    if delta is not None:
                        yield delta
                if not complete:  # the connection closed mid-answer (vLLM killed or restarted)
                    raise ServiceUnavailable(f"vLLM at {self.base_url} ended the stream before the answer was "
                                             f"complete (no [DONE])")
        except httpx.HTTPError as e:
            raise self._unavailable(path, e) from e

    async def load_lora_adapter(self, lora_name: str, path: str) -> None:
        await self._request("POST", "/v1/load_lora_adapter", f"loading LoRA adapter {lora_name!r} from {path}",
                            json_body={"lora_name": lora_name, "lora_path": str(path)})

    async def unload_lora_adapter(self, lora_name: str) -> None:
        await self._request("POST", "/v1/unload_lora_adapter", f"unloading LoRA adapter {lora_name!r}",
                            json_body={"lora_name": lora_name})


def api_key_for(settings: Settings) -> ApiKey:
    """The key to send: ``llm.vllm_api_key`` for a remote ``llm.vllm_url``, else the launched vLLM's
    per-launch key from its key file."""
    if settings.llm.vllm_url:
        return settings.llm.vllm_api_key or None
    return KeyFile(key_path(settings))


def make_client(settings: Settings, url: str | None = None) -> VllmClient:
    """The client for ``settings``' vLLM: ``url``, else ``llm.vllm_url``, else the launched one; with its key."""
    llm = settings.llm
    return VllmClient(url or llm.vllm_url or f"http://{llm.vllm_host}:{llm.vllm_port}",
                      timeout_seconds=llm.request_timeout_seconds, api_key=api_key_for(settings))
