"""OpenAI batch output lines from kbatch records (pure).

Output line: {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}.
`body` is the endpoint's usual object; `system_fingerprint` and `kbatch.engine` name
the engine that produced it, so simulated output can never pass for a model's.
"""

from __future__ import annotations

from typing import Any


def _usage(result: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's usage object; cached prompt tokens as its prompt_tokens_details when the
    engine reported them."""
    usage = result["usage"]
    shown: dict[str, Any] = {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
    }
    if usage.get("cached_tokens") is not None:
        shown["prompt_tokens_details"] = {"cached_tokens": usage["cached_tokens"]}
    return shown


def response_body(result: dict[str, Any]) -> dict[str, Any]:
    """The endpoint's response object for a successful result."""
    output = result["output"] or {}
    created = result["completed_at_ms"] // 1000
    common = {
        "model": result["model"],
        "created": created,
        "system_fingerprint": f"kbatch-{result['engine']}",
        "kbatch": {"engine": result["engine"], "worker_id": result["worker_id"]},
    }
    if result["endpoint"] == "/v1/embeddings":
        usage = _usage(result)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": output.get("embedding")}],
            "usage": {
                "prompt_tokens": usage["prompt_tokens"],
                "total_tokens": usage["total_tokens"],
            },
            **common,
        }
    if result["endpoint"] == "/v1/responses":
        return _response_object(result, output.get("text"), output.get("finish_reason"), common)
    if result["endpoint"] == "/v1/completions":
        choice: dict[str, Any] = {
            "index": 0,
            "text": output.get("text"),
            "finish_reason": output.get("finish_reason"),
            "logprobs": None,
        }
        return {
            "id": f"cmpl-{result['request_id']}",
            "object": "text_completion",
            "choices": [choice],
            "usage": _usage(result),
            **common,
        }
    message = {"role": "assistant", "content": output.get("text")}
    return {
        "id": f"chatcmpl-{result['request_id']}",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": output.get("finish_reason")}],
        "usage": _usage(result),
        **common,
    }


def _response_object(
    result: dict[str, Any], text: str | None, finish_reason: str | None, common: dict[str, Any]
) -> dict[str, Any]:
    """A Responses API `response` object: one assistant message of output text."""
    usage = _usage(result)
    cut_short = finish_reason == "length"
    message = {
        "type": "message",
        "id": f"msg_{result['request_id']}",
        "status": "incomplete" if cut_short else "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text or "", "annotations": []}],
    }
    body = {k: v for k, v in common.items() if k != "created"}
    return {
        "id": f"resp_{result['request_id']}",
        "object": "response",
        "created_at": common["created"],
        "status": "incomplete" if cut_short else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut_short else None,
        "error": None,
        "output": [message],
        "parallel_tool_calls": False,
        "tool_choice": "none",
        "tools": [],
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {
                "cached_tokens": usage.get("prompt_tokens_details", {}).get("cached_tokens", 0),
                "cache_write_tokens": 0,
            },
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"],
        },
        **body,
    }


def result_line(result: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """(is_error, line) for a results-topic record."""
    line_id = f"batch_req_{result['request_id']}"
    error = result["error"]
    if error is not None:
        return True, {
            "id": line_id,
            "custom_id": result["custom_id"],
            "response": {"status_code": 400, "request_id": result["request_id"], "body": None},
            "error": {"code": error["code"], "message": error["message"]},
        }
    return False, {
        "id": line_id,
        "custom_id": result["custom_id"],
        "response": {
            "status_code": 200,
            "request_id": result["request_id"],
            "body": response_body(result),
        },
        "error": None,
    }


def dead_letter_line(dead: dict[str, Any]) -> dict[str, Any]:
    """An error-file line for a DLQ record (the request never produced a response)."""
    request_id = dead["request_id"] or f"{dead['original_partition']}-{dead['original_offset']}"
    return {
        "id": f"batch_req_{request_id}",
        "custom_id": dead["custom_id"],
        "response": None,
        "error": {
            "code": dead["error_class"],
            "message": f"{dead['stage']}: {dead['error_message']} (attempt {dead['attempt']})",
        },
    }
