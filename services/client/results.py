"""`kbatch results JOB`: a job's output straight from the results topic (read_committed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from services.codec import results_codec
from services.collector.openai_format import result_line
from services.kafka.compacted import read_to_end


def job_result_lines(kafka_config: dict[str, Any], topic: str, job_id: str) -> Iterator[str]:
    """OpenAI batch output lines of one job's committed results, in topic order."""
    wanted = job_id.encode()
    for message in read_to_end(kafka_config, topic, "kbatch-results-cli"):
        if message.key() == wanted:  # results are keyed by job
            _, line = result_line(results_codec().decode(message.value()))  # Avro or JSON
            yield json.dumps(line, separators=(",", ":"))
