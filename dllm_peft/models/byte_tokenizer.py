"""A byte-level tokenizer for the tiny models built in code: UTF-8 bytes are ids 0–255, special tokens follow.

It mirrors the parts of the Hugging Face tokenizer interface that dllm-peft uses (`encode`, `decode`, the special
token ids), so the rest of the code never asks which kind of tokenizer it holds.
"""

from __future__ import annotations

SPECIAL_TOKENS = ("<|eos|>", "<|mdm_mask|>", "<|start|>", "<|sep|>")


class ByteTokenizer:
    """Bytes → ids; `eos_token_id` = 256, `mask_token_id` = 257; EOS doubles as the padding token (as in LLaDA)."""

    eos_token_id = 256
    mask_token_id = 257
    pad_token_id = 256
    vocab_size = 256 + len(SPECIAL_TOKENS)
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        pieces, run = [], bytearray()
        for token in ids:
            if token < 256:
                run.append(token)
                continue
            pieces.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            if not skip_special_tokens and token < self.vocab_size:
                pieces.append(SPECIAL_TOKENS[token - 256])
        pieces.append(run.decode("utf-8", errors="replace"))
        return "".join(pieces)
