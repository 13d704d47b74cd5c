"""Training: the loop that fits an adapter with the masked-diffusion loss, and everything a run needs around it.

- `train.py`: `train(config)` — the nanoGPT-style loop on accelerate (one process, DDP or FSDP2);
- `recipes.py`: the layered run settings (defaults < --recipe < --config file < flags) and the paper recipes;
- `validation.py`: held-out loss overall and per noise level λ; `metrics.py`: the `metrics.jsonl` log;
- `checkpoint.py`: resumable checkpoints (adapter, optimizer, RNG, data order) and `--resume`;
- `sharding.py`: FSDP2 wrapping of the frozen base with the adapters inside;
- `router.py`: training the router of LoRA-Diffusion's multi-task composition on trained task adapters.

May import: `adapters`, `diffusion`, `data`, `models` and the shared leaves; never `evaluation` or `cli`.
"""
