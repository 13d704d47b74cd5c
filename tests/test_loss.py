"""The masked-diffusion loss and the forward process."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dllm_peft.diffusion.loss import masked_diffusion_loss
from dllm_peft.diffusion.schedule import (
    draw_mask_counts,
    forward_process,
    mask_counts_at,
)


def test_the_prompt_is_never_masked_and_exactly_k_response_tokens_are(batch):
    lengths = batch.response_mask.sum(1)
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        counts = draw_mask_counts(lengths, generator)
        noised = forward_process(batch.input_ids, batch.response_mask, counts, 257, generator)
        assert not (noised.masked & ~batch.response_mask).any()
        assert torch.equal(noised.masked.sum(1), counts)
        assert torch.equal(noised.input_ids[~noised.masked], batch.input_ids[~noised.masked])
        assert (noised.input_ids[noised.masked] == 257).all()
        torch.testing.assert_close(noised.noise_level, counts.float() / lengths.float())
        assert (counts >= 1).all() and (counts <= lengths).all()


# -- Must show 2: k is uniform on {1..L}, and the loss is the ELBO --------------------------------------------------
def test_mask_counts_are_uniform_within_sampling_error():
    """A chi-square test per length: 20,000 draws, 99.9 % quantile of χ² with L − 1 degrees of freedom."""
    draws = 20_000
    generator = torch.Generator().manual_seed(0)
    for length, bound in ((1, 0.0), (3, 13.82), (8, 24.32), (64, 103.4)):
        counts = draw_mask_counts(torch.full((draws,), length), generator)
        assert counts.min() >= 1 and counts.max() <= length
        histogram = torch.bincount(counts, minlength=length + 1)[1:].double()  # (L,) draws of k = 1..L
        expected = draws / length
        chi_square = ((histogram - expected) ** 2 / expected).sum().item()
        assert chi_square <= bound, (length, histogram.tolist(), chi_square)
    # the fully masked state (the sampler's first step) is as likely as any other: the old round(t·L) halved it
    counts = draw_mask_counts(torch.full((draws,), 3), generator)
    assert abs((counts == 3).double().mean().item() - 1 / 3) < 0.015


def test_per_sequence_generators_make_a_mask_independent_of_its_batch(batch):
    lengths = batch.response_mask.sum(1)
    generators = [torch.Generator().manual_seed(100 + row) for row in range(len(lengths))]
    together = draw_mask_counts(lengths, generators)
    alone = [draw_mask_counts(lengths[row : row + 1], [torch.Generator().manual_seed(100 + row)]) for row in range(4)]
    assert together.tolist() == torch.cat(alone).tolist()


def test_loss_is_the_elbo_on_a_hand_example():
    """L = 2, a model whose prediction we write by hand: the expectation over k ∈ {1, 2} and the masked positions of
    Σ CE / k equals the ELBO (1/L) Σ_k (L/k)(1/L)·E[Σ CE | k] computed by enumeration."""
    from dllm_peft.models.backbone import Backbone

    vocab, mask_id = 4, 3

    class HandModel(torch.nn.Module):
        """Logits for tokens 1 and 2 at positions 1 and 2 that are lower when both are masked (a harder state)."""

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # Backbone.device reads a parameter

        def forward(self, input_ids, attention_mask=None, **_):
            logits = torch.zeros(*input_ids.shape, vocab)
            both = (input_ids[:, 1] == mask_id) & (input_ids[:, 2] == mask_id)  # (B,) fully masked
            logits[:, 1, 1] = torch.where(both, 0.5, 2.0)  # one masked position is easier than two
            logits[:, 2, 2] = torch.where(both, 0.2, 1.0)
            return type("Out", (), {"logits": logits})()

    backbone = Backbone(HandModel(), tokenizer=None, mask_id=mask_id, eos_id=0, name="hand", default_targets=())
    input_ids = torch.tensor([[0, 1, 2]])
    response_mask = torch.tensor([[False, True, True]])

    def cross_entropy(position, both):
        logits = torch.zeros(vocab)
        logits[position] = {1: (0.5, 2.0), 2: (0.2, 1.0)}[position][0 if both else 1]
        return -logits.log_softmax(0)[position].item()

    # ELBO per token by enumeration: k = 1 (each position alone, prob 1/2) and k = 2 (both), each k with prob 1/2
    single = (cross_entropy(1, False) + cross_entropy(2, False)) / 2  # E[Σ CE | k = 1]
    double = cross_entropy(1, True) + cross_entropy(2, True)  # Σ CE | k = 2
    elbo = 0.5 * (single / 1) + 0.5 * (double / 2)  # E_k[Σ CE / k] = E_k[Σ CE / λ / L]
    draws = 4000
    generator = torch.Generator().manual_seed(0)
    out = masked_diffusion_loss(
        backbone, input_ids.expand(draws, 3), response_mask.expand(draws, 3), generator=generator
    )
    standard_error = out.per_example.std().item() / draws**0.5
    assert abs(out.loss.item() - elbo) < 4 * standard_error, (out.loss.item(), elbo)
    # and each draw is exactly Σ CE / k
    k = (out.noise_level * 2).round().long()
    assert set(k.tolist()) == {1, 2}
    fully_masked = out.per_example[k == 2]
    torch.testing.assert_close(fully_masked, torch.full_like(fully_masked, double / 2))


def test_fixed_noise_levels_round_to_at_least_one_token():
    lengths = torch.tensor([10, 3, 1])
    assert mask_counts_at(0.5, lengths).tolist() == [5, 2, 1]
    assert mask_counts_at(0.01, lengths).tolist() == [1, 1, 1]


def test_loss_is_sum_of_masked_cross_entropy_over_lambda_over_length(backbone, batch):
    generator = torch.Generator().manual_seed(0)
    out = masked_diffusion_loss(backbone, batch.input_ids, batch.response_mask, generator=generator)
    # recompute by hand from the same draw
    generator = torch.Generator().manual_seed(0)
    lengths = batch.response_mask.sum(1)
    counts = draw_mask_counts(lengths, generator)
    noised = forward_process(batch.input_ids, batch.response_mask, counts, backbone.mask_id, generator)
    with torch.no_grad():
        logits = backbone.logits(noised.input_ids)
    expected = []
    for row in range(batch.input_ids.shape[0]):
        where = noised.masked[row]
        ce = F.cross_entropy(logits[row][where], batch.input_ids[row][where], reduction="sum")
        expected.append(ce / noised.noise_level[row] / lengths[row])
    torch.testing.assert_close(out.loss.detach(), torch.stack(expected).mean())
    assert out.masked_tokens == int(counts.sum())


def test_golden_loss_value_on_a_fixed_seed(backbone, batch):
    generator = torch.Generator().manual_seed(1234)
    out = masked_diffusion_loss(backbone, batch.input_ids, batch.response_mask, generator=generator)
    # A randomly initialised model scores ~ln(264) = 5.58 per token; the golden value pins the whole pipeline.
    assert abs(out.loss.item() - GOLDEN_LOSS) < 1e-4, out.loss.item()


GOLDEN_LOSS = 5.682936  # k uniform on {1..L} (issue 16); was 5.688167 with round(t·L)


# -- --noise-draw continuous: the draw t is routed, k = ⌈t·L⌉ is masked, the weight stays L / k ---------------------
class _RecordingRouter:
    """Stands in for `conditioning.noise_level`: records the λ the loss routes."""

    def __init__(self):
        self.routed = []

    def __call__(self, model, level):
        import contextlib

        self.routed.append(level.clone())
        return contextlib.nullcontext()


def test_continuous_draw_routes_t_masks_ceil_t_l_and_keeps_the_elbo_weight(backbone, batch, monkeypatch):
    from dllm_peft.diffusion import loss as loss_module
    from dllm_peft.diffusion.schedule import draw_noise

    recorder = _RecordingRouter()
    monkeypatch.setattr(loss_module, "routed_noise_level", recorder)
    lengths = batch.response_mask.sum(1)
    continuous = masked_diffusion_loss(
        backbone, batch.input_ids, batch.response_mask, generator=torch.Generator().manual_seed(5),
        noise_draw="continuous",
    )
    grid = masked_diffusion_loss(backbone, batch.input_ids, batch.response_mask, generator=torch.Generator().manual_seed(5))
    t, counts = draw_noise(lengths, torch.Generator().manual_seed(5))
    torch.testing.assert_close(recorder.routed[0], t)  # the continuous draw itself
    torch.testing.assert_close(recorder.routed[1], counts.float() / lengths.float())  # grid: k / L
    assert torch.equal(counts, torch.ceil(t * lengths).long().clamp(1))
    assert not torch.allclose(t, counts.float() / lengths.float())  # the two designs route different λ
    # same draw, same mask, same weight L / k: with a backbone that ignores λ the losses are equal
    torch.testing.assert_close(continuous.loss, grid.loss)
    torch.testing.assert_close(continuous.noise_level, t)
    assert continuous.masked_tokens == grid.masked_tokens == int(counts.sum())
