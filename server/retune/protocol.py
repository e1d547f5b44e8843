"""Wire format of ``/v1/retune`` (re-tune jobs). A job is shown as ``finetune.jobs.job_view`` gives it."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec


class RetuneIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    adapter: Annotated[str, msgspec.Meta(
        max_length=64, description="Adapter name; the job creates its next version NAME@vN.")]
    hyperparameters: Annotated[dict[str, Any], msgspec.Meta(
        max_length=32, description="Overrides of settings.finetune: lora_r, lora_alpha, lora_dropout, "
        "target_modules, epochs, learning_rate, batch_size, max_seq_len, distractors, heldout_fraction, seed."
    )] = msgspec.field(default_factory=dict)
    min_examples: Annotated[int, msgspec.Meta(
        ge=1, le=10_000_000, description="Accepted corrections needed (default settings.finetune.min_examples).")
    ] | None = None
    evaluation: Annotated[dict[str, Any], msgspec.Meta(
        max_length=8, description="Gate options: {'pubmedqa_path': ori_pqal.json on the server, "
        "'pubmedqa_limit': 50, 'train_sample': trained-on corrections re-checked (default 20)}.")
    ] = msgspec.field(default_factory=dict)


class Started(msgspec.Struct, kw_only=True):
    job_id: str
    status: str
    adapter: str


class JobList(msgspec.Struct, kw_only=True):
    data: list[dict[str, Any]]
