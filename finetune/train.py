"""One re-tune job, in its own process: ``python -m finetune.train --job_dir JOBS/job_x``.

Launched by ``finetune.jobs.JobRunner`` (which wrote ``job.json`` into the job directory). ``main`` drives one
function per stage, each recorded in the job's state in the app database:

1. dataset   accepted corrections -> serving-format examples (``finetune.dataset``), written with its hash
2. training  LoRA with PEFT + TRL's SFTTrainer on ``settings.llm.model``; step/loss written as it goes
3. register  the adapter becomes the next version ``NAME@vN`` in the registry (not yet served)
4. gate      candidate vs the current version (or the base model) on the held-out split (``finetune.evaluate``)
5. promote   if the gate passes: vLLM loads ``NAME@vN``, then the registry alias moves (older ones unloaded);
             else the rejected candidate is unloaded

Training and the gate run inside one of ``finetune.max_concurrent_trainings`` machine-wide slots (stage
``waiting`` until one is free). Any failure marks the job failed and leaves the served adapter untouched
(promotion is the last step).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from finetune import evaluate
from finetune.dataset import Dataset, build_dataset, make_retriever, tokenize_example, write_dataset
from finetune.registry import AdapterRegistry, AdapterVersion
from finetune.store import CorrectionStore, JobStore
from generation.deploy import ServedReport, run_with_deployer
from generation.modelcheck import resolve_context
from pubmind.audit import Actor, AuditLog
from pubmind.errors import InvalidInput
from pubmind.settings import FinetuneSettings, Settings, load_settings
from pubmind.versions import stack_versions

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger("pubmind.train")

TokenRow = dict[str, list[int]]  # {"input_ids": [...], "labels": [...]} (labels -100 on the prompt)
OnLog = Callable[[int, int, float, float], None]  # (step, total_steps, loss, epoch)
SLOT_POLL_SECONDS = 2.0


@dataclass
class TrainArguments:
    job_dir: str = field(metadata={"help": "Job directory holding job.json (written by finetune.jobs)."})
    num_threads: int = field(default=0, metadata={
        "help": "torch CPU threads (0: torch's default). 1 is much faster on a busy, oversubscribed CPU."})


def train_lora(settings: Settings, hp: FinetuneSettings, train_rows: list[TokenRow], out_dir: Path,
               on_log: OnLog | None = None) -> dict[str, Any]:
    """Train a LoRA adapter on pre-tokenised ``{"input_ids", "labels"}`` rows (labels -100 on the prompt)
    and ``save_pretrained`` it to ``out_dir``. ``on_log(step, total_steps, loss, epoch)`` is called on
    every logged step. Returns training metrics (steps, final loss, tokens/s)."""
    import datasets  # type: ignore[import-untyped]
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(settings.llm.model)
    model = AutoModelForCausalLM.from_pretrained(settings.llm.model,
                                                 dtype=torch.bfloat16 if gpu else torch.float32)
    peft_config = LoraConfig(r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                             target_modules=list(hp.target_modules), task_type="CAUSAL_LM")
    config = SFTConfig(
        output_dir=str(out_dir.parent / "trainer"), num_train_epochs=hp.epochs, learning_rate=hp.learning_rate,
        per_device_train_batch_size=hp.batch_size, max_length=hp.max_seq_len, seed=hp.seed,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        bf16=gpu, gradient_checkpointing=gpu, dataloader_num_workers=0, warmup_steps=0,
    )

    class Progress(TrainerCallback):
        def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                   logs: dict[str, float] | None = None, **kw: object) -> None:
            if on_log and logs and "loss" in logs:
                on_log(state.global_step, state.max_steps, float(logs["loss"]), float(state.epoch or 0))

    trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(train_rows),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[Progress()])
    t0 = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - t0
    peft_model = trainer.model
    assert isinstance(peft_model, PeftModel), type(peft_model)
    peft_model.save_pretrained(str(out_dir))  # the adapter only (adapter_config.json + weights)
    tokens = sum(len(r["input_ids"]) for r in train_rows) * hp.epochs
    return {"steps": result.global_step, "train_loss": result.training_loss, "seconds": round(seconds, 2),
            "tokens": int(tokens), "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "examples": len(train_rows), "device": "cuda" if gpu else "cpu"}


# ---- the training slot -------------------------------------------------------------------------------
def try_slot(slots_dir: Path, limit: int) -> IO[str] | None:
    """One of ``limit`` machine-wide training slots (an flock on ``slots_dir/slot-K.lock``, released when the
    file is closed or the process dies), or None when all are taken."""
    slots_dir.mkdir(parents=True, exist_ok=True)
    for k in range(limit):
        f = open(slots_dir / f"slot-{k}.lock", "a+")  # noqa: SIM115 (held open as the lock)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        return f
    return None


@contextmanager
def training_slot(slots_dir: Path, limit: int, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold a training slot for the block, waiting for one (``on_wait()`` once) while all are taken."""
    slot = try_slot(slots_dir, limit)
    if slot is None:
        on_wait()
        while (slot := try_slot(slots_dir, limit)) is None:
            time.sleep(SLOT_POLL_SECONDS)
    try:
        yield
    finally:
        slot.close()


