"""Build the engine a worker was told to use; never a silent substitute."""

from __future__ import annotations

from services.errors import ConfigurationError
from services.inference.engine import Engine
from services.inference.settings import InferenceOptions
from services.inference.simulated import SimulatedEngine


def build_engine(options: InferenceOptions) -> Engine:
    if options.engine is None:
        raise ConfigurationError(
            "KBATCH_INFERENCE__ENGINE must be set: 'vllm' (GPU) or 'simulated' (no GPU, "
            "labelled outputs); kbatch never picks one for you"
        )
    if options.engine == "simulated":
        return SimulatedEngine(options.simulated)
    # Imported only here: vLLM is an optional extra (pip install kbatch[vllm]).
    from services.inference.vllm_engine import VllmEngine

    return VllmEngine(options.model, options.vllm)
