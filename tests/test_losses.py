"""Ambiguous cross-entropy and MSE for partial labels (SEnSeI-v2, Francis 2024, eq. 5-8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xcloud.errors import DatasetError
from xcloud.training.losses import (
    ambiguous_cross_entropy,
    ambiguous_mse,
    labels_to_multi_hot,
    multi_hot_to_labels,
)

C = 7
CANDIDATES = torch.tensor([True, True, True, False, False, False, False])  # e.g. land|water|snow


def _random(shape=(2, C, 5, 4), seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    return logits, labels


def _pixel(probabilities):
    """A (1, C, 1, 1) float64 logit tensor (leaf) with the given softmax."""
    logits = torch.log(torch.tensor(probabilities, dtype=torch.float64)).reshape(1, -1, 1, 1)
    return logits.requires_grad_(True)


def _candidates():
    return CANDIDATES.reshape(1, C, 1, 1)


def _split(s, weights, rest=(0.4, 0.3, 0.2, 0.1)):
    """Probabilities: mass ``s`` split over the 3 candidates by ``weights``, the rest fixed."""
    inside = [s * w / sum(weights) for w in weights]
    return [*inside, *((1 - s) * r for r in rest)]


# --- cross-entropy ----------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ambiguous_ce_equals_cross_entropy_for_one_hot(reduction):
    logits, labels = _random()
    ours = ambiguous_cross_entropy(logits, labels_to_multi_hot(labels, C), reduction=reduction)
    torch.testing.assert_close(ours, F.cross_entropy(logits, labels, reduction=reduction),
                               rtol=1e-12, atol=1e-12)


def test_ambiguous_ce_gradient_equals_cross_entropy_gradient_for_one_hot():
    logits, labels = _random(seed=1)
    ours = logits.clone().requires_grad_(True)
    theirs = logits.clone().requires_grad_(True)
    ambiguous_cross_entropy(ours, labels_to_multi_hot(labels, C)).backward()
    F.cross_entropy(theirs, labels).backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-12, atol=1e-14)


def test_ambiguous_ce_is_minus_log_of_candidate_mass_and_ignores_like_cross_entropy():
    logits, labels = _random(seed=2)
    labels[0, 0] = 99
    multi_hot = labels_to_multi_hot(labels, C, ignore_index=99)
    torch.testing.assert_close(ambiguous_cross_entropy(logits, multi_hot),
                               F.cross_entropy(logits, labels, ignore_index=99))
    multi_hot[:, 3] = True  # a second candidate everywhere: -log(p_label + p_3)
    proba = torch.softmax(logits, dim=1)
    expected = -torch.log((proba * multi_hot).sum(1))[multi_hot.any(1)].mean()
    torch.testing.assert_close(ambiguous_cross_entropy(logits, multi_hot), expected)


@pytest.mark.parametrize("loss", [ambiguous_cross_entropy, ambiguous_mse])
def test_loss_unchanged_when_mass_moves_between_candidates(loss):
    values = [loss(_pixel(_split(0.6, w)), _candidates()).item()
              for w in ((1, 1, 1), (8, 1, 1), (1, 0.01, 5))]
    assert values == pytest.approx([values[0]] * 3, rel=1e-12, abs=1e-15)
    # negative control: moving mass out of the candidates does change it
    assert loss(_pixel(_split(0.5, (1, 1, 1))), _candidates()).item() > values[0] + 1e-3


def _grad(loss, probabilities):
    logits = _pixel(probabilities)
    loss(logits, _candidates()).backward()
    return logits.grad.flatten()


def test_ce_gradient_unchanged_for_non_candidates_and_in_total_for_candidates():
    s, rest = 0.6, (0.4, 0.3, 0.2, 0.1)
    grads = [_grad(ambiguous_cross_entropy, _split(s, w, rest))
             for w in ((1, 1, 1), (8, 1, 1), (1, 0.01, 5))]
    for grad in grads:
        # dL/dz_j = p_j for a non-candidate, whatever the split among the candidates
        torch.testing.assert_close(grad[3:], torch.tensor(rest, dtype=torch.float64) * (1 - s))
        # the candidates' share sums to s - 1 (each gets p_i (1 - 1/s))
        assert float(grad[:3].sum()) == pytest.approx(s - 1, abs=1e-12)
    assert not torch.allclose(grads[0][:3], grads[1][:3])  # the split itself is free


REST = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)


def _gradient_wrt_mass(loss, s_value, weights, k=3):
    """dL/ds for probabilities ``s * w / sum(w)`` on the k candidates, ``(1 - s) * REST`` else."""
    s = torch.tensor(s_value, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(weights, dtype=torch.float64)
    rest = REST
    proba = torch.cat([s * w / w.sum(), (1 - s) * rest])
    candidates = torch.arange(C).reshape(1, C, 1, 1) < k
    loss(torch.log(proba).reshape(1, C, 1, 1), candidates).backward()
    return float(s.grad)


@pytest.mark.parametrize("s_value", [0.05, 0.6, 0.99])
def test_gradient_wrt_candidate_mass_does_not_depend_on_the_split(s_value):
    splits = ((1, 1, 1), (8, 1, 1), (1, 0.01, 5))
    ce = [_gradient_wrt_mass(ambiguous_cross_entropy, s_value, w) for w in splits]
    assert ce == pytest.approx([-1 / s_value] * 3, rel=1e-10)
    mse = [_gradient_wrt_mass(ambiguous_mse, s_value, w) for w in splits]
    # (1 - s)^2 / k + sum_j ((1 - s) r_j)^2, over C: the non-candidates follow s here too
    expected = -2 * (1 - s_value) * (1 / 3 + float(REST.square().sum())) / C
    assert mse == pytest.approx([expected] * 3, rel=1e-10)


def test_ambiguous_ce_is_stable_for_extreme_logits():
    logits = torch.tensor([0.0, -200.0, 3000.0, 1.0, 0.0, 0.0, 0.0]).reshape(1, C, 1, 1)
    logits.requires_grad_(True)
    candidates = torch.zeros(1, C, 1, 1, dtype=torch.bool)
    candidates[0, 1] = True  # p = e^-3200: float32 softmax gives 0 and -log(0) = inf
    loss = ambiguous_cross_entropy(logits, candidates)
    loss.backward()
    assert loss.item() == pytest.approx(3200.0, rel=1e-6)
    assert torch.isfinite(logits.grad).all()


# --- MSE ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ambiguous_mse_equals_mse_of_softmax_and_one_hot(reduction):
    logits, labels = _random(seed=3)
    one_hot = labels_to_multi_hot(labels, C)
    expected = F.mse_loss(torch.softmax(logits, 1), one_hot.double(), reduction="none").mean(1)
    expected = expected.mean() if reduction == "mean" else expected.sum()
    torch.testing.assert_close(ambiguous_mse(logits, one_hot, reduction=reduction), expected)


def test_ambiguous_mse_matches_the_mean_replacement_form():
    """1/C sum (pi_i - y_i/k)^2, candidates' probabilities replaced by their mean (eq. 7-8)."""
    logits, _ = _random(seed=4)
    generator = torch.Generator().manual_seed(5)
    multi_hot = torch.rand(logits.shape, generator=generator) < 0.4
    multi_hot[:, 0] |= ~multi_hot.any(1)
    proba = torch.softmax(logits, 1)
    k = multi_hot.sum(1, keepdim=True)
    replaced = torch.where(multi_hot, (proba * multi_hot).sum(1, keepdim=True) / k, proba)
    expected = F.mse_loss(replaced, multi_hot / k)
    torch.testing.assert_close(ambiguous_mse(logits, multi_hot), expected)


