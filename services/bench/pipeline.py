"""Worker throughput against the simulated engine's closed-form ideal, and the
worker's message-path ceiling with a zero-cost engine.

Run: make bench-pipeline   (or .venv/bin/python -m bench.pipeline)
Steady-state rate: results whose completion falls in the middle 80% of the
run's span, divided by that window (start-up and tail excluded).
"""

from __future__ import annotations

import sys
import time

from bench.common import OUT, broker, machine
from services.bench.measure import steady_rate
from services.harness.kafka import unique_topics
from services.harness.pipeline import outcomes, publish, request_record, start_worker
from services.inference.engines.simulated import ideal_requests_per_s
from services.inference.settings import SimulatedEngineOptions


def run(bootstrap: str, n: int, max_tokens: int, engine_env: dict[str, str], tag: str) -> float:
    topics = unique_topics(bootstrap, high_partitions=2, normal_partitions=4, low_partitions=2)
    publish(bootstrap, topics, [request_record(tag, i, max_tokens=max_tokens) for i in range(n)])
    worker, _ = start_worker(
        bootstrap, topics, OUT, f"bench-{tag}", "0-7", LOG_LEVEL="WARNING", **engine_env
    )
    try:
        found = outcomes(bootstrap, topics, expect=n, timeout_s=600)
    finally:
        worker.terminate()
    assert found.total == n and len(found.results) == n, "bench lost or failed requests"
    return steady_rate([r["completed_at_ms"] / 1000 for r in found.results])


def main() -> None:
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    OUT.mkdir(parents=True, exist_ok=True)
    sim = SimulatedEngineOptions(step_s=0.02, max_num_seqs=64, tokens_per_step=1)
    max_tokens = 16
    ideal = ideal_requests_per_s(sim, mean_steps=max_tokens)
    sim_env = {"SIMULATED__STEP_S": str(sim.step_s), "SIMULATED__MAX_NUM_SEQS": "64"}
    zero_env = {"SIMULATED__STEP_S": "0"}
    off = {"TRANSACTIONS": "false"}
    n_sim, n_zero = int(4000 * scale), int(20000 * scale)
    with broker() as bootstrap:
        started = time.perf_counter()
        measured = run(bootstrap, n_sim, max_tokens, sim_env, "sim")
        measured_off = run(bootstrap, n_sim, max_tokens, {**sim_env, **off}, "sim-off")
        zero = run(bootstrap, n_zero, 1, zero_env, "zero")
        zero_off = run(bootstrap, n_zero, 1, {**zero_env, **off}, "zero-off")
        wall = time.perf_counter() - started
    print(f"machine: {machine()}; bench wall {wall:.0f}s")
    print("| measurement | requests/s |")
    print("|---|---|")
    print(f"| simulated engine ideal (64 seqs, 16 tokens, 20 ms/step) | {ideal:,.0f} |")
    print(f"| worker with simulated engine, transactions (steady state) | {measured:,.0f} |")
    print(f"| efficiency measured / ideal | {measured / ideal:.3f} |")
    print(f"| same, transactions off (at-least-once) | {measured_off:,.0f} |")
    print(f"| transactions on / off, simulated engine | {measured / measured_off:.3f} |")
    print(
        f"| message path, zero-cost engine, transactions (1 worker, 8 partitions) | {zero:,.0f} |"
    )
    print(f"| message path, zero-cost engine, transactions off | {zero_off:,.0f} |")
    print(f"| transactions on / off, zero-cost engine | {zero / zero_off:.3f} |")


if __name__ == "__main__":
    main()
