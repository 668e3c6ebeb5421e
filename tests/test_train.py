"""Training KappaMask on synthetic KappaSet-format tiles: learning, checkpoints, resume, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xcloud.evaluation.metrics import ConfusionMatrix
from xcloud.models.kappamask import load_checkpoint
from xcloud.training.kappaset import KappaSetDataset, synthetic_kappaset
from xcloud.training.train import UNDEFINED, dice_loss, train

SMALL = {"depth": 3, "filters": 8, "batch_size": 4, "learning_rate": 1e-2, "seed": 0}


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("kappaset")
    synthetic_kappaset(root, n_products=4, tiles_per_product=5, level="L1C", size=64, seed=3)
    return root


@pytest.fixture(scope="module")
def trained(tiles, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("run") / "kappamask.safetensors"
    return train(tiles, checkpoint=checkpoint, epochs=8, patience=20, **SMALL)


def _majority_dice(dataset) -> float:
    """Mean dice over present classes of always predicting the most frequent class."""
    matrix = ConfusionMatrix(5, ignore_index=UNDEFINED)
    labels = [np.asarray(dataset[i][1]) for i in range(len(dataset))]
    counts = np.bincount(np.concatenate([lab.ravel() for lab in labels]), minlength=6)[:5]
    for label in labels:
        matrix.update(np.full_like(label, counts.argmax()), label)
    dice = matrix.dice()
    return float(np.nanmean(dice[matrix.matrix.sum(1) > 0]))


def test_dice_loss_is_zero_for_perfect_and_ignores_undefined():
    target = torch.tensor([[[0, 1], [4, UNDEFINED]]])
    logits = torch.nn.functional.one_hot(target.clamp(max=4), 5).permute(0, 3, 1, 2) * 50.0
    assert float(dice_loss(logits.float(), target, eps=1e-6)) < 1e-3
    wrong = logits.roll(1, dims=1).float()  # 0 -> 1, 1 -> 2, 4 -> 0: every pixel wrong
    # four classes score 0; class 3, absent and never predicted, scores 1: loss 1 - 1/5
    assert float(dice_loss(wrong, target, eps=1e-6)) == pytest.approx(0.8, abs=1e-4)


def test_validation_dice_rises_clearly_above_chance(trained, tiles):
    dice = [entry["val_dice"] for entry in trained.history]
    _, val_set = KappaSetDataset(tiles, level="L1C").split(fraction=0.2, seed=0)
    chance = _majority_dice(val_set)
    assert max(dice) > chance + 0.1, (dice, chance)
    assert max(dice) > dice[0] + 0.1
    assert trained.checkpoint.exists() and trained.best_epoch >= 0


def test_checkpoint_round_trip_gives_identical_predictions(trained, tiles):
    network, meta = load_checkpoint(trained.checkpoint)
    assert meta.level == "L1C" and len(meta.bands) == 13
    again, _ = load_checkpoint(trained.checkpoint)
    dataset = KappaSetDataset(tiles, level="L1C", normalization=(meta.minimum, meta.maximum))
    image = torch.from_numpy(np.stack([dataset[i][0] for i in range(3)]))
    network.eval(), again.eval()
    with torch.inference_mode():
        np.testing.assert_array_equal(network(image).numpy(), again(image).numpy())


def test_resume_continues_the_history(tiles, tmp_path):
    checkpoint = tmp_path / "resumed.pt"
    first = train(tiles, checkpoint=checkpoint, epochs=2, patience=20, **SMALL)
    resumed = train(tiles, checkpoint=checkpoint, epochs=3, patience=20, resume=True, **SMALL)
    assert [e["epoch"] for e in first.history] == [0, 1]
    assert [e["epoch"] for e in resumed.history] == [0, 1, 2]
    assert resumed.history[:2] == first.history
    assert torch.load(checkpoint, weights_only=True)  # a plain dict of tensors and metadata


def test_train_command(tiles, tmp_path, capsys):
    from xcloud.cli import main

    out = tmp_path / "cli.safetensors"
    assert main(["train", "--data", str(tiles), "--out", str(out), "--epochs", "1",
                 "--depth", "3", "--filters", "4", "--quiet"]) == 0
    assert out.exists() and "best epoch 0" in capsys.readouterr().out
