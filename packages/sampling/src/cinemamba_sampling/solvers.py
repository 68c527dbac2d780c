"""Stateless solvers over explicit timestep tensors (k-diffusion style).

Every solver has the same signature::

    solver(model, x, timesteps, *, process, generator=None, callback=None, progress=False) -> x0

- `model(x, t)` returns the network's raw prediction (the process's target) for latents `x`
  at times `t` `(B,)`; guidance and conditioning are wrapped into it (see `guidance.py`).
- `timesteps` is a 1-D grid from the starting time down to 0 (`process.timesteps(steps)`);
  passing an increasing grid to the deterministic solvers runs them backwards (inversion).
- `process` converts outputs to (x0, eps) and gives alpha(t), sigma(t) for the updates.
- `callback(i, x, x0)` is called after each step with the new state and the step's x0 estimate.

No solver keeps state between calls: the same inputs give the same outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import trange

from cinemamba_sampling.processes import NoiseProcess

Model = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, Tensor, Tensor], None]


def _check(x: Tensor, timesteps: Tensor) -> list[float]:
    if timesteps.ndim != 1 or timesteps.numel() < 2:
        raise ValueError(
            f"timesteps must be a 1-D grid of >= 2 times, got shape {tuple(timesteps.shape)}"
        )
    return [float(v) for v in timesteps.double().cpu()]


def _path(process: NoiseProcess, ts: list[float]) -> list[tuple[float, float]]:
    """(alpha, sigma) at every grid time, computed once per solve."""
    alpha, sigma = process.alpha_sigma(torch.tensor(ts, dtype=torch.float64))
    return list(zip(alpha.tolist(), sigma.tolist(), strict=True))


def _evaluate(
    model: Model, process: NoiseProcess, x: Tensor, t: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Network output and the implied (x0, eps) at a shared time `t`."""
    # float32 times for the network (bf16 would round 0.999 to 1), float64 for float64 inputs
    t_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=t_dtype)
    out = model(x, t_vec)
    if out.shape != x.shape:
        raise ValueError(f"model returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
    x0, eps = process.predict(out, x, t_vec.double())
    return out, x0, eps


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _require_velocity(process: NoiseProcess, name: str) -> None:
    if process.prediction != "velocity":
        raise ValueError(
            f"solver {name!r} integrates a velocity field and needs the flow process; for ddpm use ddim, ddpm or dpmpp_2m"
        )


@torch.no_grad()
def sample_euler(
    model, x, timesteps, *, process, generator=None, callback=None, progress=False
) -> Tensor:
    """Explicit Euler on the flow ODE dx/dt = v(x, t)."""
    _require_velocity(process, "euler")
    ts = _check(x, timesteps)
    for i in trange(len(ts) - 1, disable=not progress, desc="euler"):
        v, x0, _ = _evaluate(model, process, x, ts[i])
        x = x + (ts[i + 1] - ts[i]) * v
        if callback is not None:
            callback(i, x, x0)
    return x


@torch.no_grad()
def sample_heun(
    model, x, timesteps, *, process, generator=None, callback=None, progress=False
) -> Tensor:
    """Heun's second-order method on the flow ODE; the last step into t = 0 is Euler (as in EDM)."""
    _require_velocity(process, "heun")
    ts = _check(x, timesteps)
    for i in trange(len(ts) - 1, disable=not progress, desc="heun"):
        dt = ts[i + 1] - ts[i]
        v, x0, _ = _evaluate(model, process, x, ts[i])
        x_euler = x + dt * v
        if ts[i + 1] == 0:
            x = x_euler
        else:
            v_next, _, _ = _evaluate(model, process, x_euler, ts[i + 1])
            x = x + dt * (v + v_next) / 2
        if callback is not None:
            callback(i, x, x0)
    return x


def _ddim_step(
    x0: Tensor,
    eps: Tensor,
    now: tuple[float, float],
    nxt: tuple[float, float],
    eta: float,
    generator,
) -> Tensor:
    """One DDIM step between (alpha, sigma) pairs on any Gaussian path (Song et al. 2021, eq. 12)."""
    (a_t, s_t), (a_s, s_s) = now, nxt
    var = 0.0
    if eta > 0 and 0 < s_s < s_t:  # noise is only added going towards t = 0
        # Posterior variance of q(x_s | x_t, x0): sigma_{t|s}^2 sigma_s^2 / sigma_t^2.
        var = eta**2 * (s_t**2 - (a_t / a_s) ** 2 * s_s**2) * s_s**2 / s_t**2
    x = a_s * x0 + math.sqrt(max(s_s**2 - var, 0.0)) * eps
    if var > 0:
        x = x + math.sqrt(var) * _noise(x, generator)
    return x


def make_ddim(eta: float) -> Callable[..., Tensor]:
    """A DDIM solver with stochasticity `eta` (0 = deterministic, 1 = DDPM posterior)."""
    if not 0 <= eta <= 1:
        raise ValueError(f"ddim eta must be in [0, 1], got {eta}")

    @torch.no_grad()
    def sample_ddim(
        model, x, timesteps, *, process, generator=None, callback=None, progress=False
    ) -> Tensor:
        """DDIM (eta fixed by `make_ddim`); eta = 0 is deterministic and invertible."""
        ts = _check(x, timesteps)
        path = _path(process, ts)
        for i in trange(len(ts) - 1, disable=not progress, desc="ddim"):
            _, x0, eps = _evaluate(model, process, x, ts[i])
            x = _ddim_step(x0, eps, path[i], path[i + 1], eta, generator)
            if callback is not None:
                callback(i, x, x0)
        return x

    return sample_ddim


sample_ddim = make_ddim(0.0)


@torch.no_grad()
def sample_ddpm(
    model, x, timesteps, *, process, generator=None, callback=None, progress=False
) -> Tensor:
    """Ancestral sampling from the DDPM posterior q(x_s | x_t, x0_hat) (Ho et al. 2020, eq. 7)."""
    ts = _check(x, timesteps)
    if any(b >= a for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError("ddpm needs a decreasing timestep grid")
    path = _path(process, ts)
    for i in trange(len(ts) - 1, disable=not progress, desc="ddpm"):
        _, x0, _ = _evaluate(model, process, x, ts[i])
        (a_t, s_t), (a_s, s_s) = path[i], path[i + 1]
        a_ts = a_t / a_s  # alpha_{t|s}
        var_ts = s_t**2 - a_ts**2 * s_s**2  # sigma_{t|s}^2
        mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * var_ts / s_t**2) * x0
        var = var_ts * s_s**2 / s_t**2
        x = mean + math.sqrt(var) * _noise(x, generator) if var > 0 else mean
        if callback is not None:
            callback(i, x, x0)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model, x, timesteps, *, process, generator=None, callback=None, progress=False
) -> Tensor:
    """DPM-Solver++(2M), multistep second order in log-SNR (Lu et al. 2022, alg. 2).

    First order on the first step (no history, and alpha = 0 at t = 1 makes lambda = -inf) and
    on the last step into t = 0 (sigma = 0), where the update is simply x = x0.
    """
    ts = _check(x, timesteps)
    path = _path(process, ts)
    x0_prev, h_prev = None, None
    for i in trange(len(ts) - 1, disable=not progress, desc="dpmpp_2m"):
        _, x0, _ = _evaluate(model, process, x, ts[i])
        (a_t, s_t), (a_s, s_s) = path[i], path[i + 1]
        if s_s == 0:
            x = x0
            h = math.inf
        else:
            h = math.log(a_s / s_s) - (math.log(a_t / s_t) if a_t > 0 else -math.inf)
            # exp(-h) = (alpha_t sigma_s) / (alpha_s sigma_t), finite even when alpha_t = 0.
            phi = 1 - (a_t * s_s) / (a_s * s_t)
            d = x0
            if x0_prev is not None and math.isfinite(h_prev):
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (s_s / s_t) * x + a_s * phi * d
        x0_prev, h_prev = x0, h
        if callback is not None:
            callback(i, x, x0)
    return x


SOLVERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "dpmpp_2m": sample_dpmpp_2m,
}
DEFAULT_SOLVER = {"flow": "euler", "ddpm": "dpmpp_2m"}


def get_solver(name: str, *, eta: float = 0.0) -> Callable[..., Tensor]:
    """The solver called `name` (`eta` only applies to ddim)."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; valid: {', '.join(SOLVERS)}")
    if name == "ddim":
        return make_ddim(eta)
    return SOLVERS[name]
