"""One re-tune job, in its own process: ``python -m finetune.train --job_dir JOBS/job_x``.

Launched by ``finetune.jobs.JobRunner`` (which wrote ``job.json`` into the job directory). Stages, each
recorded in the job's state in the app database:

1. dataset   accepted corrections -> serving-format examples (``finetune.dataset``), written with its hash
2. training  LoRA with PEFT + TRL's SFTTrainer on ``settings.llm.model``; step/loss written as it goes
3. register  the adapter becomes the next version ``NAME@vN`` in the registry (not yet served)
4. gate      candidate vs the current version (or the base model) on the held-out split (``finetune.evaluate``)
5. promote   if the gate passes: the registry alias moves and vLLM loads ``NAME@vN`` (older ones unloaded)

Any failure marks the job failed and leaves the served adapter untouched (promotion is the last step).
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pubmind.errors import InvalidInput
from pubmind.settings import FinetuneSettings, Settings, load_settings

log = logging.getLogger("pubmind.train")


@dataclass
class TrainArguments:
    job_dir: str = field(metadata={"help": "Job directory holding job.json (written by finetune.jobs)."})
    num_threads: int = field(default=0, metadata={
        "help": "torch CPU threads (0: torch's default). 1 is much faster on a busy, oversubscribed CPU."})


def train_lora(settings: Settings, hp: FinetuneSettings, train_rows: list[dict[str, list[int]]],
               out_dir: Path, on_log: Any = None) -> dict[str, Any]:
    """Train a LoRA adapter on pre-tokenised ``{"input_ids", "labels"}`` rows (labels -100 on the prompt)
    and ``save_pretrained`` it to ``out_dir``. ``on_log(step, total_steps, loss, epoch)`` is called on
    every logged step. Returns training metrics (steps, final loss, tokens/s)."""
    import datasets
    import torch
    from peft import LoraConfig
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
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kw: Any) -> None:
            if on_log and logs and "loss" in logs:
                on_log(state.global_step, state.max_steps, float(logs["loss"]), float(state.epoch or 0))

    trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(train_rows),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[Progress()])
    t0 = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - t0
    trainer.model.save_pretrained(out_dir)
    tokens = sum(len(r["input_ids"]) for r in train_rows) * hp.epochs
    return {"steps": result.global_step, "train_loss": result.training_loss, "seconds": round(seconds, 2),
            "tokens": int(tokens), "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "examples": len(train_rows), "device": "cuda" if gpu else "cpu"}


def main(args: TrainArguments) -> int:
    from finetune import evaluate
    from finetune.dataset import build_dataset, make_retriever, tokenize_example, write_dataset
    from finetune.registry import AdapterRegistry
    from finetune.store import CorrectionStore, JobStore
    from generation.deploy import run_with_deployer

    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    job_dir = Path(args.job_dir)
    spec = json.loads((job_dir / "job.json").read_text())
    settings = load_settings(**spec["settings"])
    hp = FinetuneSettings.model_validate(spec["hyperparameters"])
    store, corrections, registry = JobStore(settings.app_db), CorrectionStore(settings.app_db), \
        AdapterRegistry(settings.adapters_dir)
    name, job_id = spec["adapter"], spec["job_id"]

    started: dict[str, float] = {}  # stage -> wall-clock start, kept in the result ("stages")

    def stage(name_: str, **extra: Any) -> None:
        log.info("stage %s %s", name_, extra or "")
        fresh = name_ not in started
        started.setdefault(name_, time.time())
        store.update(job_id, expect=("running",), progress={"stage": name_, **extra},
                         **({"result": {"stages": started}} if fresh else {}))

    store.update(job_id, expect=("queued", "running"), status="running", pid=os.getpid(),
                     started_at=time.time())
    try:
        stage("dataset")
        from transformers import AutoTokenizer

        accepted = corrections.accepted()
        if len(accepted) < spec["min_examples"]:
            raise InvalidInput(f"{len(accepted)} accepted corrections, min_examples={spec['min_examples']}",
                               param="min_examples")
        tokenizer = AutoTokenizer.from_pretrained(settings.llm.model)
        with make_retriever(settings) as (corpus, retrieve):
            ds = build_dataset(accepted, corpus=corpus, retrieve=retrieve, tokenizer=tokenizer,
                               settings=settings.model_copy(update={"finetune": hp}))
        write_dataset(ds, job_dir / "dataset")
        rows = [r for e in ds.train if (r := tokenize_example(tokenizer, e, hp.max_seq_len)) is not None]
        too_long = len(ds.train) - len(rows)
        if len(rows) < 1:
            raise InvalidInput(f"no trainable examples: {len(ds.train)} in the train split, {too_long} longer "
                               f"than max_seq_len={hp.max_seq_len}, skipped: {ds.skipped}", param="min_examples")
        store.update(job_id, result={"dataset": {**ds.summary(), "too_long": too_long}})

        stage("training", step=0, total_steps=None, loss=None)
        metrics = train_lora(settings, hp, rows, job_dir / "adapter", on_log=lambda s, t, loss, ep: stage(
            "training", step=s, total_steps=t, loss=round(loss, 4), epoch=round(ep, 2)))
        store.update(job_id, result={"training": metrics})

        stage("register")
        parent = registry.current(name) if name in registry.names() else None
        version = registry.create_version(name, job_dir / "adapter", {
            "base_model": settings.llm.model, "dataset_hash": ds.hash, "dataset": ds.summary(),
            "hyperparameters": hp.model_dump(), "metrics": metrics, "parent_version": parent and parent.version,
            "job_id": job_id})
        store.update(job_id, result={"version": version.version, "lora_name": version.lora_name})

        stage("evaluating", version=version.lora_name)
        report = evaluate.run_gate(settings, version, parent, ds, spec.get("eval") or {})
        registry.update_manifest(name, version.version, evaluation=report, promoted=report["promote"])
        store.update(job_id, result={"evaluation": report, "promoted": False})

        served: dict[str, Any] = {}
        if report["promote"]:
            stage("promoting")
            # vLLM must take the new version before the alias moves to it
            run_with_deployer(settings, registry, lambda d: d.preload(version))
            store.update(job_id, expect=("running",))  # a cancel that won the race stops us here
            registry.promote(name, version.version, by=f"job:{job_id}", reason="passed the evaluation gate")
            served = run_with_deployer(settings, registry, lambda d: d.deploy(name))
        else:
            served = run_with_deployer(settings, registry, lambda d: d.unload_unless_kept(name, version.lora_name))
        store.update(job_id, expect=("running",), status="succeeded", finished_at=time.time(),
                         progress={"stage": "done"},
                         result={"promoted": report["promote"], "served": served, "stages": started})
        return 0
    except Exception as e:
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        msg = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
        try:
            store.update(job_id, expect=("running",), status="failed", finished_at=time.time(), error=msg)
        except Exception:  # cancelled meanwhile: the cancel already recorded the outcome
            log.exception("could not record the failure of job %s", job_id)
        return 1


if __name__ == "__main__":
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    (train_args,) = HfArgumentParser(TrainArguments).parse_args_into_dataclasses()
    raise SystemExit(main(train_args))
