"""Masked diffusion: the forward (masking) process, the training loss, the sampler and the likelihood."""
