"""A tiny random-weight Llama in GGUF, written deterministically from a seed.

It runs through every step of real inference in llama.cpp (tokenizer, chat
template, prefill, decode, sampling, context limits) on any CPU in milliseconds.
Its answers are gibberish: the weights are random. Nothing is downloaded.

Shape: 2 layers, 64 wide, 4 heads, a 259-token byte-level vocabulary (3 control
tokens and the 256 bytes, so any UTF-8 text tokenizes), context 512 unless asked for
more (long shared prompts: prefix caching).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TINY_MODEL_NAME = "kbatch-tiny"

# Role lines, then the assistant's turn: the same template llama.cpp and
# llama_cpp.server read from the file's tokenizer.chat_template.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinyShape:
    layers: int = 2
    width: int = 64
    heads: int = 4
    feed_forward: int = 128
    context: int = 512


_CONTROL_TOKENS = ("<unk>", "<s>", "</s>")
_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_BYTE = 3, 6


def write_tiny_model(path: Path, seed: int = 0, shape: TinyShape = TinyShape()) -> Path:
    """Write the GGUF file (byte-identical for the same seed and shape); returns `path`."""
    # Imported here: gguf and numpy come with the optional llamacpp extra.
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = [*_CONTROL_TOKENS, *(f"<0x{b:02X}>" for b in range(256))]
    head_dim = shape.width // shape.heads

    def weights(*dims: int) -> np.ndarray[Any, Any]:
        return (rng.standard_normal(dims) * 0.2).astype(np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(TINY_MODEL_NAME)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.width)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.feed_forward)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(vocab))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocab)
    writer.add_token_scores([0.0] * len(vocab))
    writer.add_token_types([_TOKEN_TYPE_CONTROL] * len(_CONTROL_TOKENS) + [_TOKEN_TYPE_BYTE] * 256)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_tensor("token_embd.weight", weights(len(vocab), shape.width))
    for layer in range(shape.layers):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(shape.width, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{block}.{name}.weight", weights(shape.width, shape.width))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(shape.width, np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", weights(shape.feed_forward, shape.width))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(shape.feed_forward, shape.width))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(shape.width, shape.feed_forward))
    writer.add_tensor("output_norm.weight", np.ones(shape.width, np.float32))
    writer.add_tensor("output.weight", weights(len(vocab), shape.width))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def ensure_tiny_model(directory: Path, seed: int = 0, context: int = TinyShape.context) -> Path:
    """The tiny model under `directory`, written once (a file from the same seed and
    context is reused)."""
    # The file's stem is the served model name, so the seed and context go in the folder.
    folder = f"seed{seed}" if context == TinyShape.context else f"seed{seed}-ctx{context}"
    path = directory / folder / f"{TINY_MODEL_NAME}.gguf"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.partial")
        write_tiny_model(partial, seed, TinyShape(context=context))
        partial.replace(path)  # readers never see a half-written file
    return path
