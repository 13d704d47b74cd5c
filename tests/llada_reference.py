"""A plain reference loop of LLaDA's sampler, written from the specification in `method-facts.md`.

One prompt, no padding, no cache, nothing clever: this is what `dllm_peft.diffusion.sampler.sample` must reproduce
token for token. It follows LLaDA's `generate.py` in structure (full-canvas logits, confidences over the whole
canvas with −∞ outside the current block, top-k per step) and shares with our sampler only the conventions that
the specification leaves open:
  * the mask token is never predicted (its logit is −∞);
  * randomness per step: with temperature > 0, uniforms of shape (block_length, V) in float64 for the Gumbel-max
    of the current block's positions; then, for random remasking, (block_length,) float64 uniforms;
  * λ routed to noise-aware adapters = masked fraction of the response region.
The benchmark `benchmarks/sampler/` times it against the sampler.
"""

from __future__ import annotations

import math

import torch

from dllm_peft.diffusion.conditioning import noise_level


@torch.no_grad()
def reference_generate(backbone, prompt, gen_length, steps, block_length, temperature=0.0, cfg_scale=0.0,
                       remasking="low_confidence", generator=None):
    """Returns the final canvas (1, len(prompt) + gen_length)."""
    mask_id = backbone.mask_id
    x = torch.full((1, len(prompt) + gen_length), mask_id, dtype=torch.long)
    x[0, : len(prompt)] = torch.tensor(prompt)
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for num_block in range(num_blocks):
        block_start = len(prompt) + num_block * block_length
        block_end = block_start + block_length
        block_masks = int((x[:, block_start:block_end] == mask_id).sum())
        num_transfer = [block_masks // steps_per_block] * steps_per_block
        for i in range(block_masks % steps_per_block):
            num_transfer[i] += 1
        for i in range(steps_per_block):
            mask_index = x == mask_id
            lam = (x[:, len(prompt):] == mask_id).float().mean(dim=1)
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                with noise_level(backbone.model, lam.repeat(2)):
                    both = backbone.logits(torch.cat([x, un_x]))
                logits, un_logits = both[:1], both[1:]
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                with noise_level(backbone.model, lam):
                    logits = backbone.logits(x)
            logits = logits.double()
            logits[:, :, mask_id] = -torch.inf
            if temperature > 0:
                noise = torch.full_like(logits, math.exp(-1.0))  # −log = 1: no noise outside the block
                noise[0, block_start:block_end] = torch.rand((block_length, logits.shape[-1]), dtype=torch.float64,
                                                             generator=generator)
                x0 = torch.argmax(logits.exp() / (-torch.log(noise)) ** temperature, dim=-1)
            else:
                x0 = torch.argmax(logits, dim=-1)
            if remasking == "low_confidence":
                p = torch.softmax(logits, dim=-1)
                x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
            else:
                x0_p = torch.zeros(x0.shape, dtype=torch.float64)
                x0_p[0, block_start:block_end] = torch.rand(block_length, dtype=torch.float64, generator=generator)
            x0_p[:, block_end:] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -torch.inf)
            _, select = torch.topk(confidence[0], k=num_transfer[i])
            x[0, select] = x0[0, select]
    return x
