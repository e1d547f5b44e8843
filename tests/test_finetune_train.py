"""finetune.train: the machine-wide training slots (issue 10 item 10: two re-tunes of different adapters must
not train at once beside vLLM) and the job's command line."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import finetune.train as train
from finetune.train import parse_args, training_slot, try_slot


def test_one_slot_by_default_across_processes(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from finetune.train import try_slot; "
        f"s = try_slot(Path({str(tmp_path)!r}), 1); print(s is not None, flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "True"
        assert try_slot(tmp_path, 1) is None  # another adapter's job holds the only slot
        second = try_slot(tmp_path, 2)
        assert second is not None  # max_concurrent_trainings=2 allows a second one
        second.close()
    finally:
        holder.kill()
        holder.wait()
    again = try_slot(tmp_path, 1)  # freed when its process died
    assert again is not None
    again.close()


def test_a_job_waits_for_the_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "SLOT_POLL_SECONDS", 0.05)
    held = try_slot(tmp_path, 1)
    assert held is not None
    waited: list[float] = []
    threading.Timer(0.3, held.close).start()
    t0 = time.monotonic()
    with training_slot(tmp_path, 1, on_wait=lambda: waited.append(time.monotonic())):
        assert time.monotonic() - t0 >= 0.3
    assert len(waited) == 1
    free = try_slot(tmp_path, 1)  # released after the block
    assert free is not None
    free.close()


def test_command_line() -> None:
    args = parse_args(["--job_dir", "/jobs/job_1", "--num_threads", "2"])
    assert (args.job_dir, args.num_threads) == ("/jobs/job_1", 2)
    assert parse_args(["--job_dir", "x"]).num_threads == 0
    with pytest.raises(SystemExit):
        parse_args([])
