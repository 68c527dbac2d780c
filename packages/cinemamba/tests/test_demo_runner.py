"""The demo's stage runner: stamps, reuse, --fresh, config changes, interrupted stages."""

import json
from pathlib import Path

import pytest

from cinemamba.apps.demo.runner import STAMP, Stage, StageRunner, config_hash


def _stages(calls: list[str], cfg_a: int = 1, cfg_b: int = 2, fail_b: bool = False):
    def run_a(work, inputs):
        calls.append("a")
        (work / "a.txt").write_text(str(cfg_a))
        return {"value": cfg_a}

    def run_b(work, inputs):
        calls.append("b")
        if (work / "partial.txt").exists():
            calls.append("b-resumed")
        (work / "partial.txt").write_text("half")
        if fail_b:
            raise RuntimeError("boom")
        a = int((inputs["a"] / "a.txt").read_text())
        (work / "b.txt").write_text(str(a + cfg_b))
        return {"value": a + cfg_b}

    def run_c(work, inputs):
        calls.append("c")
        (work / "c.txt").write_text("c")

    return [
        Stage("a", run_a, {"x": cfg_a}),
        Stage("b", run_b, {"y": cfg_b}, needs=["a"]),
        Stage("c", run_c, {}, needs=[]),
    ]


def test_runs_then_reuses_then_fresh(tmp_path):
    lines: list[str] = []
    calls: list[str] = []
    records = StageRunner(tmp_path, _stages(calls), say=lines.append).run()
    assert calls == ["a", "b", "c"]
    assert [r.status for r in records] == ["ran"] * 3
    assert (tmp_path / "b" / "b.txt").read_text() == "3"
    stamp = json.loads((tmp_path / "b" / STAMP).read_text())
    assert stamp["hash"] == records[1].hash and stamp["summary"] == {"value": 3}
    assert not list(tmp_path.glob("*.tmp"))
    assert any(line.startswith("[demo 1/3] a: done in") for line in lines)

    calls.clear()
    records = StageRunner(tmp_path, _stages(calls), say=lines.append).run()
    assert calls == []
    assert [r.status for r in records] == ["reused"] * 3
    assert records[1].summary == {"value": 3}

    calls.clear()
    StageRunner(tmp_path, _stages(calls), fresh=True, say=lines.append).run()
    assert calls == ["a", "b", "c"]

    calls.clear()
    StageRunner(tmp_path, _stages(calls), fresh=["a"], say=lines.append).run()
    assert calls == ["a", "b"]  # b reads a, so it reruns; c does not


def test_config_change_redoes_stage_and_dependents_only(tmp_path):
    calls: list[str] = []
    StageRunner(tmp_path, _stages(calls), say=lambda s: None).run()
    calls.clear()
    StageRunner(tmp_path, _stages(calls, cfg_a=5), say=lambda s: None).run()
    assert calls == ["a", "b"]
    assert (tmp_path / "b" / "b.txt").read_text() == "7"
    calls.clear()
    StageRunner(tmp_path, _stages(calls, cfg_a=5, cfg_b=1), say=lambda s: None).run()
    assert calls == ["b"]


def test_failed_stage_keeps_partial_work_and_resumes(tmp_path):
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="boom"):
        StageRunner(tmp_path, _stages(calls, fail_b=True), say=lambda s: None).run()
    assert (tmp_path / "b.tmp" / "partial.txt").exists() and not (tmp_path / "b").exists()
    calls.clear()
    StageRunner(tmp_path, _stages(calls), say=lambda s: None).run()
    assert calls == ["b", "b-resumed", "c"]  # same hash: the partial directory is handed back
    # A different config wipes the partial directory instead of resuming it.
    with pytest.raises(RuntimeError):
        StageRunner(tmp_path, _stages(calls, cfg_b=9, fail_b=True), say=lambda s: None).run()
    calls.clear()
    StageRunner(tmp_path, _stages(calls, cfg_b=4), say=lambda s: None).run()
    assert calls == ["b"]


def test_bad_stage_lists_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        StageRunner(tmp_path, [Stage("a", lambda w, i: None, {})] * 2)
    with pytest.raises(ValueError, match="needs"):
        StageRunner(tmp_path, [Stage("a", lambda w, i: None, {}, needs=["b"])])
    with pytest.raises(ValueError, match="unknown stage"):
        StageRunner(tmp_path, [Stage("a", lambda w, i: None, {})], fresh=["zzz"])


def test_config_hash_is_order_independent():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_signal_stopped_training_leaves_the_stage_unfinished(tmp_path):
    from cinemamba.apps.demo.runner import StageInterrupted
    from cinemamba.apps.demo.stages import finished
    from cinemamba.train.trainer import TrainResult

    done = TrainResult(8, "done", None)
    assert finished(done, "vae") is done
    lines: list[str] = []

    def stopped(work, inputs):
        (work / "checkpoint").write_text("step 3")
        finished(TrainResult(3, "signal", None), "vae")

    with pytest.raises(StageInterrupted, match="vae: training stopped by a signal at step 3"):
        StageRunner(tmp_path, [Stage("vae", stopped, {})], say=lines.append).run()
    # No stamp, no final directory: the next run resumes from the kept checkpoint.
    assert not (tmp_path / "vae").exists()
    assert (tmp_path / "vae.tmp" / "checkpoint").exists()
    assert not (tmp_path / "vae.tmp" / STAMP).exists()
    assert "stopped after" in lines[-1]


@pytest.mark.parametrize(
    ("steps", "every", "keep", "want_every", "want_keep"),
    [
        (3000, 1500, 2, 1500, 2),  # the demo's own settings: unchanged
        (24000, 6000, 1, 6000, 3),  # a finer cadence that lands on 12000 is kept ...
        (24000, 5000, 4, 12000, 4),  # ... one that misses it is replaced by half the steps
        (24000, 0, 1, 12000, 2),
    ],
)
def test_backbone_checkpoints_keep_the_half_way_step(steps, every, keep, want_every, want_keep):
    from cinemamba.apps.demo import load_demo_config
    from cinemamba.apps.demo.stages import backbone_experiment

    demo_yaml = Path(__file__).resolve().parents[3] / "configs/experiment/demo.yaml"
    cfg = load_demo_config(
        demo_yaml,
        [
            f"backbone.train.steps={steps}",
            f"backbone.train.checkpoint_every={every}",
            f"backbone.train.keep_last={keep}",
        ],
    )
    exp = backbone_experiment(cfg)
    assert (exp.train.checkpoint_every, exp.train.keep_last) == (want_every, want_keep)
    # The half-way checkpoint is among the last `keep_last` ones at the end of training.
    saved = list(range(want_every, steps + 1, want_every))
    assert steps // 2 in saved[-exp.train.keep_last :]
