"""Train tiny -> RUN_DIR/pipeline -> from_pretrained and `cinemamba sample DIR` with nothing
else; export-pipeline from a checkpoint; the process check, overrides anywhere, prompt sidecars."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cinemamba.cli import main
from cinemamba.config import ConfigError
from cinemamba.eval.sources import iter_generated
from cinemamba.tasks.backbone import BackboneTask, load_backbone_experiment, train_backbone
from cinemamba.train import checkpoint as ckpt_io
from cinemamba_backbone import VideoDiT
from cinemamba_sampling import TrainingClip, VideoPipeline

pytestmark = pytest.mark.distributed
CONFIG = Path(__file__).parents[3] / "configs" / "experiment" / "backbone_tiny.yaml"
SMALL = ["steps=2", "pipeline.progress=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, make_latent_set) -> dict[str, Path]:
    """2 synth videos -> tiny VAE latents (9 frames, 32x32) -> a 2-step backbone run."""
    root = tmp_path_factory.mktemp("pipe")
    make_latent_set(root, videos=2)
    exp = load_backbone_experiment(
        CONFIG,
        [
            f"train.run_dir={root / 'run'}",
            "train.steps=2",
            "train.batch_size=2",
            "train.progress=false",
            "train.checkpoint_every=0",
            f"task.vae={root / 'vae'}",
            f"task.data.path={root / 'lat'}",
            "task.samples.prompts=[]",
            "task.samples.steps=3",
            "task.backbone.mixer=mamba",
            "train.optimizer.warmup_steps=0",
            "train.optimizer.lr=0.02",
        ],
    )  # fmt: skip  (no warmup, a high rate: the final layer leaves zero, outputs depend on it)
    assert train_backbone(exp).reason == "done"
    return {"root": root, "run": root / "run", "vae": root / "vae", "exp": exp}


def _task_pipeline(run: dict, weights: dict[str, torch.Tensor]) -> VideoPipeline:
    """The in-memory pipeline the training task composes, around `weights`."""
    task = BackboneTask(run["exp"].task)
    task.validate()
    model = VideoDiT(run["exp"].task.backbone)
    model.load_state_dict(weights)
    pipe = task.pipeline(model)
    pipe.config.progress = False
    return pipe


def test_training_writes_a_pipeline_that_reproduces_the_in_memory_one(run: dict) -> None:
    """RUN_DIR/pipeline (EMA weights, VAE by reference) gives bit-for-bit the latents of the
    task's in-memory pipeline around the checkpoint's EMA weights, for a seed."""
    meta = json.loads((run["run"] / "pipeline" / "pipeline.json").read_text())
    assert meta["vae"]["path"] == str(run["vae"].resolve())
    assert meta["training_clip"] == {"latent_frames": 3, "latent_height": 8, "latent_width": 8}
    assert meta["defaults"]["steps"] == 3
    loaded = VideoPipeline.from_pretrained(run["run"] / "pipeline")
    loaded.config.progress = False
    assert loaded.training_clip == TrainingClip(3, 8, 8)
    ckpt = ckpt_io.latest_checkpoint(run["run"])
    memory = _task_pipeline(run, load_file(str(ckpt / "ema" / "backbone.safetensors")))
    kw = dict(frames=9, height=32, width=32, seed=5, mode="rolling")
    assert torch.equal(loaded.sample_latents(["a red circle"], **kw),
                       memory.sample_latents(["a red circle"], **kw))  # fmt: skip


def test_export_pipeline_from_a_checkpoint_with_raw_weights(run: dict) -> None:
    """`cinemamba export-pipeline --no-ema` holds the trained (not EMA) weights."""
    out = run["root"] / "raw_pipe"
    assert main(["export-pipeline", str(run["run"]), "--out", str(out), "--no-ema"]) == 0
    ckpt = ckpt_io.latest_checkpoint(run["run"])
    files = sorted((ckpt / "backbone" / ckpt_io.DS_TAG).glob("mp_rank_*_model_states.pt"))
    raw = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    saved = load_file(str(out / "backbone" / "model.safetensors"))
    assert saved.keys() == raw.keys()
    assert all(torch.equal(saved[k], raw[k]) for k in raw)
    ema = load_file(str(ckpt / "ema" / "backbone.safetensors"))
    assert any(not torch.equal(saved[k], ema[k]) for k in raw)


def test_sample_a_saved_pipeline_with_nothing_else(run: dict, tmp_path: Path) -> None:
    """DIR alone: the clip size and sampling defaults come from pipeline.json; each video gets
    its prompt sidecar, which eval's generated-folder reader picks up."""
    out = tmp_path / "v.mp4"
    argv = ["sample", str(run["run"] / "pipeline"), "--prompt", "a red circle", "--out", str(out)]
    assert main([*argv, *SMALL]) == 0
    assert out.with_suffix(".txt").read_text() == "a red circle\n"
    items = list(iter_generated(tmp_path, Counter(), 64))
    assert [item.prompt for item in items] == ["a red circle"]


