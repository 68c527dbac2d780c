"""cinemamba_sampling: noise processes, stateless solvers, guidance and the long-video pipeline."""

from cinemamba_sampling.guidance import ClassifierFreeGuidance, Conditioned, guided
from cinemamba_sampling.processes import (
    DDPM,
    PROCESSES,
    FlowMatching,
    NoiseProcess,
    ProcessConfig,
    build_process,
    expand_t,
)
from cinemamba_sampling.solvers import (
    DEFAULT_SOLVER,
    SOLVERS,
    get_solver,
    make_ddim,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
)

__all__ = [
    "DDPM",
    "DEFAULT_SOLVER",
    "PROCESSES",
    "SOLVERS",
    "ClassifierFreeGuidance",
    "Conditioned",
    "FlowMatching",
    "NoiseProcess",
    "ProcessConfig",
    "build_process",
    "expand_t",
    "get_solver",
    "guided",
    "make_ddim",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
]