# ---- the job's stages ---------------------------------------------------------------------------------
@dataclass
class Job:
    """A running job: its spec (``job.json``), settings, stores, and the stage start times."""

    dir: Path
    id: str
    adapter: str
    settings: Settings
    hp: FinetuneSettings
    min_examples: int
    eval_config: dict[str, Any]
    jobs: JobStore
    corrections: CorrectionStore
    registry: AdapterRegistry
    started: dict[str, float] = field(default_factory=dict)  # stage -> wall-clock start ("stages" in the result)

    @classmethod
    def load(cls, job_dir: Path) -> Job:
        spec = json.loads((job_dir / "job.json").read_text())
        settings = load_settings(**spec["settings"])
        if key := os.environ.get("PUBMIND_LLM__VLLM_API_KEY"):  # kept out of job.json; handed over by the runner
            settings = settings.model_copy(update={"llm": settings.llm.model_copy(update={"vllm_api_key": key})})
        settings = resolve_context(settings)
        return cls(dir=job_dir, id=spec["job_id"], adapter=spec["adapter"], settings=settings,
                   hp=FinetuneSettings.model_validate(spec["hyperparameters"]), min_examples=spec["min_examples"],
                   eval_config=spec.get("eval") or {}, jobs=JobStore(settings.app_db),
                   corrections=CorrectionStore(settings.app_db), registry=AdapterRegistry(settings.adapters_dir))

    def stage(self, name: str, **extra: Any) -> None:
        """Record the stage (and its progress fields) in the job's state."""
        log.info("stage %s %s", name, extra or "")
        fresh = name not in self.started
        self.started.setdefault(name, time.time())
        self.jobs.update(self.id, expect=("running",), progress={"stage": name, **extra},
                         **({"result": {"stages": self.started}} if fresh else {}))

    def record(self, **result: Any) -> None:
        self.jobs.update(self.id, result=result)

    def audit(self, action: str, target: str, *, before: Any = None, after: Any = None) -> None:
        """A change this job made, in the audit trail (actor ``system:job:ID``)."""
        log_ = AuditLog(self.settings.app_db)
        try:
            log_.record(action, target, Actor.system(f"job:{self.id}"), before=before, after=after)
        finally:
            log_.close()


def make_dataset(job: Job) -> tuple[Dataset, list[TokenRow]]:
    """Accepted corrections -> the dataset (written into the job folder) and its tokenised train rows."""
    from transformers import AutoTokenizer

    job.stage("dataset")
    accepted = job.corrections.accepted()
    if len(accepted) < job.min_examples:
        raise InvalidInput(f"{len(accepted)} accepted corrections, min_examples={job.min_examples}",
                           param="min_examples")
    tokenizer = AutoTokenizer.from_pretrained(job.settings.llm.model)
    with make_retriever(job.settings) as (corpus, retrieve):
        ds = build_dataset(accepted, corpus=corpus, retrieve=retrieve, tokenizer=tokenizer,
                           settings=job.settings.model_copy(update={"finetune": job.hp}))
    write_dataset(ds, job.dir / "dataset")
    rows = [r for e in ds.train if (r := tokenize_example(tokenizer, e, job.hp.max_seq_len)) is not None]
    too_long = len(ds.train) - len(rows)
    if not rows:
        raise InvalidInput(f"no trainable examples: {len(ds.train)} in the train split, {too_long} longer than "
                           f"max_seq_len={job.hp.max_seq_len}, skipped: {ds.skipped}", param="min_examples")
    job.record(dataset={**ds.summary(), "too_long": too_long})
    return ds, rows


