"""Write benchmark JSON into the README between `<!-- bench:NAME -->` markers.

`python -m services.bench.readme` renders every known bench file; the README's figures
are never typed by hand, and a test fails when the README and the JSON disagree.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BENCH_FILES = {
    "engines": Path("docs/bench/engines.json"),
    "pipeline": Path("docs/bench/pipeline.json"),
    "ingest": Path("docs/bench/ingest.json"),
    "scale": Path("docs/bench/scale.json"),
    "chaos": Path("docs/bench/chaos.json"),
    "failover": Path("docs/bench/failover.json"),
    "priority": Path("docs/bench/priority.json"),
    "models": Path("docs/bench/models.json"),
    "prefix": Path("docs/bench/prefix.json"),
}


def _measured(result: dict[str, Any]) -> str:
    return (
        f"Measured {result['date']} on {result['machine']} ({result['python']}), commit "
        f"{result['commit']}, broker on the same machine."
    )


def _table(columns: list[str], rows: list[list[object]]) -> list[str]:
    """A markdown table's lines."""
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


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


SCALING_COLUMNS = ["workers", "requests/s (steady)", "per worker", "against 1 worker x N"]
SCALING_COLUMNS += ["ideal", "of ideal"]


def scale_table(result: dict[str, Any]) -> str:
    """The 200K-request job (memory, latency per lane), then 1/2/4 workers."""
    job, model, scaling = result["job"], result["cost_model"], result["scaling"]
    lanes = job["results_by_priority"]
    rss = job["rss_mib"]
    services = [name for name in rss if name != "kafka"]
    rows = [
        f"{_measured(result)} Two simulated workers ({model['max_num_seqs']} seqs, "
        f"{model['step_ms']:g} ms/step, max_tokens from {min(model['max_tokens'])} to "
        f"{max(model['max_tokens'])}).",
        "",
        "| job | value |",
        "|---|---|",
        f"| requests ({' / '.join(lanes)}) | {job['requests']:,} "
        f"({' / '.join(f'{n:,}' for n in lanes.values())}) |",
        f"| lines in the output files | {sum(job['output_file_lines'].values()):,} "
        f"(batches: {', '.join(sorted(set(job['batch_states'].values())))}) |",
        f"| wall time, first upload to last batch completed | {job['wall_s']} s |",
        f"| all requests published (validated, acknowledged) after | "
        f"{job['all_published_after_s']} s (**{job['requests_per_s_in']:,} requests/s in**) |",
        f"| requests/s out, steady state | **{job['requests_per_s_out']:,}** (ideal "
        f"{job['ideal_requests_per_s']:,}: efficiency **{job['efficiency']:.3f}**) |",
        f"| peak backlog in Kafka | {job['peak_backlog']:,} |",
        f"| RSS first / peak / last MiB: {', '.join(services)} | "
        + ", ".join(f"{rss[s]['first']}/{rss[s]['peak']}/{rss[s]['last']}" for s in services)
        + " |",
    ]
    if "kafka" in rss:
        broker = rss["kafka"]
        rows.append(
            f"| RSS of the broker (JVM, 1 GiB heap cap) | "
            f"{broker['first']} / {broker['peak']} / {broker['last']} |"
        )
    rows += [
        "",
        "| priority | latency s, acceptance to result: p50 / p95 / p99 / max |",
        "|---|---|",
    ]
    for lane, cuts in job["latency_s"].items():
        rows.append(f"| {lane} | {cuts['p50']} / {cuts['p95']} / {cuts['p99']} / {cuts['max']} |")
    rows += [
        "",
        f"Scaling: {scaling['requests']:,} requests published straight to the requests topic, "
        f"{scaling['partitions']} partitions, {scaling['step_ms']:g} ms/step.",
        "",
        *_table(
            SCALING_COLUMNS,
            [
                [
                    workers,
                    f"{figures['requests_per_s']:,}",
                    f"{figures['per_worker']:,}",
                    figures["vs_linear"],
                    f"{figures['ideal']:,}",
                    f"{figures['requests_per_s'] / figures['ideal']:.2f}",
                ]
                for workers, figures in scaling["workers"].items()
            ],
        ),
    ]
    return "\n".join(rows)


def chaos_table(result: dict[str, Any]) -> str:
    """Each fault alone on fresh jobs: what was lost, duplicated, miscounted; recovery."""
    columns = ["fault", "runs", "requests", "lost", "duplicated", "count wrong"]
    columns += ["failed checks", "recovery s (median / max)"]
    rows: list[list[object]] = [
        [
            name,
            tally["runs"],
            f"{tally['requests']:,}",
            tally["lost"],
            tally["duplicated"],
            tally["miscounted"],
            len(tally["failed_checks"]),
            f"{tally['recovery_median_s']} / {tally['recovery_max_s']}"
            if tally["recovery_s"]
            else "—",
        ]
        for name, tally in result["scenarios"].items()
    ]
    intro = (
        f"{_measured(result)} {result['requests_per_run']:,}-request jobs, "
        f"{result['workers']} workers, heartbeat timeout {result['heartbeat_timeout_s']} s."
    )
    return "\n".join([intro, "", *_table(columns, rows)])


def failover_table(result: dict[str, Any]) -> str:
    """Seconds from a worker stopped to its partitions owned by others."""
    rows: list[list[object]] = [
        [how, len(f["seconds"]), f["min_s"], f["median_s"], f["max_s"]]
        for how, f in result["stopped_by"].items()
    ]
    intro = (
        f"{_measured(result)} Heartbeats every {result['heartbeat_interval_s']:g} s, "
        f"timeout {result['heartbeat_timeout_s']:g} s."
    )
    columns = ["worker stopped by", "rounds", "min s", "median s", "max s"]
    return "\n".join([intro, "", *_table(columns, rows)])


