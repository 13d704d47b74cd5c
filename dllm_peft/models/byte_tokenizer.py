"""A byte-level tokenizer for the tiny models built in code: UTF-8 bytes are ids 0–255, special tokens follow.

It mirrors the parts of the Hugging Face tokenizer interface that dllm-peft uses (`encode`, `decode`, the special
token ids), so the rest of the code never asks which kind of tokenizer it holds.

`save_pretrained` also writes the same tokenizer as a `tokenizers` file (`tokenizer.json` + `tokenizer_config.json`),
so that `AutoTokenizer.from_pretrained(folder)` loads it without dllm-peft: a byte-level BPE with no merges, whose
256 base tokens are the bytes in GPT-2's printable byte alphabet (the byte-level pre-tokenizer maps each byte to
one of those characters) and whose added special tokens take ids 256–259 in `SPECIAL_TOKENS` order.
`tests/test_portable.py` checks that both give the same ids and text.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

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
        """Write the marker file that `load_backbone` recognises, and the `tokenizers` files others load."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        record = {"tokenizer_class": "ByteTokenizer", "special_tokens": list(SPECIAL_TOKENS)}
        (Path(directory) / TOKENIZER_FILE).write_text(json.dumps(record, indent=2) + "\n")
        huggingface_tokenizer().save_pretrained(str(directory))
        # transformers 5 names its fast class TokenizersBackend; the older alias loads in 4.x and 5 alike
        config_file = Path(directory) / "tokenizer_config.json"
        config = json.loads(config_file.read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ByteTokenizer:
        record = json.loads((Path(directory) / TOKENIZER_FILE).read_text())
        if record.get("special_tokens") != list(SPECIAL_TOKENS):
            raise ValueError(f"{directory} holds a byte tokenizer with other special tokens")
        return cls()


def byte_alphabet() -> list[str]:
    """The printable character standing for each byte 0–255, as the byte-level pre-tokenizer of GPT-2 maps them.

    Printable Latin-1 bytes stand for themselves; the 68 others (controls, space, ...) take the characters from
    U+0100 on, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[byte] = chr(byte)
        else:
            alphabet[byte] = chr(256 + extra)
            extra += 1
    return [alphabet[byte] for byte in range(256)]


def huggingface_tokenizer() -> PreTrainedTokenizerFast:
    """`ByteTokenizer` as a transformers fast tokenizer built with the `tokenizers` library (same ids, same text)."""
    vocab = {character: byte for byte, character in enumerate(byte_alphabet())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    eos, mask = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1]
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=eos,
        pad_token=eos,
        mask_token=mask,
        additional_special_tokens=list(SPECIAL_TOKENS[2:]),
        clean_up_tokenization_spaces=False,
    )