def train(job: Job, rows: list[TokenRow]) -> dict[str, Any]:
    """LoRA training into ``job.dir/adapter``, step and loss recorded as they come."""
    job.stage("training", step=0, total_steps=None, loss=None)
    history: list[tuple[int, float]] = []  # (step, loss): the loss curve of the workbench's Re-tune page

    def on_log(step: int, total: int, loss: float, epoch: float) -> None:
        history.append((step, round(loss, 4)))
        job.stage("training", step=step, total_steps=total, loss=round(loss, 4), epoch=round(epoch, 2))
        job.record(loss_history=history)

    metrics = train_lora(job.settings, job.hp, rows, job.dir / "adapter", on_log=on_log)
    job.record(training=metrics)
    return metrics


def register(job: Job, ds: Dataset, metrics: dict[str, Any]) -> tuple[AdapterVersion, AdapterVersion | None]:
    """The trained adapter as the next (unpromoted) version; returns it and the current version (its parent)."""
    job.stage("register")
    name = job.adapter
    parent = job.registry.current(name) if name in job.registry.names() else None
    version = job.registry.create_version(name, job.dir / "adapter", {
        "base_model": job.settings.llm.model, "dataset_hash": ds.hash, "dataset": ds.summary(),
        "hyperparameters": job.hp.job_dump(), "metrics": metrics, "parent_version": parent and parent.version,
        "job_id": job.id, "stack": stack_versions(vllm_python=job.settings.llm.vllm_python)})
    job.record(version=version.version, lora_name=version.lora_name)
    return version, parent


def gate(job: Job, version: AdapterVersion, parent: AdapterVersion | None, ds: Dataset) -> dict[str, Any]:
    """The evaluation gate's report (``promote``: whether the candidate may replace ``parent``)."""
    job.stage("evaluating", version=version.lora_name)
    report = evaluate.run_gate(job.settings, job.registry, version, parent, ds, job.eval_config)
    job.registry.update_manifest(job.adapter, version.version, evaluation=report, promoted=report["promote"])
    job.record(evaluation=report, promoted=False)
    return report


def promote_or_unload(job: Job, version: AdapterVersion, promote: bool) -> ServedReport:
    """A passing candidate is loaded, then made current (a cancel that won the race stops it before the alias
    moves); a rejected one is unloaded unless kept."""
    if not promote:
        return run_with_deployer(job.settings, job.registry,
                                 lambda d: d.unload_unless_kept(job.adapter, version.lora_name))
    job.stage("promoting")

    parent = job.registry.current(job.adapter)

    def still_running() -> AdapterVersion:
        job.jobs.update(job.id, expect=("running",))
        return job.registry.promote(job.adapter, version.version, by=f"job:{job.id}",
                                    reason="passed the evaluation gate")

    served = run_with_deployer(job.settings, job.registry, lambda d: d.switch(version, still_running))
    job.audit("adapter.promote", job.adapter, before={"current": parent and parent.version},
              after={"current": version.version, "reason": "passed the evaluation gate"})
    return served


def main(args: TrainArguments) -> int:
    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    job = Job.load(Path(args.job_dir))
    job.jobs.update(job.id, expect=("queued", "running"), status="running", pid=os.getpid(), started_at=time.time())
    try:
        ds, rows = make_dataset(job)
        with training_slot(job.settings.jobs_dir / ".slots", job.settings.finetune.max_concurrent_trainings,
                           on_wait=lambda: job.stage("waiting", reason="another re-tune holds the training slot")):
            metrics = train(job, rows)
            version, parent = register(job, ds, metrics)
            report = gate(job, version, parent, ds)
        served = promote_or_unload(job, version, report["promote"])
        job.jobs.update(job.id, expect=("running",), status="succeeded", finished_at=time.time(),
                        progress={"stage": "done"},
                        result={"promoted": report["promote"], "served": served, "stages": job.started})
        job.audit("retune.finish", job.id, after={"status": "succeeded", "version": version.lora_name,
                                                  "promoted": report["promote"]})
        return 0
    except Exception as e:
        log.error("job %s failed:\n%s", job.id, traceback.format_exc())
        msg = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
        try:
            job.jobs.update(job.id, expect=("running",), status="failed", finished_at=time.time(), error=msg)
        except Exception:  # cancelled meanwhile: the cancel already recorded the outcome
            log.exception("could not record the failure of job %s", job.id)
        return 1


def parse_args(argv: list[str] | None = None) -> TrainArguments:
    parser = argparse.ArgumentParser(prog="python -m finetune.train", description=__doc__.split("\n")[0])
    for f in fields(TrainArguments):
        required = f.default is MISSING
        parser.add_argument(f"--{f.name}", type=int if f.type in (int, "int") else str, required=required,
                            default=None if required else f.default, help=f.metadata["help"])
    return TrainArguments(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main(parse_args()))
