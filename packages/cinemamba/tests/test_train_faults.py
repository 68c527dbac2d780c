"""Faults around checkpoints and resume (issue 14, items 5 and 7), on the toy task in this
process: a full disk while checkpointing, logs after a resume, a resume with changed settings."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cinemamba.train import checkpoint as ckpt_io
from cinemamba.train import load_experiment, train
from cinemamba.train.toy import RegressionTask, ToyExperiment

pytestmark = pytest.mark.distributed
COMMON = [
    "train.steps=6", "train.batch_size=8", "train.log_every=1", "train.checkpoint_every=2",
    "train.keep_last=10", "train.progress=false", "train.optimizer.lr=0.05",
    "train.optimizer.warmup_steps=2", "train.ema_decay=0.8", "task.input_noise=0.3",
]  # fmt: skip


def run_toy(run_dir: Path, *overrides: str, task=None):
    """Train the toy task in this process; the experiment config is saved with checkpoints."""
    exp = OmegaConf.to_object(
        load_experiment(ToyExperiment, None, [f"train.run_dir={run_dir}", *COMMON, *overrides])
    )
    return train(exp.train, task or RegressionTask(exp.task), full_config=exp)


def records(run: Path, kind: str = "train") -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


class Crash(RuntimeError):
    """Stands for the process dying."""


def crashing(at: int) -> RegressionTask:
    """The toy task, dying at the start of step `at` (0-based)."""
    exp = OmegaConf.to_object(load_experiment(ToyExperiment, None, COMMON))
    task = RegressionTask(exp.task)
    loss = task.loss

    def dying(phase, models, batch, step):
        if step == at:
            raise Crash(f"step {step}")
        return loss(phase, models, batch, step)

    task.loss = dying
    return task


# ---------------------------------------------------------------- item 7: logs after a resume
def test_resume_logs_each_step_once_in_jsonl_and_tensorboard(tmp_path: Path) -> None:
    """Crash in step 6 (steps 1-5 logged, checkpoint 4), resume: log.jsonl and TensorBoard hold
    each step once, the re-run steps with the values of the resumed run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ref, run = tmp_path / "ref", tmp_path / "run"
    run_toy(ref)
    with pytest.raises(Crash):
        run_toy(run, task=crashing(5))
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in records(run, "eval")] == []  # eval_every=0
    with (run / "log.jsonl").open("a") as f:
        f.write('{"kind": "train", "ste')  # the torn last line of a killed writer
    run_toy(run)
    got, want = records(run), records(ref)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    assert [r["regressor/loss"] for r in got] == [r["regressor/loss"] for r in want]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("train/regressor/loss")
    assert [e.step for e in scalars] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in scalars] == pytest.approx([r["regressor/loss"] for r in want])


# ---------------------------------------------------------------- item 7: changed settings
def test_resume_with_changed_settings_warns_with_old_and_new(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Batch size and learning rate changed on resume: one warning naming both, old -> new;
    changes that do not alter training (logging cadence, steps to keep) are not reported."""
    run = tmp_path / "run"
    run_toy(run, "train.steps=2")
    with caplog.at_level(logging.WARNING, logger="cinemamba.train.resume"):
        run_toy(run, "train.steps=2", "train.log_every=2", "train.keep_last=3")
    assert not [r for r in caplog.records if "changed setting" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="cinemamba.train.resume"):
        run_toy(run, "train.steps=4", "train.batch_size=16", "train.optimizer.lr=0.1")
    warned = [r.getMessage() for r in caplog.records if "changed setting" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "train.batch_size: 8 -> 16" in warned[0]
    assert "train.optimizer.lr: 0.05 -> 0.1" in warned[0]
    assert "train.steps: 2 -> 4" in warned[0]
    assert "log_every" not in warned[0] and "keep_last" not in warned[0]


# ---------------------------------------------------------------- item 5: disk full
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _torch_writer_error(*args, **kwargs):
    # what torch.save raises when the disk fills: no errno, no mention of space
    raise RuntimeError("basic_ios::clear: iostream error")


@pytest.mark.parametrize("error", [_enospc, _torch_writer_error])
def test_disk_full_while_checkpointing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error
) -> None:
    """The save of step 4 fails for lack of space: a one-line error names it and the path, no
    partial checkpoint is left, step 2 stays the latest, the failure is reported at the next
    start, which resumes from step 2 and ends exactly as an uninterrupted run."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_toy(ref)
    real_save_rng = ckpt_io.save_rng

    def save_rng(ckpt: Path, rank: int) -> None:
        if ckpt.name.startswith("step_00000004"):
            (ckpt / "rng").mkdir(parents=True, exist_ok=True)
            (ckpt / "rng" / "rank_00000.partial").write_bytes(b"half")
            error()
        real_save_rng(ckpt, rank)

    monkeypatch.setattr(ckpt_io, "save_rng", save_rng)
    # torch's writer error carries no errno: the trainer looks at the free space instead
    monkeypatch.setattr(ckpt_io, "free_bytes", lambda path: 10 * 2**20)
    with pytest.raises(ckpt_io.CheckpointSaveError) as info:
        run_toy(run)
    msg = info.value.strerror
    assert "checkpoint of step 4 not saved: no space left on device" in msg
    assert str(ckpt_io.checkpoint_root(run) / "step_00000004") in msg
    assert "resume from step_00000002" in msg and "\n" not in msg
    assert info.value.errno == errno.ENOSPC
    root = ckpt_io.checkpoint_root(run)
    assert sorted(p.name for p in root.iterdir()) == [ckpt_io.SAVE_FAILED, "step_00000002"]
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4]

    monkeypatch.setattr(ckpt_io, "save_rng", real_save_rng)
    with caplog.at_level(logging.WARNING, logger="cinemamba.train.resume"):
        assert run_toy(run).step == 6
    warned = [r.getMessage() for r in caplog.records]
    assert any(
        "checkpoint of step 4 could not be saved (no space left on device)" in m for m in warned
    ), warned
    assert not (root / ckpt_io.SAVE_FAILED).exists()  # a later save succeeded
    got, want = records(run), records(ref)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    assert [r["regressor/loss"] for r in got] == [r["regressor/loss"] for r in want]


