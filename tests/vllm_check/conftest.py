"""The vLLM adapter check runs only where vLLM is installed (`make test-vllm`).

In the main test venv vLLM is absent, so the folder is not collected at all: nothing
is imported from it and nothing is reported as skipped.
"""

from __future__ import annotations

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("vllm") is not None else ["test_*.py"]
