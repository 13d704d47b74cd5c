"""Masked diffusion, pure functions of their inputs: the forward process, the loss, the sampler, the likelihood.

- `schedule.py`: the forward (masking) process and the noise level λ (method-facts: one definition everywhere);
- `conditioning.py`: routing λ to the modules that need it (NaRA's hypernetwork, Multi-LoRA's bins, ...);
- `loss.py`: the masked-diffusion training loss (LLaDA's SFT ELBO);
- `sampler.py`, `unmasking.py`, `kv_cache.py`: LLaDA's semi-autoregressive sampler, its unmasking rules and
  Fast-dLLM's prefix/dual KV caches;
- `likelihood.py`: LLaDA's Monte-Carlo log-likelihood, batched; `adaptive_likelihood.py`: the cheaper estimator of
  `--mc-estimator adaptive` (shared antithetic draws, exact short answers, early stopping).

May import: `models` (the `Backbone` with its mask and EOS ids) and the shared leaves; never anything above.
"""
