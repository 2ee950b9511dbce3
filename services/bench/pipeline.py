"""`kbatch bench pipeline`: worker throughput against the simulated engine's closed-form
ideal, and the worker's message-path ceiling with a zero-cost engine.

Steady-state rate: results whose completion falls in the middle 80% of the run's span,
divided by that window (start-up and tail excluded). Prints JSON.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from services.bench.measure import OutOption, bench_broker, emit, run_facts, steady_rate
from services.harness.kafka import unique_topics
from services.harness.pipeline import outcomes, publish, request_record, start_worker
from services.inference.engines.simulated import ideal_requests_per_s
from services.inference.settings import SimulatedEngineOptions

SIM = SimulatedEngineOptions(step_s=0.02, max_num_seqs=64, tokens_per_step=1)
MAX_TOKENS = 16


def run(
    bootstrap: str, out: Path, n: int, max_tokens: int, engine_env: dict[str, str], tag: str
) -> float:
    """One worker owning all 8 partitions; steady-state rate of committed results."""
    topics = unique_topics(bootstrap, high_partitions=2, normal_partitions=4, low_partitions=2)
    publish(bootstrap, topics, [request_record(tag, i, max_tokens=max_tokens) for i in range(n)])
    worker, _ = start_worker(
        bootstrap, topics, out, f"bench-{tag}", "0-7", LOG_LEVEL="WARNING", **engine_env
    )
    try:
        found = outcomes(bootstrap, topics, expect=n, timeout_s=600)
    finally:
        worker.terminate()
    if found.total != n or len(found.results) != n:
        raise RuntimeError(f"{tag}: {len(found.results)} results for {n} requests")
    return steady_rate([r["completed_at_ms"] / 1000 for r in found.results])


def measure(out: Path, scale: float) -> dict[str, Any]:
    ideal = ideal_requests_per_s(SIM, mean_steps=MAX_TOKENS)
    sim_env = {"SIMULATED__STEP_S": str(SIM.step_s), "SIMULATED__MAX_NUM_SEQS": "64"}
    zero_env = {"SIMULATED__STEP_S": "0"}
    off = {"TRANSACTIONS": "false"}
    n_sim, n_zero = int(4000 * scale), int(20000 * scale)
    with bench_broker() as bootstrap:
        started = time.perf_counter()
        sim = run(bootstrap, out, n_sim, MAX_TOKENS, sim_env, "sim")
        sim_off = run(bootstrap, out, n_sim, MAX_TOKENS, {**sim_env, **off}, "sim-off")
        zero = run(bootstrap, out, n_zero, 1, zero_env, "zero")
        zero_off = run(bootstrap, out, n_zero, 1, {**zero_env, **off}, "zero-off")
        wall = time.perf_counter() - started
    return {
        **run_facts(),
        "wall_s": round(wall),
        "simulated": {
            "requests": n_sim,
            "engine": f"{SIM.max_num_seqs} seqs, {MAX_TOKENS} tokens, "
            f"{SIM.step_s * 1000:.0f} ms/step",
            "ideal_requests_per_s": round(ideal, 1),
            "requests_per_s": round(sim, 1),
            "requests_per_s_transactions_off": round(sim_off, 1),
            "efficiency": round(sim / ideal, 3),
            "transactions_on_over_off": round(sim / sim_off, 3),
        },
        "zero_cost": {
            "requests": n_zero,
            "requests_per_s": round(zero, 1),
            "requests_per_s_transactions_off": round(zero_off, 1),
            "transactions_on_over_off": round(zero / zero_off, 3),
        },
    }


def main(
    scale: float = typer.Argument(1.0, help="multiplies the request counts (4,000 and 20,000)"),
    out: Path = OutOption,
) -> None:
    """One worker against the simulated engine's ideal, and with a zero-cost engine; JSON."""
    out.mkdir(parents=True, exist_ok=True)
    emit(measure(out, scale), out / "pipeline.json")


if __name__ == "__main__":
    typer.run(main)
