"""Which dead letters a replay republishes (pure)."""

from __future__ import annotations

from typing import Any

from services.codec import REQUEST, codec
from services.dlq.records import DeadLetter, Filters
from services.dlq.replay import plan
from services.harness.pipeline import request_record

REQUEST_BYTES = codec(REQUEST).encode(request_record("j", 0))


def dead(offset: int, stage: str = "inference", replays: int = 0, **record: Any) -> DeadLetter:
    fields = {
        "original_value": REQUEST_BYTES,
        "stage": stage,
        "job_id": "j",
        "error_class": "InvalidRequestError",
        "failed_at_ms": 1000 + offset,
        **record,
    }
    return DeadLetter("dlq", 0, offset, fields, {"kbatch-replays": str(replays)})


def test_refuses_undecodable_exhausted_and_valueless_and_skips_done_ones() -> None:
    letters = [
        dead(0),
        dead(1, stage="decode"),
        dead(2, replays=3),
        dead(3, original_value=None),
        dead(4, replays=2),
        dead(5),
        dead(6, stage="inference", original_value=b"not a request"),
    ]
    report = plan(letters, already={"dlq:0:5"}, max_replays=3)
    assert [d.offset for d in report.replayed] == [0, 4]
    assert {r.dead.offset: r.reason.split(":")[0] for r in report.refused} == {
        1: "undecodable record",
        2: "replayed 3 times already (max 3)",
        3: "no original value to replay",
        6: "undecodable record",  # its model, so its topic, cannot be read
    }
    assert report.already == 1


def test_filters_match_job_class_and_time() -> None:
    letter = dead(7)
    assert Filters(job="j", error_class="InvalidRequestError", since_ms=1007).match(letter)
    assert not Filters(job="other").match(letter)
    assert not Filters(since_ms=1008).match(letter)