# --- empty sets, reductions, helpers ---------------------------------------------------------


@pytest.mark.parametrize("loss", [ambiguous_cross_entropy, ambiguous_mse])
def test_empty_candidate_sets_are_left_out(loss):
    logits, labels = _random(seed=6)
    multi_hot = labels_to_multi_hot(labels, C)
    empty = multi_hot.clone()
    empty[0, :, :2] = False
    logits.requires_grad_(True)
    per_pixel = loss(logits, multi_hot, reduction="none")
    kept = empty.any(1)
    result = loss(logits, empty)
    torch.testing.assert_close(result, per_pixel[kept].mean())
    result.backward()
    assert torch.isfinite(logits.grad).all() and float(logits.grad[0, :, :2].abs().sum()) == 0
    assert loss(logits, torch.zeros_like(multi_hot)).item() == 0
    with pytest.raises(DatasetError, match="no candidate"):
        loss(logits, empty, ignore_empty=False)


def test_bad_arguments():
    logits, labels = _random()
    with pytest.raises(ValueError, match="reduction"):
        ambiguous_cross_entropy(logits, labels_to_multi_hot(labels, C), reduction="max")
    with pytest.raises(DatasetError, match="do not match"):
        ambiguous_mse(logits, labels_to_multi_hot(labels, C)[:, :5])
    with pytest.raises(DatasetError, match=r"0\.\.6"):
        labels_to_multi_hot(labels + 1, C)


def test_multi_hot_helpers_round_trip():
    _, labels = _random(seed=7)
    multi_hot = labels_to_multi_hot(labels, C)
    assert multi_hot.dtype == torch.bool and multi_hot.shape == (2, C, 5, 4)
    assert torch.equal(multi_hot.sum(1), torch.ones_like(labels))
    assert torch.equal(multi_hot_to_labels(multi_hot), labels)
    multi_hot[0, :, 0, 0] = True
    multi_hot[1, :, 0, 0] = False
    back = multi_hot_to_labels(multi_hot, fill=255)
    assert back[0, 0, 0] == 255 and back[1, 0, 0] == 255
