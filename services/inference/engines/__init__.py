"""Build the engine a worker was told to use; never a silent substitute.

Each engine is one module here; its third-party imports stay inside it, behind its
optional extra, so a missing extra fails at start with one line naming the extra.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from services.errors import ConfigurationError
from services.inference.engines.base import Engine
from services.inference.settings import InferenceOptions

# engine name -> (module, the pip extra that brings its dependencies)
ENGINES: dict[str, tuple[str, str | None]] = {
    "simulated": ("services.inference.engines.simulated", None),
    "llamacpp": ("services.inference.engines.llamacpp", "llamacpp"),
    "openai": ("services.inference.engines.openai_compat", "openai"),
    "vllm": ("services.inference.engines.vllm", "vllm"),
}


def build_engine(options: InferenceOptions) -> Engine:
    """The engine `options.engine` names, built from its own options."""
    if options.engine is None:
        raise ConfigurationError(
            "KBATCH_INFERENCE__ENGINE must be set: vllm (GPU), llamacpp (GGUF on CPU or a "
            "small GPU), openai (an OpenAI-compatible server) or simulated (a labelled cost "
            "model); kbatch never picks one for you"
        )
    module_name, extra = ENGINES[options.engine]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {options.engine} engine needs `pip install kbatch[{extra}]` ({exc})"
        ) from exc
    factory: Callable[[InferenceOptions], Engine] = module.from_options
    return factory(options)
