"""Clean-context training times for rolling generation (cinemamba.tasks.context, task.context_prob)."""

import pytest
import torch

from cinemamba.tasks.context import CleanContext
from cinemamba_sampling import FlowMatching


def test_clean_prefix_frames_and_zero_weight():
    proc = CleanContext(FlowMatching(), prob=0.5, max_frames=3)
    gen = torch.Generator().manual_seed(0)
    t = proc.sample_t(4000, 9, generator=gen)
    assert t.shape == (4000, 9)
    clean = t == 0
    count = clean.sum(1)
    # Clean frames form a prefix of 1..3 frames, in about half of the clips.
    assert torch.equal(clean, torch.arange(9)[None] < count[:, None])
    assert count.max() == 3 and (count > 0).float().mean().item() == pytest.approx(0.5, abs=0.03)
    # The noisy frames of a clip share one level drawn from the base law.
    noisy = t.masked_fill(clean, float("nan"))
    spread = noisy.nan_to_num(0).amax(1) - noisy.nan_to_num(2).amin(1)
    assert torch.all(spread.abs() < 1e-6)
    base = FlowMatching().sample_t(4000, generator=torch.Generator().manual_seed(1))
    assert t[:, -1].mean().item() == pytest.approx(base.mean().item(), abs=0.02)
    weight = proc.loss_weight(t)
    assert torch.equal(weight, (~clean).float())


def test_delegates_and_validates():
    base = FlowMatching()
    proc = CleanContext(base, prob=1.0, max_frames=8)
    assert proc.prediction == "velocity"
    x0, noise = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    t = proc.sample_t(2, 3, generator=torch.Generator().manual_seed(0))
    assert (t[:, -1] > 0).all()  # never a clip without a noisy frame
    assert torch.equal(proc.add_noise(x0, noise, t), base.add_noise(x0, noise, t))
    with pytest.raises(ValueError, match="per_frame_t"):
        proc.sample_t(2)
    with pytest.raises(ValueError, match="prob"):
        CleanContext(base, prob=1.5, max_frames=1)


def test_cinemamba_train_option_wraps_the_task_process():
    """`cinemamba train CONFIG task.per_frame_t=true task.context_prob=P task.context_frames=K`."""
    from cinemamba.tasks.backbone import BackboneTask, load_backbone_experiment

    cfg = "configs/experiment/backbone_tiny.yaml"
    on = load_backbone_experiment(cfg, ["task.per_frame_t=true", "task.context_prob=1.0",
                                        "task.context_frames=2"])  # fmt: skip
    task = BackboneTask(on.task)
    assert isinstance(task.process, CleanContext)
    t = task.process.sample_t(500, 6, generator=torch.Generator().manual_seed(0))
    count = (t == 0).sum(1)
    # p = 1: every clip starts with 1..2 clean frames, both counts occur, the rest is noisy.
    assert set(count.tolist()) == {1, 2}
    assert torch.equal(t == 0, torch.arange(6)[None] < count[:, None])
    off = BackboneTask(load_backbone_experiment(cfg, ["task.per_frame_t=true"]).task)
    assert not isinstance(off.process, CleanContext)  # default 0: the process as configured
    with pytest.raises(ValueError, match="per_frame_t=true"):
        BackboneTask(load_backbone_experiment(cfg, ["task.context_prob=0.5"]).task)
    with pytest.raises(ValueError, match="context_prob"):
        BackboneTask(load_backbone_experiment(cfg, ["task.context_prob=-0.1"]).task)
