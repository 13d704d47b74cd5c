"""Tiny checkpoint directories in the layouts the real models ship, written in code for the backbone tests.

Each writer returns the source model (to compare logits with) and leaves a directory that `load_backbone` must read
offline: LLaDA in the reference layout (LLaDA field names, OLMo leftovers, `auto_map` to remote code that is absent,
three safetensors shards + index), Dream in Qwen2 layout with Dream's config fields and its custom-tokenizer entry,
BERT and RoBERTa masked LMs, a toy dLLM that ships its own code (`auto_map`), and the time-conditioned DiTs: MDLM in
the layout of `kuleshov-group/mdlm-owt` (hub config keys, `model.safetensors` under `backbone.`) and SEDD in the
layout of `louaaron/sedd-small` (Hydra run config, `pytorch_model.bin` with unprefixed keys). The DiT folders hold
the byte tokenizer (mask = last row, as with GPT-2 + the authors' mask) unless asked to hold none, as on the hub.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
    dynamic_module_utils,
)

from dllm_peft.models.backbone import Backbone
from dllm_peft.models.byte_tokenizer import ByteTokenizer
from dllm_peft.models.dit import DiTConfig
from dllm_peft.models.dream import DreamConfig, DreamModel
from dllm_peft.models.llada import LLaDAModelLM, tiny_llada_config
from dllm_peft.models.mdlm import DIT_TARGETS, MDLMModel
from dllm_peft.models.sedd import SEDDModel

WORDS = "the a quick brown fox jumps over lazy dog cat sat on mat red blue green one two three four five".split()
TEXTS = ["the quick brown fox", "a lazy dog sat on the mat", "one two three four five", "red blue green cat"]

# Key names of a LLaDA checkpoint, as listed in method-facts.md ("LLaDA architecture"); {i} is the block index.
LLADA_BLOCK_KEYS = ("attn_norm", "ff_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
LLADA_TOP_KEYS = ("model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight")


def llada_reference_keys(n_layers: int) -> set[str]:
    blocks = {f"model.transformer.blocks.{i}.{name}.weight" for i in range(n_layers) for name in LLADA_BLOCK_KEYS}
    return blocks | set(LLADA_TOP_KEYS)


def word_tokenizer(specials: list[str], directory: Path, **special_tokens: str) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `specials + WORDS`, saved into `directory`."""
    vocab = {token: index for index, token in enumerate([*specials, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=special_tokens.get("unk_token", specials[0])))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)
    tokenizer.save_pretrained(directory)
    return tokenizer


def _write_shards(state: dict[str, torch.Tensor], directory: Path, shards: int) -> dict[str, str]:
    """Safetensors shards + index exactly as `save_pretrained` names them; returns the index's weight map."""
    names = sorted(state)
    weight_map = {}
    for shard in range(shards):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        keys = names[shard::shards]
        save_file({key: state[key].contiguous() for key in keys}, str(directory / file), metadata={"format": "pt"})
        weight_map.update({key: file for key in keys})
    total = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return weight_map