def test_too_little_space_for_the_next_checkpoint_stops_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Less free space than the last checkpoint took: the run stops at once, saying so, instead
    of training and failing at its next save."""
    run = tmp_path / "run"
    run_toy(run, "train.steps=2")
    size = ckpt_io.folder_size(ckpt_io.latest_checkpoint(run))
    assert size > 0
    monkeypatch.setattr(ckpt_io, "free_bytes", lambda path: size - 1)
    with pytest.raises(ckpt_io.CheckpointSaveError, match="not enough space for the next"):
        run_toy(run, "train.steps=4")
    assert [r["step"] for r in records(run)] == [1, 2]


def test_cli_reports_a_failed_save_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`cinemamba train`: a CheckpointSaveError is one line on stderr and exit code 1."""
    from cinemamba import cli
    from cinemamba.commands import train as train_command

    def fail(experiment):
        raise ckpt_io.CheckpointSaveError(errno.ENOSPC, "checkpoint of step 4 not saved: no space")

    monkeypatch.setattr(train_command, "train_backbone", fail)
    monkeypatch.setattr(train_command, "load_backbone_experiment", lambda *a: None)
    assert cli.main(["train", "x.yaml"]) == 1
    err = capsys.readouterr().err
    assert err == "cinemamba train: error: checkpoint of step 4 not saved: no space\n"


def test_torch_writer_error_on_a_roomy_disk_is_not_called_a_full_disk(tmp_path: Path) -> None:
    """Only ENOSPC, a message about space, or torch's writer error on a nearly full disk count."""
    assert ckpt_io.is_disk_full(OSError(errno.ENOSPC, "x"), tmp_path)
    assert ckpt_io.is_disk_full(RuntimeError("No space left on device"), tmp_path)
    assert not ckpt_io.is_disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path)
    roomy = ckpt_io.free_bytes(tmp_path) > 64 * 2**20
    assert ckpt_io.is_disk_full(RuntimeError("basic_ios::clear: iostream error"), tmp_path) != roomy


def test_other_save_errors_are_one_line_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save failing for another reason (a multi-line torch error, on a roomy disk) is named by
    its first line, not called a full disk, and leaves no partial checkpoint either."""
    run = tmp_path / "run"
    real_save_rng = ckpt_io.save_rng

    def save_rng(ckpt: Path, rank: int) -> None:
        if ckpt.name.startswith("step_00000004"):
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64\n"
                               "frame #0: c10::Error::Error(...)")  # fmt: skip
        real_save_rng(ckpt, rank)

    monkeypatch.setattr(ckpt_io, "save_rng", save_rng)
    monkeypatch.setattr(ckpt_io, "free_bytes", lambda path: 100 * 2**30)
    with pytest.raises(ckpt_io.CheckpointSaveError) as info:
        run_toy(run)
    msg = info.value.strerror
    assert "not saved: RuntimeError: [enforce fail at inline_container.cc:603]" in msg
    assert "no space" not in msg and "\n" not in msg and info.value.errno == errno.EIO
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["step_00000002"]
    assert not (ckpt_io.checkpoint_root(run) / "step_00000004.tmp").exists()


def test_write_json_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JSON record that cannot be written (the disk is full) leaves nothing behind."""

    real_write_text = Path.write_text

    def full(self: Path, text: str, *args, **kwargs):
        real_write_text(self, text[:5])  # the part that fitted
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        ckpt_io.write_json(tmp_path / "record.json", {"step": 1})
    assert list(tmp_path.iterdir()) == []
