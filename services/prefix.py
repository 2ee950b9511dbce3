"""Prefix affinity (pure): which requests share a prompt prefix, and where they go.

Engines cache the KV of a prompt's prefix (vLLM's prefix caching, llama.cpp's
previous prompt), but only requests that reach the same engine close together
share it. A request's prefix key names what such requests share: its model and the
leading system and developer messages of a chat (a Responses line's `instructions`
arrive as one), or the first characters of a completion prompt. Ingest computes it
once, places by it (`bounded_partition`) and carries it in a record header, so a
worker can hand a prefix's requests to its engine back to back.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

PREFIX_HEADER = "kbatch-prefix"
INSTRUCTION_ROLES = frozenset({"system", "developer"})
DEFAULT_COMPLETION_PREFIX_CHARS = 1000
# KubeAI's and SGLang's prefix_hash policy: a key may load a partition to 1.25x the mean.
DEFAULT_LOAD_FACTOR = 0.25


def shared_prefix(body: Mapping[str, Any], completion_chars: int) -> object | None:
    """The part of a request body that other requests may share, or None (embeddings,
    a chat with no leading instructions, an empty prompt)."""
    messages = body.get("messages")
    if messages:
        leading = []
        for message in messages:
            if message.get("role") not in INSTRUCTION_ROLES:
                break
            leading.append([message.get("role"), message.get("content")])
        return leading or None
    prompt = body.get("prompt")
    if prompt:
        return str(prompt)[:completion_chars]
    return None


def prefix_key(
    model: str, body: Mapping[str, Any], completion_chars: int = DEFAULT_COMPLETION_PREFIX_CHARS
) -> str | None:
    """A short, stable digest of the model and the shared prefix; None when there is none."""
    shared = shared_prefix(body, completion_chars)
    if shared is None:
        return None
    canonical = json.dumps([model, shared], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def ring_start(key: str, partitions: int) -> int:
    """Where a key's ring walk begins among a lane's partitions."""
    return int(key, 16) % partitions


def load_bound(loads: Sequence[int], load_factor: float) -> int:
    """The most requests a key's own partition may hold once one more lands: (1 + ε)
    times the mean, plus one (so a key's first requests into an empty lane stay put)."""
    mean_after = (sum(loads) + 1) / len(loads)
    return math.floor((1 + load_factor) * mean_after) + 1


def spill_bound(loads: Sequence[int]) -> int:
    """The most a partition may hold once it takes another key's spilled request: the
    mean, rounded up (the least loaded partition always fits)."""
    return math.ceil((sum(loads) + 1) / len(loads))


def bounded_partition(key: str, loads: Sequence[int], load_factor: float) -> int:
    """Consistent hashing with bounded loads over a lane's partitions (indexes into
    `loads`): the key's own partition unless that would take it past the bound, else
    the next partition on the ring that is at most at the mean. So a key stays on one
    partition (one worker, one cache) while it is not a hot spot; a hot key's overflow
    goes to lightly loaded partitions, not onto the next key's partition (no cascade);
    and a job whose every line shares one key still reaches every partition."""
    if not loads:
        raise ValueError("a lane has at least one partition")
    home = ring_start(key, len(loads))
    if loads[home] + 1 <= load_bound(loads, load_factor):
        return home
    spill = spill_bound(loads)
    for step in range(1, len(loads)):
        index = (home + step) % len(loads)
        if loads[index] + 1 <= spill:
            return index
    raise AssertionError("unreachable: the least loaded partition is always at most the mean")