def write_llada(directory: Path, seed: int = 0) -> LLaDAModelLM:
    """LLaDA-8B's layout at toy size; like LLaDA's, the tokenizer does not declare its mask token."""
    directory.mkdir(parents=True)
    tokenizer = word_tokenizer(["<|endoftext|>", "<|eot_id|>", "<|mdm_mask|>"], directory, eos_token="<|endoftext|>")
    mask_id = tokenizer.convert_tokens_to_ids("<|mdm_mask|>")
    torch.manual_seed(seed)
    config = tiny_llada_config(n_kv_heads=2, vocab_size=40, embedding_size=48, mask_token_id=mask_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    model = LLaDAModelLM(config).eval()
    fields = {key: getattr(config, key) for key in (
        "d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "mlp_ratio", "activation_type",
        "block_type", "rope", "rope_theta", "layer_norm_type", "rms_norm_eps", "include_bias", "weight_tying",
        "vocab_size", "embedding_size", "mask_token_id", "eos_token_id", "pad_token_id", "max_sequence_length")}
    reference = {
        "model_type": "llada", "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "alibi": False, "alibi_bias_max": 8.0, "attention_dropout": 0.0, "attention_layer_norm": False,
        "embedding_dropout": 0.0, "residual_dropout": 0.0, "flash_attention": False, "init_fn": "mitchell",
        "init_device": "meta", "init_std": 0.02, "multi_query_attention": None, "block_group_size": 1,
        "rope_full_precision": True, "scale_logits": False, "use_cache": False, "torch_dtype": "bfloat16",
        **fields,
    }
    (directory / "config.json").write_text(json.dumps(reference, indent=2))
    _write_shards(model.state_dict(), directory, shards=3)
    return model


def write_dream(directory: Path, seed: int = 0) -> DreamModel:
    """Dream's layout at toy size: Qwen2 keys, Dream's config fields, a `DreamTokenizer` entry (remote code)."""
    directory.mkdir(parents=True)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>", "<|mask|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(TEXTS * 4, trainer)
    backend.model.save(str(directory))  # vocab.json + merges.txt, as Dream ships them
    special = {"special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
    tokenizer_config = {
        "tokenizer_class": "DreamTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "mask_token": "<|mask|>",
        "added_tokens_decoder": {"0": {"content": "<|endoftext|>", **special}, "1": {"content": "<|mask|>", **special}},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    fields = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                  tie_word_embeddings=False, mask_token_id=1, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    model = DreamModel(DreamConfig(use_cache=False, **fields)).eval()
    reference = {
        "model_type": "Dream", "architectures": ["DreamModel"], "hidden_act": "silu", "initializer_range": 0.02,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "attention_dropout": 0.0, "max_window_layers": 28, "rope_scaling": None, "sliding_window": None,
        "use_sliding_window": False, "use_cache": False, "torch_dtype": "bfloat16", "transformers_version": "4.46.2",
        **fields,
    }
    (directory / "config.json").write_text(json.dumps(reference, indent=2))
    _write_shards(model.state_dict(), directory, shards=2)
    return model


def write_bert(directory: Path, seed: int = 0) -> BertForMaskedLM:
    directory.mkdir(parents=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = word_tokenizer(specials, directory, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    model = BertForMaskedLM(config).eval()
    model.save_pretrained(directory, max_shard_size="40KB")
    return model


def write_roberta(directory: Path, seed: int = 0) -> RobertaForMaskedLM:
    directory.mkdir(parents=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer = word_tokenizer(specials, directory, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                unk_token="<unk>", mask_token="<mask>")
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2)
    model = RobertaForMaskedLM(config).eval()
    model.save_pretrained(directory)
    return model


REMOTE_CONFIG_CODE = '''
from transformers import PretrainedConfig


class ToyDenoiserConfig(PretrainedConfig):
    model_type = "toy-denoiser"

    def __init__(self, vocab_size=32, hidden_size=16, mask_token_id=None, **kwargs):
        self.vocab_size, self.hidden_size, self.mask_token_id = vocab_size, hidden_size, mask_token_id
        super().__init__(**kwargs)
'''

REMOTE_MODEL_CODE = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_toy import ToyDenoiserConfig


class ToyDenoiser(PreTrainedModel):
    """One bidirectional attention layer and an LM head."""

    config_class = ToyDenoiserConfig

    def __init__(self, config):
        super().__init__(config)
        width = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, width)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(width, width) for _ in range(4))
        self.lm_head = nn.Linear(width, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        x = self.embed(input_ids)
        scores = self.q_proj(x) @ self.k_proj(x).transpose(1, 2) / x.shape[-1] ** 0.5
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask.bool()[:, None, :], float("-inf"))
        x = x + self.o_proj(scores.softmax(-1) @ self.v_proj(x))
        return MaskedLMOutput(logits=self.lm_head(x))
'''


def isolate_remote_code(patch: pytest.MonkeyPatch, modules_dir: Path) -> None:
    """Copy remote code into `modules_dir` (not ~/.cache) and forget, until `patch` undoes, what was imported."""
    patch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(modules_dir))
    patch.setattr(sys, "path", list(sys.path))
    for name in [name for name in sys.modules if name.startswith("transformers_modules")]:
        patch.delitem(sys.modules, name)


def write_remote(directory: Path, seed: int = 0) -> None:
    """A dLLM transformers does not know, shipping its code (`auto_map`), like most research checkpoints."""
    directory.mkdir(parents=True)
    tokenizer = word_tokenizer(["<eos>", "<mask>"], directory, eos_token="<eos>", mask_token="<mask>")
    (directory / "configuration_toy.py").write_text(REMOTE_CONFIG_CODE)
    (directory / "modeling_toy.py").write_text(REMOTE_MODEL_CODE)
    config = {
        "model_type": "toy-denoiser", "architectures": ["ToyDenoiser"], "vocab_size": len(tokenizer),
        "hidden_size": 16, "mask_token_id": tokenizer.mask_token_id,
        "auto_map": {"AutoConfig": "configuration_toy.ToyDenoiserConfig", "AutoModel": "modeling_toy.ToyDenoiser"},
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    generator = torch.Generator().manual_seed(seed)
    shapes = {"embed.weight": (len(tokenizer), 16), "lm_head.weight": (len(tokenizer), 16),
              "lm_head.bias": (len(tokenizer),)}
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        shapes |= {f"{name}.weight": (16, 16), f"{name}.bias": (16,)}
    state = {name: torch.randn(shape, generator=generator) * 0.3 for name, shape in shapes.items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


# Key names of the DiT shared by MDLM and SEDD, as the authors' checkpoints hold them (MDLM: under `backbone.`).
DIT_BLOCK_KEYS = ("norm1.weight", "attn_qkv.weight", "attn_out.weight", "norm2.weight", "mlp.0.weight", "mlp.0.bias",
                  "mlp.2.weight", "mlp.2.bias", "adaLN_modulation.weight", "adaLN_modulation.bias")
DIT_TOP_KEYS = ("vocab_embed.embedding", "sigma_map.mlp.0.weight", "sigma_map.mlp.0.bias", "sigma_map.mlp.2.weight",
                "sigma_map.mlp.2.bias", "rotary_emb.inv_freq", "output_layer.norm_final.weight",
                "output_layer.linear.weight", "output_layer.linear.bias", "output_layer.adaLN_modulation.weight",
                "output_layer.adaLN_modulation.bias")
DIT_SIZE = dict(hidden_size=32, cond_dim=16, n_heads=4, n_blocks=2)


def dit_reference_keys(n_blocks: int, prefix: str = "") -> set[str]:
    blocks = {f"{prefix}blocks.{i}.{name}" for i in range(n_blocks) for name in DIT_BLOCK_KEYS}
    return blocks | {prefix + name for name in DIT_TOP_KEYS}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Trained-looking weights: the authors zero-initialise adaLN and the output layer, which would hide σ."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1 + 0.1 * noise if name.endswith(("norm1.weight", "norm2.weight", "norm_final.weight"))
                            else noise / max(parameter.shape[-1], 1) ** 0.5)


def _dit_tokenizer(directory: Path, with_tokenizer: bool) -> int:
    """Save the byte tokenizer (bytes, EOS 256; mask = row 257, the last) unless the folder should hold none."""
    if with_tokenizer:
        ByteTokenizer().save_pretrained(directory)
    return ByteTokenizer().eos_token_id + 1  # the authors' `tokens`: the vocabulary without the mask row


def tiny_dit(kind: str, seed: int = 0, time_conditioning: bool = True) -> Backbone:
    """A tiny MDLM or SEDD built in memory (the folders' weights for the same seed) with the byte tokenizer."""
    config = DiTConfig(model_type=kind, vocab_size=ByteTokenizer().eos_token_id + 2, model_length=128, **DIT_SIZE)
    model = (MDLMModel(config, time_conditioning) if kind == "mdlm" else SEDDModel(config, scale_by_sigma=True)).eval()
    _randomize(model, seed)
    tokenizer = ByteTokenizer()
    return Backbone(model=model, tokenizer=tokenizer, mask_id=model.mask_id, eos_id=tokenizer.eos_token_id,
                    name=f"tiny-{kind}", default_targets=DIT_TARGETS, max_length=128)


def write_mdlm(directory: Path, seed: int = 0, time_conditioning: bool = True, with_tokenizer: bool = True) -> MDLMModel:
    """kuleshov-group/mdlm-owt at toy size: its config.json keys and a model.safetensors keyed `backbone.…`."""
    directory.mkdir(parents=True)
    tokens = _dit_tokenizer(directory, with_tokenizer)
    model = tiny_dit("mdlm", seed, time_conditioning).model
    reference = {
        "architectures": ["MDLM"], "model_type": "mdlm", "return_dict": False, "torch_dtype": "float32",
        "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        "hidden_dim": DIT_SIZE["hidden_size"], "cond_dim": DIT_SIZE["cond_dim"], "n_blocks": DIT_SIZE["n_blocks"],
        "n_heads": DIT_SIZE["n_heads"], "dropout": 0.1, "model_length": 128, "vocab_size": tokens + 1,
        "time_conditioning": time_conditioning, "transformers_version": "4.44.2",
    }
    (directory / "config.json").write_text(json.dumps(reference, indent=2))
    state = model.state_dict()
    assert set(state) == dit_reference_keys(DIT_SIZE["n_blocks"], "backbone.")
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    return model


def write_sedd(directory: Path, seed: int = 0, with_tokenizer: bool = True, safetensors: bool = False) -> SEDDModel:
    """louaaron/sedd-small at toy size: the Hydra run config as config.json and a pickled pytorch_model.bin."""
    directory.mkdir(parents=True)
    tokens = _dit_tokenizer(directory, with_tokenizer)
    model = tiny_dit("sedd", seed).model
    reference = {
        "ngpus": 1, "tokens": tokens,
        "training": {"batch_size": 512, "accum": 1, "n_iters": 1300001, "snapshot_freq": 50000, "log_freq": 50,
                     "eval_freq": 100, "snapshot_freq_for_preemption": 10000, "weight": "standard",
                     "snapshot_sampling": True, "ema": 0.9999},
        "data": {"train": "openwebtext", "valid": "wikitext103", "cache_dir": "data"},
        "graph": {"type": "absorb", "file": "data", "report_all": False},
        "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
        "sampling": {"predictor": "euler", "steps": 128, "noise_removal": True},
        "eval": {"batch_size": 512, "perplexity": True, "perplexity_batch_size": 32},
        "optim": {"weight_decay": 0, "optimizer": "AdamW", "lr": 3e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                  "warmup": 2500, "grad_clip": 1.0},
        "model": {"name": "small", "type": "ddit", "hidden_size": DIT_SIZE["hidden_size"],
                  "cond_dim": DIT_SIZE["cond_dim"], "length": 128, "n_blocks": DIT_SIZE["n_blocks"],
                  "n_heads": DIT_SIZE["n_heads"], "scale_by_sigma": True, "dropout": 0.1},
    }
    (directory / "config.json").write_text(json.dumps(reference, indent=2))
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    assert set(state) == dit_reference_keys(DIT_SIZE["n_blocks"])
    if safetensors:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, directory / "pytorch_model.bin")  # a plain dict of tensors, as the authors' hub upload
    return model
