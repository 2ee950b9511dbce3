"""Write benchmark JSON into the README between `<!-- bench:NAME -->` markers.

`python -m services.bench.readme` renders every known bench file; the README's figures
are never typed by hand, and a test fails when the README and the JSON disagree.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

BENCH_FILES = {"engines": Path("docs/bench/engines.json")}


def engines_table(result: dict[str, Any]) -> str:
    """The engines bench as a markdown table."""
    rows = [
        f"Measured {result['date']} on {result['machine']} ({result['python']}), commit "
        f"{result['commit']}, broker on the same machine.",
        "",
        "| engine | anchor (requests/s) | kbatch (requests/s) | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    for name, figures in result["engines"].items():
        anchors = ", ".join(f"{a:,.1f}" for a in figures["anchor_requests_per_s"])
        measured = ", ".join(f"{m:,.1f}" for m in figures["kbatch_requests_per_s"])
        met = "met" if figures["ratio"] >= figures["goal"] else "**not met**"
        rows.append(
            f"| `{name}` ({figures['requests']} requests, max_tokens {figures['max_tokens']}; "
            f"anchor: {figures['anchor']}) | {anchors} | {measured} | "
            f"**{figures['ratio']:.3f}** | ≥ {figures['goal']} ({met}) |"
        )
    return "\n".join(rows)


RENDERERS = {"engines": engines_table}


def block(name: str, text: str) -> str:
    """The README's generated text for bench `name`, markers excluded."""
    match = re.search(rf"<!-- bench:{name} -->\n(.*?)<!-- /bench:{name} -->", text, re.DOTALL)
    if match is None:
        raise ValueError(f"the README has no <!-- bench:{name} --> block")
    return match.group(1)


def rendered(name: str, root: Path) -> str:
    result = json.loads((root / BENCH_FILES[name]).read_text(encoding="utf-8"))
    return RENDERERS[name](result) + "\n"


def update(readme: Path, root: Path) -> None:
    text = readme.read_text(encoding="utf-8")
    for name in BENCH_FILES:
        old = block(name, text)
        text = text.replace(
            f"<!-- bench:{name} -->\n{old}<!-- /bench:{name} -->",
            f"<!-- bench:{name} -->\n{rendered(name, root)}<!-- /bench:{name} -->",
        )
    readme.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path()
    update(root / "README.md", root)
