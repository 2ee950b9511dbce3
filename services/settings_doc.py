"""The configuration reference: every `KBATCH_*` variable, from the settings classes.

`python -m services.settings_doc` prints the README's table; a test checks the
README names every variable, so the two cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from services.inference.settings import InferenceSettings
from services.ingest.settings import IngestSettings
from services.scheduler.settings import SchedulerSettings
from services.settings import CommonSettings
from services.stack.settings import StackSettings

SERVICES: tuple[type[CommonSettings], ...] = (
    CommonSettings,
    IngestSettings,
    SchedulerSettings,
    InferenceSettings,
    StackSettings,
)


def variables(model: type[BaseModel], prefix: str = "KBATCH_") -> Iterator[tuple[str, str, str]]:
    """(variable, default, description) for every leaf field, nested models flattened."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from variables(annotation, f"{prefix}{name.upper()}__")
            continue
        if info.default_factory is not None:
            made = info.get_default(call_default_factory=True, validated_data={})
            default = json.dumps(made) if isinstance(made, dict | list) else "(computed)"
        elif info.default is PydanticUndefined or info.default is None:
            default = ""
        else:
            default = str(info.default)
        yield f"{prefix}{name.upper()}", default, info.description or ""


def all_variables() -> dict[str, tuple[str, str]]:
    seen: dict[str, tuple[str, str]] = {}
    for settings in SERVICES:
        for variable, default, description in variables(settings):
            seen.setdefault(variable, (default, description))
    return seen


def markdown() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for variable, (default, description) in all_variables().items():
        shown = f"`{default}`" if default else ""
        rows.append(f"| `{variable}` | {shown} | {description.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown())
