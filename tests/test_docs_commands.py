"""The shell blocks of README.md and docs/*.md, as a new user would type them (issue 18).

Every block is checked statically: each `cinemamba` line parses with the real CLI (subcommand,
flags), each `python -m` module exists, and each repository path it names (configs/, scripts/,
docs/, packages/) is there. The quick blocks (RUN, below) are also run as written, page by page
in a fresh folder (a page's blocks in order, each in a shell that sourced scripts/env.sh, as
README.md says); every other block is listed in SKIP with the reason it is not run here. A new
block must be put in one of the two.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cinemamba.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}

# (page, first line of the block) -> run as written. Seconds each on a 2-core CPU.
RUN = {
    ("README.md", "source scripts/env.sh     # in each new shell: .venv/bin first on PATH, offline / CPU defaults"),
    ("docs/configs.md", 'cinemamba sample configs/sampling/tiny.yaml pipeline.window=6 --prompt "a red circle moves up" --out out/v.mp4'),
    ("docs/data.md", "cinemamba synth data/synth --train 16 --val 4 frames=33"),
    ("docs/data.md", "cinemamba data inspect data/synth/train --contact sheet.png --clips 6 --frames 8 --json summary.json"),
    ("docs/long-video.md", 'cinemamba sample configs/sampling/tiny.yaml --prompt "a red circle moving left" \\'),
    ("docs/training.md", "source scripts/env.sh     # .venv/bin first on PATH, offline / CPU defaults (see the README)"),
}  # fmt: skip

DEMO = "trains the demo's models (minutes to an hour)"
GPU = "needs GPUs or a cluster"
INSTALL = "installs packages (network, minutes)"
TRAINED = (
    "needs a trained model and exported latents from the steps before it (minutes of training)"
)
OWN = "needs your own videos or a pretrained VAE folder"
BENCH = "a benchmark on a quiet machine (minutes to hours)"
RENDER = "renders a whole data set of long videos (minutes)"
SKIP = {
    ("README.md", "scripts/demo.sh   # set up .venv if needed, then run the main job on the embedded data"): DEMO + "; the test suite itself",
    ("README.md", '.venv/bin/pip install --no-build-isolation -c scripts/constraints.txt -e "packages/backbone[cuda]"'): INSTALL + "; CUDA",
    ("README.md", "scripts/setup.sh          # once (demo.sh and test.sh run it too): .venv with the five packages"): INSTALL,
    ("docs/ablations.md", "cinemamba ablate configs/ablation/tiny.yaml                  # the run shown below"): DEMO,
    ("docs/ablations.md", "cinemamba ablate configs/ablation/tiny.yaml 'mixers=[bimamba,attention,mamba2]' match=params"): DEMO,
    ("docs/ablations.md", "cinemamba ablate configs/ablation/tiny.yaml out=runs/ablation shared_out=runs/demo \\"): DEMO,
    ("docs/configs.md", "cinemamba train-vae configs/vae/tiny.yaml task.data.path=data/synth/train train.steps=300"): "trains 300 VAE steps on data/synth (minutes)",
    ("docs/data.md", "cinemamba shards videos SIDECAR shards --prefix train --samples-per-shard 1000"): OWN,
    ("docs/data.md", "cinemamba synth data/synth-long frames=256 height=64 width=64 background=plain two_object_prob=0.3"): "1,152 videos of 256 frames (minutes)",
    ("docs/demo.md", "scripts/demo.sh            # = bash scripts/setup.sh && cinemamba demo"): DEMO,
    ("docs/demo.md", "cinemamba demo backbone.train.steps=3200          # more backbone training"): DEMO,
    ("docs/demo.md", "cinemamba demo backbone.train.steps=24000 --out runs/demo-8x   # 8× the steps; its cosine schedule stretched"): DEMO,
    ("docs/evaluation.md", "# Real synthetic videos only: the detector's ceiling (every video should score near 1)."): TRAINED + "; FVD over the whole val set",
    ("docs/evaluation.md", "scripts/demo.sh                              # the fvd stage runs after evaluate"): DEMO,
    ("docs/gpu.md", '.venv/bin/pip install --no-build-isolation -c scripts/constraints.txt -e "packages/backbone[cuda]"'): INSTALL + "; CUDA",
    ("docs/gpu.md", "bash scripts/gpu_wheels.sh .whl          # where PyPI is reachable: ~45 MB of wheels into .whl/"): GPU,
    ("docs/gpu.md", "cinemamba bench --gpu --full --out docs/benchmarks.md --json gpu.json   # on the GPU"): GPU,
    ("docs/latents.md", "cinemamba export-latents input=data/synth/train output=data/latents vae=runs/vae/vae \\"): TRAINED,
    ("docs/own-data.md", "cinemamba shards videos SIDECAR shards --samples-per-shard 1000   # sidecars only"): OWN,
    ("docs/own-data.md", "cp configs/experiment/backbone_tiny.yaml mine.yaml   # your copy (buckets go in it, below)"): OWN,
    ("docs/ablations.md", "cinemamba ablate configs/ablation/memory.yaml                        # out: runs/ablation-memory"): DEMO,
    ("docs/ablations.md", "cinemamba ablate configs/ablation/memory.yaml threads=0"): DEMO,
    ("docs/data.md", "cinemamba synth data/memory frames=257 height=32 width=32 background=plain \\"): RENDER,
    ("docs/own-data.md", "cinemamba vae-stats wan-vae shards --clip-frames 17   # writes cinemamba_latent_stats.json into wan-vae"): OWN,
    ("docs/own-data.md", "cinemamba export-latents input=shards output=latents vae=wan-vae \\"): OWN,
    ("docs/training.md", "cinemamba export-latents input=shards output=latents vae=wan-vae     # whole videos"): OWN,
    ("docs/training.md", ".venv/bin/python scripts/longest_window.py --markdown docs/training.md   # tiny and S, 32x32 latents"): BENCH,
    ("docs/own-data.md", 'cinemamba sample runs/mine/pipeline --prompt "a cat jumps onto a table" --frames 129 --mode rolling --out cat.mp4'): OWN,
    ("docs/training.md", "torchrun --nproc_per_node 8 -m cinemamba.train.toy --config configs/experiment/toy.yaml"): GPU,
    ("docs/training.md", "deepspeed --hostfile hostfile --master_addr node-01 --master_port 29500 \\"): GPU,
    ("docs/training.md", "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint node-01:29500 \\"): GPU,
    ("docs/training.md", "sbatch --nodes 4 scripts/slurm/train.sbatch --config configs/experiment/toy.yaml \\"): GPU,
    ("docs/training.md", "cinemamba train configs/experiment/backbone_tiny.yaml \\"): TRAINED,
    ("docs/use-and-finetune.md", "  cinemamba export-pipeline runs/backbone_tiny --out models/tiny          # latest checkpoint, EMA"): TRAINED,
    ("docs/use-and-finetune.md", 'cinemamba sample models/tiny --prompt "a red circle moves to the left" --out out/v.mp4'): TRAINED,
    ("docs/use-and-finetune.md", "cinemamba train configs/experiment/backbone_tiny.yaml train.run_dir=runs/ft \\"): TRAINED,
    ("docs/use-and-finetune.md", "cinemamba train configs/experiment/backbone_tiny.yaml train.run_dir=runs/lora \\"): TRAINED,
    ("docs/use-and-finetune.md", 'cinemamba sample models/tiny --lora runs/lora/lora --prompt "a red circle moves to the left" --out out/v.mp4'): TRAINED,
    ("docs/vae.md", "pip install 'cinemamba-vae[diffusers]'   # scripts/setup.sh installs it (diffusers 0.42.1)"): INSTALL + "; " + OWN,
}  # fmt: skip

REPO_PATH = re.compile(r"(?<![\w./-])((?:configs|scripts|docs|packages)/[\w./-]*\w)")


@dataclass
class Block:
    """One fenced shell block of a page."""

    page: str
    line: int  # of the opening fence
    text: str

    @property
    def key(self) -> tuple[str, str]:
        return self.page, self.text.splitlines()[0]


def shell_blocks(page: str, text: str) -> list[Block]:
    """The ```bash / sh / shell / console blocks of a markdown text, in order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
            if fence.group(2) in SHELL_LANGS:
                blocks.append(Block(page, i + 1, "\n".join(lines[i + 1 : end]) + "\n"))
            i = end
        i += 1
    return blocks


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in shell_blocks(page, (REPO / page).read_text())]


def commands(text: str) -> list[list[str]]:
    """The simple commands of a shell text: continuations joined, comments and operators cut."""
    out: list[list[str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split, lex.commenters = True, "#"
        current: list[str] = []
        for token in lex:
            if token and set(token) <= set(";&|"):
                out.append(current)
                current = []
            else:
                current.append(token)
        out.append(current)
    # Leading VAR=value assignments belong to the environment, not the command.
    stripped = []
    for cmd in out:
        while cmd and re.match(r"^[A-Z_][A-Z0-9_]*=", cmd[0]):
            cmd = cmd[1:]
        if cmd:
            stripped.append(cmd)
    return stripped


def _parse(parser: argparse.ArgumentParser, argv: list[str], where: str) -> list[str]:
    """Problems argparse finds in argv (exit 0 for --help/--version is none)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            _, extra = parser.parse_known_args(argv)
    except SystemExit as stop:
        return [] if stop.code == 0 else [f"{where}: {err.getvalue().strip().splitlines()[-1]}"]
    bad = [a for a in extra if a.startswith("-") or "=" not in a]
    return [f"{where}: unrecognized arguments {bad}"] if bad else []


def _module_problems(module: str, rest: list[str], where: str) -> list[str]:
    if module == "pip":
        return []
    if importlib.util.find_spec(module) is None:
        return [f"{where}: no module {module!r}"]
    if module == "cinemamba.cli":
        return _parse(build_parser(), rest, where)
    if module.startswith("cinemamba.train."):  # task entry points share the runner's parser
        from cinemamba.train.runner import add_train_arguments

        parser = argparse.ArgumentParser(prog=module)
        add_train_arguments(parser)
        if module.endswith(".consolidate"):
            return []
        return _parse(parser, rest, where)
    return []


def problems(block: Block) -> list[str]:
    """What in a block names a subcommand, flag, module or repository file that does not exist."""
    found: list[str] = []
    where = f"{block.page}:{block.line}"
    for cmd in commands(block.text):
        cmd = [t for t in cmd if t != "..."]  # "and so on" in a line that is not run here
        name = Path(cmd[0]).name
        if cmd[0] == "cinemamba":
            found += _parse(build_parser(), cmd[1:], f"{where} {shlex.join(cmd[:2])}")
        elif (name.startswith("python") or name == "torchrun") and "-m" in cmd:
            i = cmd.index("-m")
            found += _module_problems(cmd[i + 1], cmd[i + 2 :], where)
        elif name == "deepspeed" and "--module" in cmd:
            i = cmd.index("--module")
            found += _module_problems(cmd[i + 1], cmd[i + 2 :], where)
        elif cmd[0].startswith(("scripts/", "./scripts/")) and not (REPO / cmd[0]).is_file():
            found.append(f"{where}: no file {cmd[0]}")
        for prev, token in zip(["", *cmd[:-1]], cmd, strict=True):
            # One trained-VAE path on every page: `train-vae` saves the model to RUN_DIR/vae.
            value = token.split("=", 1)[1] if re.match(r"^(task\.)?vae=", token) else None
            value = token if prev == "--vae" else value
            if value and value.startswith("runs/") and not value.endswith("/vae"):
                found.append(f"{where}: {value} is not a trained VAE's path (RUN_DIR/vae)")
            for path in REPO_PATH.findall(token.split("=", 1)[-1]):
                if not (REPO / re.sub(r"\[.*$", "", path)).exists():
                    found.append(f"{where}: no file {path}")
    return found


# ---------------------------------------------------------------- the checks


def test_every_shell_block_is_run_or_skipped_with_a_reason():
    keys = [b.key for b in all_blocks()]
    unclassified = [k for k in keys if k not in RUN and k not in SKIP]
    assert not unclassified, f"add to RUN or SKIP (with a reason): {unclassified}"
    stale = sorted((RUN | set(SKIP)) - set(keys))
    assert not stale, f"no such block any more: {stale}"


def test_every_block_names_real_commands_flags_and_files():
    found = [p for block in all_blocks() for p in problems(block)]
    assert not found, "\n".join(found)


def test_help_texts_name_real_files():
    parser = build_parser()
    helps = [parser.format_help()]
    for action in parser._subparsers._group_actions:  # the COMMAND choices
        helps += [sub.format_help() for sub in action.choices.values()]
    named = {p for text in helps for p in REPO_PATH.findall(text)}
    assert named  # the helps do name config files; each must exist
    assert not [p for p in sorted(named) if not (REPO / p).exists()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cinemamba trian configs/vae/tiny.yaml", "invalid choice"),
        ("cinemamba synth data/x --trian 3", "unrecognized arguments ['--trian', '3']"),
        ("cinemamba sample configs/sampling/nope.yaml --out v.mp4", "no file configs/sampling/nope.yaml"),
        ("python -m cinemamba.train.nope --config configs/experiment/toy.yaml", "no module"),
        ("torchrun --nproc_per_node 2 -m cinemamba.cli traine x.yaml", "invalid choice"),
        ("bash scripts/nope.sh", "no file scripts/nope.sh"),
        ("cinemamba eval --shards d --vae runs/vae/final", "runs/vae/final is not a trained VAE"),
        ("cinemamba export-latents vae=runs/vae/export", "runs/vae/export is not a trained VAE"),
        ("source scripts/env.sh; cinemamba data inspect d --contacts s.png", "unrecognized"),
    ],
)  # fmt: skip
def test_the_checker_finds_what_is_wrong(text, expected):
    found = problems(Block("x.md", 1, text + "\n"))
    assert any(expected in f for f in found), found


def _work_tree(tmp_path: Path) -> Path:
    """A fresh folder where the repository's files are where the docs expect them."""
    for name in ("configs", "scripts", "packages", "docs"):
        (tmp_path / name).symlink_to(REPO / name)
    # The repository's .venv, or (a checkout that shares a venv kept elsewhere) this one.
    venv = REPO / ".venv" if (REPO / ".venv" / "bin").is_dir() else Path(sys.prefix)
    (tmp_path / ".venv").symlink_to(venv)
    return tmp_path


@pytest.mark.parametrize("page", sorted({page for page, _ in RUN}))
def test_quick_blocks_run_as_written(page, tmp_path):
    work = _work_tree(tmp_path)
    # A new user's shell: the venv is not on PATH until scripts/env.sh puts it there.
    venv_bins = {str((work / ".venv" / "bin").resolve()), str(Path(sys.executable).parent)}
    path = [d for d in os.environ["PATH"].split(os.pathsep) if d not in venv_bins]
    env = {**os.environ, "PATH": os.pathsep.join(path)}
    env.pop("VIRTUAL_ENV", None)
    for block in shell_blocks(page, (REPO / page).read_text()):
        if block.key not in RUN:
            continue
        script = f"set -euo pipefail\nsource scripts/env.sh\n{block.text}"
        done = subprocess.run(
            ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{page}:{block.line}\n{block.text}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-3000:]


# Config files whose step budgets docs/configs.md states in its table, and where they live.
STEP_KEYS = {
    "configs/vae/tiny.yaml": ["train.steps"],
    "configs/vae/base.yaml": ["train.steps"],
    "configs/experiment/backbone_tiny.yaml": ["train.steps"],
    "configs/experiment/demo.yaml": ["vae.train.steps", "backbone.train.steps"],
    "configs/ablation/tiny.yaml": ["steps"],
    "configs/experiment/toy.yaml": ["train.steps"],
}


def _numbers_before_steps(text: str) -> set[int]:
    """Every "N steps" count in a text: 1,600 / 200k / 3000."""
    found = set()
    for number, k in re.findall(r"\b(\d[\d,]*)(k?) steps", text):
        found.add(int(number.replace(",", "")) * (1000 if k else 1))
    return found


def test_configs_page_states_the_step_counts_of_the_configs():
    from omegaconf import OmegaConf

    rows = {
        m.group(1): m.group(0)
        for m in re.finditer(
            r"^\| `(configs/[^`]+)` \|.*$", (REPO / "docs/configs.md").read_text(), re.M
        )
    }
    for path, keys in STEP_KEYS.items():
        cfg = OmegaConf.load(REPO / path)
        wanted = {int(OmegaConf.select(cfg, key)) for key in keys}
        assert wanted <= _numbers_before_steps(rows[path]), (path, wanted, rows[path])
