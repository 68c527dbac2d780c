"""cinemamba_sampling: noise processes, stateless solvers, guidance and the long-video pipeline."""

from cinemamba_sampling.guidance import ClassifierFreeGuidance, Conditioned, WithContext, guided
from cinemamba_sampling.media import contact_sheet, save_png, to_uint8
from cinemamba_sampling.memory import peak_memory
from cinemamba_sampling.pipeline import (
    MODES,
    PipelineConfig,
    VideoPipeline,
    rolling_windows,
    stream_chunks,
)
from cinemamba_sampling.processes import (
    DDPM,
    PROCESSES,
    FlowMatching,
    NoiseProcess,
    ProcessConfig,
    build_process,
    expand_t,
)
from cinemamba_sampling.saved import (
    FORMAT,
    TRAINED_PROCESS_FIELDS,
    SamplingDefaults,
    TrainingClip,
    check_process,
    is_saved_pipeline,
    read_pipeline_json,
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
    "FORMAT",
    "TRAINED_PROCESS_FIELDS",
    "SamplingDefaults",
    "TrainingClip",
    "check_process",
    "is_saved_pipeline",
    "read_pipeline_json",
    "DDPM",
    "DEFAULT_SOLVER",
    "MODES",
    "PROCESSES",
    "SOLVERS",
    "VideoPipeline",
    "WithContext",
    "ClassifierFreeGuidance",
    "Conditioned",
    "FlowMatching",
    "NoiseProcess",
    "PipelineConfig",
    "ProcessConfig",
    "build_process",
    "contact_sheet",
    "expand_t",
    "get_solver",
    "guided",
    "make_ddim",
    "peak_memory",
    "rolling_windows",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
    "save_png",
    "stream_chunks",
    "to_uint8",
]