def _span(values: Iterable[float]) -> tuple[float, float]:
    every = list(values)
    return min(every), max(every)


def priority_table(result: dict[str, Any]) -> str:
    """A high job beside a saturating low one, against it alone; the low lane's share."""
    goal = result["goal_high_ratio"]
    rows: list[list[object]] = []
    for engine, e in result["engines"].items():
        ratio = e["median_high_ratio"]
        met = "met" if ratio <= goal else "**not met**"
        rows.append(
            [
                engine,
                len(e["runs"]),
                statistics.median(r["high_alone_s"] for r in e["runs"]),
                statistics.median(r["high_beside_low_s"] for r in e["runs"]),
                f"{ratio:.2f} (≤ {goal}: {met})",
                "{:.2f} to {:.2f}".format(*_span(r["high_ratio"] for r in e["runs"])),
                e["median_low_alone_per_s"],
                e["median_low_beside_high_per_s"],
                f"{e['median_low_share']:.3f}",
            ]
        )
    intro = (
        f"{_measured(result)} One worker holds a high and a low partition; a high job of "
        f"{result['high_requests']:,} requests (published in transactions) alone, then "
        f"beside a low job of {result['low_requests']:,} that saturates the worker. "
        f"`KBATCH_INFERENCE__LOWER_LANE_SHARE` = {result['lower_lane_share']}."
    )
    columns = [
        "engine",
        "runs",
        "high alone s",
        "high beside low s",
        "ratio (median)",
        "ratio, each run",
        "low alone req/s",
        "low beside high req/s",
        "low share of records",
    ]
    return "\n".join([intro, "", *_table(columns, rows)])


def models_table(result: dict[str, Any]) -> str:
    routed, passes = result["routing"], result["assignment"]
    ratio, goal = routed["ratio"], routed["goal_ratio"]
    met = "met" if ratio >= goal else "**not met**"
    routing_rows: list[list[object]] = [
        [
            routed["requests"],
            len(routed["one_model_per_s"]),
            statistics.median(routed["one_model_per_s"]),
            statistics.median(routed["four_models_per_s"]),
            f"{ratio:.3f} (≥ {goal}: {met})",
        ]
    ]
    pass_goal = passes["goal_ms"]
    pass_rows: list[list[object]] = [
        [
            what,
            f"{passes[key]} ({'met' if passes[key] < pass_goal else '**not met**'})",
        ]
        for what, key in (
            ("from nothing", "from_nothing_ms"),
            ("every partition's backlog changed", "every_backlog_changed_ms"),
            ("nothing changed", "nothing_changed_ms"),
        )
    ]
    intro = (
        f"{_measured(result)} Routing: one job on two simulated workers, each serving "
        "four models and holding half of each model's normal lane, for one model and "
        "split over four (alternating runs, medians)."
    )
    fleet = (
        f"Assignment: one pass for {passes['models']:,} models x "
        f"{passes['partitions'] // passes['models']} partitions ({passes['partitions']:,}) "
        f"over {passes['workers']} workers (each model on two workers, each worker serving "
        f"four, capacity 16; half the partitions with backlog), median of five; goal < "
        f"{pass_goal:.0f} ms."
    )
    return "\n".join(
        [
            intro,
            "",
            *_table(["requests", "runs", "1 model req/s", "4 models req/s", "ratio"], routing_rows),
            "",
            fleet,
            "",
            *_table(["pass", "ms"], pass_rows),
        ]
    )


def prefix_table(result: dict[str, Any]) -> str:
    job, pipe, direct = result["job"], result["pipeline"], result["direct"]
    speedup, goal = pipe["speedup"], result["goal_speedup"]
    share_goal = result["goal_cached_share"]
    on_share = statistics.median(pipe["affinity_cached_share"])

    def runs(values: list[float]) -> str:
        return ", ".join(f"{v:g}" for v in values)

    intro = (
        f"{_measured(result)} One job of {job['system_prompts']} system prompts of "
        f"{job['system_chars']:,} characters x {job['questions_each']} questions, shuffled, "
        f"max_tokens {job['max_tokens']}, through ingest's Batch API to "
        f"{job['workers']} `llamacpp` workers (one instance, one thread each; the tiny model "
        f"with a {job['context']:,}-token context), affinity on and off alternating, each run "
        "with prompts of its own. Anchor: llama-cpp-python called directly (one instance, "
        "one thread) on the same requests, grouped by prompt and interleaved: what ordering "
        "alone can give on this machine."
    )
    rows: list[list[object]] = [
        [
            "kbatch, affinity on / off",
            runs(pipe["affinity_per_s"]),
            runs(pipe["no_affinity_per_s"]),
            f"{speedup:.2f} ({_goal(speedup, goal)})",
        ],
        [
            "llama.cpp direct, grouped / interleaved",
            direct["grouped_per_s"],
            direct["interleaved_per_s"],
            f"{direct['speedup']:.2f}",
        ],
    ]
    shares = (
        f"Prompt tokens served from the cache: {runs(pipe['affinity_cached_share'])} with "
        f"affinity ({_goal(on_share, share_goal)}), "
        f"{runs(pipe['no_affinity_cached_share'])} without. kbatch with affinity reached "
        f"{speedup / direct['speedup']:.2f} of the direct bound's speed-up."
    )
    columns = ["run", "on / grouped req/s", "off / interleaved req/s", "speed-up"]
    return "\n".join([intro, "", *_table(columns, rows), "", shares])


RENDERERS = {
    "engines": engines_table,
    "pipeline": pipeline_table,
    "ingest": ingest_table,
    "scale": scale_table,
    "chaos": chaos_table,
    "failover": failover_table,
    "priority": priority_table,
    "models": models_table,
    "prefix": prefix_table,
}


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
