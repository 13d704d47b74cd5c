"""A byte-level tokenizer for the tiny models built in code: UTF-8 bytes are ids 0–255, special tokens follow.

It mirrors the parts of the Hugging Face tokenizer interface that dllm-peft uses (`encode`, `decode`, the special
token ids), so the rest of the code never asks which kind of tokenizer it holds.
"""

from __future__ import annotations

import json
from pathlib import Path

TOKENIZER_FILE = "byte_tokenizer.json"  # marks a checkpoint directory whose tokenizer is this class
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

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the marker file that `load_backbone` recognises."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        record = {"tokenizer_class": "ByteTokenizer", "special_tokens": list(SPECIAL_TOKENS)}
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps(record, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ByteTokenizer:
        record = json.loads((Path(directory) / TOKENIZER_FILE).read_text())
        if record.get("special_tokens") != list(SPECIAL_TOKENS):
            raise ValueError(f"{directory} holds a byte tokenizer with other special tokens")
        return cls()