def test_sampling_another_process_is_an_error_naming_both(run: dict, tmp_path: Path, capsys):
    argv = ["sample", str(run["run"] / "pipeline"), "--prompt", "x", "--out",
            str(tmp_path / "v.mp4"), "process.name=ddpm", "pipeline.solver=ddim", *SMALL]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "trained with process (name='flow')" in err and "(name='ddpm'" in err
    assert not (tmp_path / "v.mp4").exists()
    # another solver for the same process is fine
    assert main([*argv[:-4], "pipeline.solver=heun", *SMALL]) == 0


def test_overrides_anywhere_and_the_window_warning(run: dict, tmp_path: Path, caplog) -> None:
    """`--out y pipeline.window=4` (an override after an option) is taken, and a rolling window
    longer than the 3-frame training clip warns."""
    argv = ["sample", str(run["run"] / "pipeline"), "--prompt", "x", "--mode", "rolling",
            "--out", str(tmp_path / "v.mp4"), "pipeline.window=4", "--set", "steps=1",
            "pipeline.progress=false"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="cinemamba_sampling.pipeline"):
        assert main(argv) == 0
    assert any("window of 4 latent frames" in r.getMessage() for r in caplog.records)
    with pytest.raises(SystemExit):
        main([*argv, "stray"])


# ---------------------------------------------------------------- fine-tuning


def _fine_tune(run: dict, name: str, *extra: str):
    return load_backbone_experiment(CONFIG, [
        f"train.run_dir={run['root'] / name}", "train.batch_size=1", "train.log_every=1",
        "train.progress=false", "train.checkpoint_every=1", "train.keep_last=5",
        "train.optimizer.lr=0.05", "train.optimizer.warmup_steps=0",
        "train.optimizer.schedule=constant", "train.ema_decay=0.5",
        f"task.vae={run['vae']}", f"task.data.path={run['root'] / 'lat'}",
        "task.samples.prompts=[]", "task.backbone.mixer=mamba",
        f"task.init_from={run['run'] / 'pipeline'}", *extra,
    ])  # fmt: skip


def _module_state(ckpt: Path) -> dict[str, torch.Tensor]:
    files = sorted((ckpt / "backbone" / ckpt_io.DS_TAG).glob("mp_rank_*_model_states.pt"))
    return torch.load(files[0], map_location="cpu", weights_only=False)["module"]


def _losses(run_dir: Path) -> list[float]:
    recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["backbone/loss"] for r in recs if r["kind"] == "train"]


def test_init_from_loads_the_pipeline_weights_and_checks_them(run: dict) -> None:
    """Weights only: the built model is the pipeline's backbone; another architecture or
    process is a config error naming the key."""
    task = BackboneTask(_fine_tune(run, "init").task)
    task.validate()
    built = task.build_models()["backbone"].state_dict()
    saved = load_file(str(run["run"] / "pipeline" / "backbone" / "model.safetensors"))
    assert built.keys() == saved.keys() and all(torch.equal(built[k], saved[k]) for k in saved)
    with pytest.raises(ConfigError, match="task.backbone differs.*depth: 3 here, 2 there"):
        BackboneTask(_fine_tune(run, "init", "task.backbone.depth=3").task).validate()
    with pytest.raises(ConfigError, match=r"task.process:.*name='flow'.*name='ddpm'"):
        BackboneTask(_fine_tune(run, "init", "task.process.name=ddpm").task).validate()


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_lora_trains_only_adapters_and_resumes_exactly(run: dict, stage: int) -> None:
    """ZeRO `stage`: after LoRA steps every base weight equals the pipeline's and the adapters
    moved; 3 steps straight == 2 steps then a resume to 3 (same losses, same adapters)."""
    lora = ["task.lora.rank=2", "task.lora.targets=[attn.qkv,mlp.0,temporal.in_proj]",
            f"train.deepspeed_config=zero{stage}"]  # fmt: skip
    straight = train_backbone(_fine_tune(run, f"lora{stage}", "train.steps=3", *lora))
    assert straight.reason == "done"
    train_backbone(_fine_tune(run, f"lora{stage}_r", "train.steps=2", *lora))
    train_backbone(_fine_tune(run, f"lora{stage}_r", "train.steps=3", *lora))
    a, b = run["root"] / f"lora{stage}", run["root"] / f"lora{stage}_r"
    assert len(_losses(a)) == 3 and _losses(a) == _losses(b)
    final, resumed = _module_state(straight.checkpoint), _module_state(ckpt_io.latest_checkpoint(b))
    assert all(torch.equal(final[k], resumed[k]) for k in final)
    base = load_file(str(run["run"] / "pipeline" / "backbone" / "model.safetensors"))
    prefix = "base_model.model."
    adapters = [k for k in final if "lora_" in k]
    assert adapters and all(final[k].abs().max() > 0 for k in adapters if "lora_B" in k)
    for key, value in final.items():
        if "lora_" not in key:
            plain = key.removeprefix(prefix).replace(".base_layer", "")
            assert torch.equal(value, base[plain]), key
    assert (a / "lora" / "adapter_model.safetensors").is_file()
    assert not (a / "backbone").exists()


