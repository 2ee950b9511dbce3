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

BENCH_FILES = {
    "engines": Path("docs/bench/engines.json"),
    "pipeline": Path("docs/bench/pipeline.json"),
    "ingest": Path("docs/bench/ingest.json"),
}


def _measured(result: dict[str, Any]) -> str:
    return (
        f"Measured {result['date']} on {result['machine']} ({result['python']}), commit "
        f"{result['commit']}, broker on the same machine."
    )


def _goal(ratio: float, goal: float) -> str:
    return f"≥ {goal} ({'met' if ratio >= goal else '**not met**'})"


def engines_table(result: dict[str, Any]) -> str:
    """The engines bench as a markdown table."""
    rows = [
        _measured(result),
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


def pipeline_table(result: dict[str, Any]) -> str:
    """The pipeline bench: one worker, 8 partitions, against ideals and a plain loop."""
    engines, n = result["engines"], result["requests"]
    rows = [
        f"{_measured(result)} One worker owning 8 partitions; {result['statistic']}.",
        "",
        "| measurement | ideal or anchor (requests/s) | kbatch (requests/s) | ratio | goal |",
        "|---|---|---|---|---|",
        f"| simulated engine, {engines['simulated']}, {engines['tokens']} tokens "
        f"({n['simulated']:,} requests) | ideal {result['ideal_rps']:,.0f} | "
        f"{result['worker_rps']:,.1f} | **{result['efficiency']:.3f}** | "
        f"{_goal(result['efficiency'], 0.97)} |",
        f"| GPU-class simulated engine, {engines['fast']}, {engines['tokens']} tokens "
        f"({n['fast']:,} requests) | ideal {result['fast_ideal_rps']:,.0f} | "
        f"{result['fast_worker_rps']:,.1f} | **{result['fast_efficiency']:.3f}** | "
        f"{_goal(result['fast_efficiency'], 0.95)} |",
        f"| message path: zero-cost engine ({n['zero_cost']:,} requests) against a plain "
        f"confluent-kafka exactly-once loop | {result['plain_eos_rps']:,.0f} | "
        f"{result['zero_cost_rps']:,.1f} | **{result['zero_cost_over_plain_eos']:.3f}** | "
        f"{_goal(result['zero_cost_over_plain_eos'], 0.25)} |",
        f"| transactions on against off, zero-cost engine | "
        f"{result['zero_cost_transactions_off_rps']:,.1f} (off) | "
        f"{result['zero_cost_rps']:,.1f} (on) | **{result['txn_on_off_zero_cost']:.3f}** | "
        f"{_goal(result['txn_on_off_zero_cost'], 0.9)} |",
    ]
    return "\n".join(rows)


def ingest_table(result: dict[str, Any]) -> str:
    """The ingest bench: validated publishing over HTTP against raw produce."""
    return "\n".join(
        [
            f"{_measured(result)} {result['requests']:,} chat lines each way.",
            "",
            "| path | requests/s |",
            "|---|---|",
            f"| {result['anchor']} | {result['anchor_requests_per_s']:,.0f} |",
            f"| {result['ingest']} | {result['ingest_requests_per_s']:,.0f} |",
            f"| ratio | **{result['ratio']:.3f}** |",
        ]
    )


RENDERERS = {"engines": engines_table, "pipeline": pipeline_table, "ingest": ingest_table}


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
