"""The backbone trainer on one GPU: DeepSpeed ZeRO-2 over NCCL, bf16, from raw video shards
(VAE and text encoder on the fly), a few steps. Marked ``cuda``; scripts/gpu_check.sh runs it."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import write_synth
from cinemamba.tasks.backbone import load_backbone_experiment, train_backbone
from cinemamba_vae import VideoAutoencoder, vae_preset

pytestmark = pytest.mark.cuda
CONFIG = Path(__file__).parents[3] / "configs" / "experiment" / "backbone_tiny.yaml"


def test_backbone_zero2_bf16_nccl_training_on_one_gpu(tmp_path: Path) -> None:
    """Four optimizer steps finish with finite losses on an NCCL group, and the saved EMA
    backbone loads back."""
    if os.environ.get("DS_ACCELERATOR") != "cuda":
        pytest.skip("DeepSpeed must be told DS_ACCELERATOR=cuda (scripts/gpu_check.sh does)")
    write_synth(tmp_path / "raw", "train", 4, SceneConfig(frames=12, height=32, width=32),
                samples_per_shard=2)  # fmt: skip
    torch.manual_seed(0)
    VideoAutoencoder(vae_preset("tiny")).save_pretrained(tmp_path / "vae")
    run = tmp_path / "run"
    exp = load_backbone_experiment(CONFIG, [
        f"train.run_dir={run}", "train.steps=4", "train.batch_size=2", "train.log_every=1",
        "train.progress=false", "train.checkpoint_every=0", "train.eval_every=4",
        "train.precision=bf16", "train.deepspeed_config=zero2",
        "train.optimizer.warmup_steps=0", "train.optimizer.schedule=constant",
        f"task.vae={tmp_path / 'vae'}", "task.data.source=raw", f"task.data.path={tmp_path / 'raw'}",
        "task.data.clip.frames=9", "task.samples.prompts=[]",
    ])  # fmt: skip
    result = train_backbone(exp)
    assert result.reason == "done"
    assert dist.is_initialized() and dist.get_backend() == "nccl"
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r["backbone/loss"] for r in recs if r["kind"] == "train"]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), losses
    from cinemamba_backbone import VideoDiT

    assert VideoDiT.from_pretrained(run / "backbone").config.in_channels == 8