def test_sample_with_a_lora_adapter(run: dict, tmp_path: Path) -> None:
    """`--lora` puts the fine-tuned adapter on the saved pipeline (other latents than the base
    pipeline's); an adapter is refused on a base it was not trained on."""
    adapter = run["root"] / "lora0" / "lora"
    if not adapter.is_dir():
        train_backbone(_fine_tune(run, "lora0", "train.steps=1", "task.lora.rank=2"))
    argv = ["sample", str(run["run"] / "pipeline"), "--prompt", "x", "--lora", str(adapter),
            "--out", str(tmp_path / "v.mp4"), *SMALL]  # fmt: skip
    assert main(argv) == 0 and (tmp_path / "v.mp4").stat().st_size > 0
    kw = dict(frames=9, height=32, width=32, seed=5, steps=2)
    base = VideoPipeline.from_pretrained(run["run"] / "pipeline")
    tuned = VideoPipeline.from_pretrained(run["run"] / "pipeline").load_lora(adapter)
    base.config.progress = tuned.config.progress = False
    assert not torch.equal(base.sample_latents("x", **kw), tuned.sample_latents("x", **kw))
    with pytest.raises(ValueError, match="was trained on base weights"):
        tuned.load_lora(adapter)  # the base now has the adapter merged in
    # export-pipeline of the LoRA run: the same merge of the same EMA adapters, bit for bit
    assert main(["export-pipeline", str(adapter.parent), "--out", str(tmp_path / "m")]) == 0
    merged = VideoPipeline.from_pretrained(tmp_path / "m")
    merged.config.progress = False
    assert torch.equal(merged.sample_latents("x", **kw), tuned.sample_latents("x", **kw))


def test_held_out_validation_loss(run: dict) -> None:
    """eval/val_loss at every eval step, in TensorBoard and log.jsonl; the last one against a
    hand computation of the flow loss at the fixed times on the EMA weights saved beside it."""
    root = run["root"]
    exp = load_backbone_experiment(CONFIG, [
        f"train.run_dir={root / 'val'}", "train.steps=2", "train.batch_size=2",
        "train.progress=false", "train.checkpoint_every=0", "train.eval_every=1",
        f"task.vae={run['vae']}", f"task.data.path={root / 'lat'}", "task.samples.prompts=[]",
        f"task.validation.path={root / 'lat'}", "task.validation.samples=2",
        "task.validation.t=[0.25,0.75]", "task.validation.seed=7",
        "train.optimizer.warmup_steps=0", "train.optimizer.lr=0.02",
    ])  # fmt: skip
    train_backbone(exp)
    recs = [json.loads(x) for x in (root / "val" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [1, 2] and evals[0]["val_loss"] != evals[1]["val_loss"]
    events = b"".join(p.read_bytes() for p in (root / "val" / "tensorboard").iterdir())
    assert b"eval/val_loss" in events and b"eval/val_loss_t0.25" in events

    from cinemamba.latents.dataset import latent_batches, open_latent_set

    net = VideoDiT.from_pretrained(root / "val" / "backbone").eval()
    stream = latent_batches(open_latent_set(root / "lat"), seed=7, rank=0, batch_size=1,
                            start_batch=0, crop="first")  # fmt: skip
    total = 0.0
    for i in range(2):
        batch, _ = next(stream)
        x0 = batch["latents"].double()
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7 + i)).double()
        for t in (0.25, 0.75):
            x_t = (1 - t) * x0 + t * eps
            with torch.no_grad():
                pred = net(x_t.float(), torch.tensor([t]), batch["text"], batch["text_mask"],
                           batch["pooled"]).double()  # fmt: skip
            total += float(((pred - (eps - x0)) ** 2).mean())
    assert evals[1]["val_loss"] == pytest.approx(total / 4, rel=1e-5)
