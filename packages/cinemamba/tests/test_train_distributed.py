"""Multi-process runs on CPU (gloo) under torchrun and the deepspeed launcher.

The stand-in task (`cinemamba.train.toy`, two models: regressor + critic, two optimizers)
draws its global batches as a pure function of the sample index, so a 1-process ZeRO-0 run and
2-process ZeRO-2/3 runs at the same global batch must follow the same loss trajectory; a run
killed with SIGKILL and resumed must reproduce the uninterrupted one exactly (fp32, CPU).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from cinemamba.train import checkpoint as ckpt_io
from cinemamba.train import export_weights, load_experiment, train
from cinemamba.train.toy import RegressionTask, ToyExperiment

pytestmark = pytest.mark.distributed

BIN = Path(sys.executable).parent
COMMON = [
    "train.steps=6", "train.batch_size=8", "train.grad_accum=2", "train.log_every=1",
    "train.checkpoint_every=2", "train.keep_last=10", "train.progress=false",
    "train.optimizer.lr=0.05", "train.optimizer.warmup_steps=2", "train.optimizers.critic.lr=0.01",
    "train.ema_decay=0.8", "train.eval_every=2", "task.adversarial=true",
]  # fmt: skip
# fp32 sums over 2 ranks vs 1 rank differ only in rounding order
TRAJECTORY_RTOL = 1e-5


def _launch(run_dir: Path, *overrides: str, nproc: int = 1, launcher: str = "torchrun"):
    """Run the toy task; returns the finished process (output kept for failure messages)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}  # fmt: skip
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = ["cinemamba.train.toy", f"train.run_dir={run_dir}", *COMMON, *overrides]
    port = ["--master_port", str(_port())]
    if nproc == 1:
        cmd = [sys.executable, "-m", *args]
    elif launcher == "torchrun":
        cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), *port, "-m", *args]
    else:  # the deepspeed launcher on one node
        cmd = [str(BIN / "deepspeed"), "--num_gpus", str(nproc), *port, "--module", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _launch_srun_style(run_dir: Path, *overrides: str, nproc: int = 2) -> list[int]:
    """Start `nproc` ranks with only SLURM's variables (as `srun` would), no launcher."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}  # fmt: skip
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MASTER_PORT=str(_port()))
    args = ["-m", "cinemamba.train.toy", f"train.run_dir={run_dir}", *COMMON, *overrides]
    procs = []
    for rank in range(nproc):
        rank_env = {**env, "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(nproc), "SLURM_LOCALID": str(rank)}  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, *args],
                env=rank_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        )
    deadline = time.monotonic() + 300
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            # a dead rank leaves its peers waiting in a collective: end them
            time.sleep(5)
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
    return [p.wait() for p in procs]


def _train_here(run_dir: Path, *overrides: str) -> None:
    """The same run as `_launch(..., nproc=1)`, in this process (saves a Python start-up)."""
    exp = OmegaConf.to_object(
        load_experiment(ToyExperiment, None, [f"train.run_dir={run_dir}", *COMMON, *overrides])
    )
    assert train(exp.train, RegressionTask(exp.task), full_config=exp).reason == "done"


def _port() -> int:
    from cinemamba.train.distributed import free_port

    return free_port()


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _ok_or_teardown_abort(proc: subprocess.CompletedProcess, run_dir: Path) -> None:
    """Known issue (docs/training.md, "Known issues"): a 2-rank ZeRO-3 run on this CPU machine
    has been seen to abort in one rank ("terminate called without an active exception") after
    the run was complete. Accept that only when everything was written; the tests then check
    the results."""
    if proc.returncode == 0:
        return
    done = ckpt_io.latest_checkpoint(run_dir)
    teardown = "terminate called without an active exception" in proc.stderr + proc.stdout
    if not (teardown and done is not None and done.name == "step_00000006"):
        _ok(proc)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "eval" and records[-1]["step"] == 6, proc.stderr[-3000:]


def _losses(run_dir: Path, kind: str = "train") -> dict[int, dict[str, float]]:
    """Per step, the logged record."""
    out = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == kind:
            out[rec["step"]] = {k: v for k, v in rec.items() if k.endswith(("loss", "mse"))}
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted reference runs: 1-process ZeRO-0, 2-process ZeRO-2 and ZeRO-3."""
    root = tmp_path_factory.mktemp("ref")
    dirs = {"z0": root / "z0", "z2": root / "z2", "z3": root / "z3"}
    _train_here(dirs["z0"], "train.deepspeed_config=zero0")
    _ok(_launch(dirs["z2"], "train.deepspeed_config=zero2", nproc=2))
    _ok_or_teardown_abort(_launch(dirs["z3"], "train.deepspeed_config=zero3", nproc=2), dirs["z3"])
    return dirs


@pytest.mark.parametrize("stage", ["z2", "z3"])
def test_two_process_zero_matches_one_process(runs: dict[str, Path], stage: str) -> None:
    """Same global batch, same trajectory: every step's losses agree to TRAJECTORY_RTOL."""
    ref, got = _losses(runs["z0"]), _losses(runs[stage])
    assert sorted(ref) == sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in ref:
        assert set(ref[step]) == {"regressor/loss", "regressor/mse", "critic/loss"}
        for key, value in ref[step].items():
            assert got[step][key] == pytest.approx(value, rel=TRAJECTORY_RTOL), (step, key)
    # evaluation every 2 steps swaps the EMA into the (partitioned) weights and back: the
    # EMA scores agree, and the trajectory above shows the trained weights came back intact
    ref, got = _losses(runs["z0"], "eval"), _losses(runs[stage], "eval")
    assert sorted(ref) == sorted(got) == [2, 4, 6]
    for step in ref:
        assert got[step]["mse"] == pytest.approx(ref[step]["mse"], rel=TRAJECTORY_RTOL)


@pytest.mark.parametrize("stage", ["z2", "z3"])
def test_each_rank_holds_only_its_optimizer_partition(runs: dict[str, Path], stage: str) -> None:
    """Adam moments are split over the 2 ranks: each holds about half of every group."""
    params = {"regressor": [8 * 16 + 16 * 1, 16 + 1], "critic": [9 * 16 + 16 * 1, 16 + 1]}
    ckpt = ckpt_io.latest_checkpoint(runs[stage])
    for model, group_sizes in params.items():
        files = sorted((ckpt / model / ckpt_io.DS_TAG).glob("*zero_pp_rank_*_optim_states.pt"))
        assert len(files) == 2
        held = []
        for f in files:
            state = torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"]
            inner = state.get("base_optimizer_state", state.get("optimizer_state_dict"))
            held.append([inner["state"][g]["exp_avg"].numel() for g in range(len(group_sizes))])
        for g, total in enumerate(group_sizes):
            per_rank = [h[g] for h in held]
            assert sum(per_rank) >= total  # together they cover the group (plus padding)
            assert all(n <= (total + 1) // 2 + 1 for n in per_rank), (model, per_rank, total)


@pytest.mark.parametrize("stage", ["z2", "z3"])
@pytest.mark.parametrize("ema", [False, True])
def test_export_consolidates_every_stage(
    runs: dict[str, Path], tmp_path: Path, stage: str, ema: bool
) -> None:
    """Exported fp32 (or EMA) weights from partitioned checkpoints match the ZeRO-0 run."""
    for model in ("regressor", "critic"):
        ref = load_file(str(export_weights(runs["z0"], tmp_path / "a.safetensors", ema, model)))
        got = load_file(str(export_weights(runs[stage], tmp_path / "b.safetensors", ema, model)))
        assert sorted(ref) == sorted(got)
        for key in ref:
            assert got[key].dtype == torch.float32 and got[key].shape == ref[key].shape
            torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-5)


def test_sigkill_then_resume_is_exact(tmp_path: Path) -> None:
    """ZeRO-2 on 2 ranks started srun-style (no launcher) with an augmentation that draws from
    every RNG of every rank, SIGKILL during step 4 (last checkpoint: step 2), resume: the losses
    of steps 3-6 and the final weights and EMA equal those of an uninterrupted run (under the
    deepspeed launcher) bit for bit."""
    noisy = ("train.deepspeed_config=zero2", "task.input_noise=0.3")
    ref = tmp_path / "ref"
    _ok(_launch(ref, *noisy, nproc=2, launcher="deepspeed"))
    run = tmp_path / "run"
    codes = _launch_srun_style(run, *noisy, "task.fault_kill_at=3")
    assert codes == [-signal.SIGKILL, -signal.SIGKILL]
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["step_00000002"]
    assert _launch_srun_style(run, *noisy) == [0, 0]
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    # train and eval records, each step once: the resume dropped step 3's record of the killed run
    assert [s for s in steps] == [1, 2, 2, 3, 4, 4, 5, 6, 6]
    want, got = _losses(ref), _losses(run)
    for step in (3, 4, 5, 6):
        assert got[step] == want[step], step
    assert _losses(ref, "eval") == _losses(run, "eval")
    for ema in (False, True):
        for model in ("regressor", "critic"):
            a = load_file(str(export_weights(ref, tmp_path / "a.safetensors", ema, model)))
            b = load_file(str(export_weights(run, tmp_path / "b.safetensors", ema, model)))
            assert all(torch.equal(a[k], b[k]) for k in a), (ema, model)


def test_crash_during_checkpoint_write_keeps_previous(tmp_path: Path) -> None:
    """A process that dies while writing step 4's checkpoint leaves step 2 as the latest,
    loadable: the resumed run finishes with exactly the losses of an uninterrupted run, with
    an augmentation that draws from the python, numpy and torch RNGs (restored on resume)."""
    noisy = ("train.deepspeed_config=zero0", "task.input_noise=0.3")
    _train_here(tmp_path / "ref", *noisy)
    run = tmp_path / "run"
    crashed = _launch(run, *noisy, "task.fault_crash_in_checkpoint_at=4")
    assert crashed.returncode == 3, crashed.stderr[-3000:]
    root = ckpt_io.checkpoint_root(run)
    assert (root / "step_00000004.tmp" / "half-written").is_file()
    assert ckpt_io.latest_checkpoint(run).name == "step_00000002"
    _train_here(run, *noisy)
    assert not (root / "step_00000004.tmp").exists()
    ref, got = _losses(tmp_path / "ref"), _losses(run)
    assert all(got[s] == ref[s] for s in (3, 4, 5, 6))
    assert _losses(tmp_path / "ref", "eval") == _losses(run, "eval")
