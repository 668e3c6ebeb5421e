"""``train``: fit the KappaMask U-Net on KappaSet-format tiles (the paper's recipe).

The network is the published one (:class:`~xcloud.models.kappamask_unet.KappaMaskUNet`: six
sigmoid output channels in km_predict's order UNDEFINED, CLEAR, CLOUD_SHADOW,
SEMI_TRANSPARENT_CLOUD, CLOUD, MISSING), so a checkpoint trained here is a drop-in for the
published weights (``kappamask-l1c`` / ``kappamask-l2a``, same bands and normalisation).
KappaSet labels (0 MISSING .. 5 UNDEFINED) are mapped to those channels
(:data:`LABEL_TO_CHANNEL`); UNDEFINED pixels are left out of the loss and the metrics.

Soft dice loss on the softmax of the classifier's output (or cross-entropy), Adam, learning
rate reduced when the validation dice stops improving, early stopping on the validation loss, a
random 80/20 train/validation split by tile, the best checkpoint (with its bands and min/max
normalisation) kept, and a resumable state file beside it. CPU works; CUDA is used when
present, with mixed precision. The epochs run in :func:`xcloud.training.loop.fit`.

Importing this module imports no torch (``import xcloud`` imports it for ``xcloud.train``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import import_optional
from .loop import Entry, LoopState, fit, optimiser, torch_device, train_steps

__all__ = ["LABEL_TO_CHANNEL", "N_CLASSES", "UNDEFINED", "TrainResult", "dice_loss",
           "label_channels", "summarize", "train"]

N_CLASSES = 6
"""Output channels of the network (km_predict's classes)."""
UNDEFINED = 0
"""The UNDEFINED channel: pixels labelled UNDEFINED are ignored by the loss and the metrics."""
LABEL_TO_CHANNEL = (5, 1, 2, 3, 4, 0)
"""KappaSet label ``k`` (0 MISSING, 1 CLEAR, 2 CLOUD_SHADOW, 3 SEMI_TRANSPARENT_CLOUD, 4 CLOUD,
5 UNDEFINED) -> the network's channel ``LABEL_TO_CHANNEL[k]`` (0 UNDEFINED, ..., 5 MISSING)."""
_LOSSES = ("dice", "ce")


@dataclass
class TrainResult:
    """What :func:`train` did: per-epoch history and the best checkpoint.

    Attributes
    ----------
    checkpoint
        Where the best epoch's model was written.
    history
        One entry per epoch (``epoch``, training and validation figures, ``learning_rate``).
    best_epoch
        Index in ``history`` of the best epoch; -1 when none ran.
    stopped_early
        Whether early stopping ended the run.
    """

    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False

    @property
    def best(self) -> dict[str, float]:
        """The history entry of the best epoch (lowest validation loss); empty before any."""
        return self.history[self.best_epoch] if self.history else {}


def label_channels(label: Any) -> Any:
    """KappaSet labels as the network's channels (:data:`LABEL_TO_CHANNEL`).

    Parameters
    ----------
    label
        Torch tensor of KappaSet codes 0-5.

    Returns
    -------
    torch.Tensor
        int64 channel indices, on ``label``'s device.
    """
    import torch

    table = torch.tensor(LABEL_TO_CHANNEL, dtype=torch.int64, device=label.device)
    return table[label.long()]


def dice_loss(logits: Any, target: Any, *, ignore_index: int = UNDEFINED,
              eps: float = 1.0) -> Any:
    """1 - the mean soft dice over the channels of the softmax of ``logits``.

    The softmax of the classifier's output, not the published sigmoids: both rank the channels
    alike (the class is the argmax either way), and the softmax trains the 2-channel head far
    more reliably than independent sigmoids from a random start.

    Parameters
    ----------
    logits
        ``(N, C, H, W)`` class scores.
    target
        ``(N, H, W)`` channel indices.
    ignore_index
        Pixels of this channel are left out.
    eps
        Smoothing added to the overlap and the total of each channel.

    Returns
    -------
    torch.Tensor
        The loss, a float32 scalar.
    """
    import torch

    valid = (target != ignore_index).unsqueeze(1)
    proba = torch.softmax(logits.float(), dim=1) * valid
    onehot = torch.nn.functional.one_hot(target.clamp(0, logits.shape[1] - 1),
                                         logits.shape[1]).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    overlap = (proba * onehot).sum(dims)
    total = proba.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * overlap + eps) / (total + eps)).mean()


def _loss_function(name: str) -> Callable[[Any, Any], Any]:
    """The loss called ``name`` (``"dice"`` or ``"ce"``) of logits and channel indices."""
    import torch

    if name == "dice":
        return dice_loss
    cross_entropy = torch.nn.CrossEntropyLoss(ignore_index=UNDEFINED)
    return lambda logits, target: cross_entropy(logits.float(), target)


def _batches(dataset: Any, batch_size: int, *, shuffle: bool, seed: int) -> Any:
    """A torch ``DataLoader`` over ``dataset``, shuffled with its own seeded generator."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       generator=generator, num_workers=0)


@dataclass(frozen=True)
class _Run:
    """One KappaMask run: what its epochs, checkpoints and state file need."""

    model: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    device: Any
    amp: bool
    loss: Callable[[Any, Any], Any]
    train_set: Any
    path: Path
    level: str

    @property
    def state_path(self) -> Path:
        """``<checkpoint>.state.pt``: what ``resume`` needs."""
        return self.path.with_name(self.path.name + ".state.pt")

    def _images_and_channels(self, batch: Any) -> tuple[Any, Any]:
        """A batch's images and labels on the device, labels as channels."""
        image, label = batch
        return image.to(self.device), label_channels(label.to(self.device))

    def step(self, batch: Any) -> tuple[Any, tuple[float, ...]]:
        """The loss of one ``(image, label)`` batch, under autocast when ``amp``."""
        import torch

        image, label = self._images_and_channels(batch)
        with torch.autocast(self.device.type, enabled=self.amp):
            loss = self.loss(self.model.logits(image), label)
        return loss, (float(loss.detach()),)

    def train_epoch(self, loader: Any, progress: bool, epoch: int) -> Entry:
        """One epoch over ``loader``: ``{"train_loss": mean batch loss}`` (NaN if none)."""
        losses = [loss for loss, in train_steps(self.model, loader, self.step, self.optimizer,
                                                scaler=self.scaler, progress=progress,
                                                description=f"epoch {epoch}")]
        return {"train_loss": float(np.mean(losses)) if losses else math.nan}

    def validate(self, loader: Any) -> Entry:
        """``val_loss``, ``val_dice`` (mean over the present channels) and ``val_accuracy``."""
        import torch

        from ..evaluation.metrics import ConfusionMatrix

        self.model.eval()
        matrix = ConfusionMatrix(N_CLASSES, ignore_index=UNDEFINED)
        losses = []
        with torch.inference_mode():
            for batch in loader:
                image, label = self._images_and_channels(batch)
                with torch.autocast(self.device.type, enabled=self.amp):
                    logits = self.model.logits(image)
                losses.append(float(self.loss(logits, label)))
                matrix.update(logits.argmax(1).cpu().numpy(), label.cpu().numpy())
        dice = matrix.dice()
        present = matrix.matrix.sum(1) > 0
        return {"val_loss": float(np.mean(losses)) if losses else math.nan,
                "val_dice": float(np.nanmean(dice[present])) if present.any() else math.nan,
                "val_accuracy": float(matrix.accuracy())}

    def save_best(self, state: LoopState) -> None:
        """The checkpoint, with the bands, min/max normalisation, epoch and history."""
        from ..models.kappamask import save_checkpoint

        minimum, maximum = self.train_set.normalization_range
        save_checkpoint(self.path, self.model, bands=list(self.train_set.features),
                        minimum=minimum, maximum=maximum, level=self.level,
                        extra={"epoch": state.history[-1]["epoch"], "history": state.history})

    def save_state(self, state: LoopState) -> None:
        """Weights, optimiser, scheduler and history to :attr:`state_path`."""
        import torch

        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "epoch": state.history[-1]["epoch"], "bad_epochs": state.bad_epochs,
                    "best_epoch": state.best_epoch, "history": json.dumps(state.history)},
                   self.state_path)

    def load_state(self) -> LoopState:
        """Weights, optimiser and scheduler from :attr:`state_path`; the history so far."""
        import torch

        saved = torch.load(self.state_path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        return LoopState(json.loads(saved["history"]), best_epoch=int(saved["best_epoch"]),
                         bad_epochs=int(saved["bad_epochs"]))


def _default_range(features: Sequence[str], level: str) -> tuple[list[float], list[float]]:
    """km_predict's min/max of the level's U-Net, in the data set's channel order."""
    from ..models.kappamask import bands_of, default_range

    layout = bands_of(level)
    low, high = (dict(zip(layout, values, strict=True)) for values in default_range(level))
    return [low[name] for name in features], [high[name] for name in features]


def _datasets(data: Any, *, level: str, val_fraction: float, seed: int, augment: bool,
              normalization: str, scale: float | None) -> tuple[Any, Any]:
    """The ``(train, validation)`` KappaSet data sets of ``data``, training ones augmented."""
    from ..models.kappamask import bands_of
    from .kappaset import KappaSetDataset

    if isinstance(data, KappaSetDataset):
        dataset = data
    else:  # the published U-Net's bands, in its order (L2A: AOT .. WVP without B07)
        features = bands_of(level)
        scaling = (_default_range(features, level) if normalization == "default"
                   else normalization)
        dataset = KappaSetDataset(data, level=level, features=features, normalization=scaling,
                                  as_tensor=True, scale=scale)
    train_set, val_set = dataset.split(fraction=val_fraction, seed=seed)
    if augment:
        train_set = train_set.with_augmentation(seed=seed)
    return train_set, val_set


def train(
    data: str | os.PathLike[str] | Any,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    model: str | Any = "kappamask",
    level: str = "L1C",
    depth: int = 5,
    filters: int = 64,
    head_channels: int = 2,
    epochs: int = 50,
    batch_size: int = 8,
    learning_rate: float = 1e-4,
    loss: str = "dice",
    val_fraction: float = 0.2,
    patience: int = 10,
    lr_patience: int = 5,
    lr_factor: float = 0.5,
    augment: bool = True,
    normalization: str = "default",
    scale: float | None = None,
    resume: bool = False,
    device: str = "auto",
    amp: bool | None = None,
    seed: int = 0,
    progress: bool = False,
) -> TrainResult:
    """Train a KappaMask U-Net on KappaSet tiles and save the best checkpoint.

    With partial-label data or a SEnSeI-v2 ``model``, train that instead with the ambiguous
    cross-entropy (:func:`xcloud.training.partial.fit_partial`). ``xcloud.train`` is this
    function (:func:`xcloud.training.train.train`); torch is imported on the first call.

    Parameters
    ----------
    data
        Root folder of KappaSet NetCDF tiles (``<month>/<product>/tile_X_Y.nc``) or a
        :class:`~xcloud.training.kappaset.KappaSetDataset`; or
        :class:`~xcloud.training.partial.PartialLabelDataset` (s) of any label schemes.
    checkpoint
        Where the best model goes (``.safetensors`` or ``.pt``; default
        ``kappamask.safetensors``), with its bands and min/max normalisation;
        ``<checkpoint>.state.pt`` beside it holds what ``resume`` needs.
    model
        ``"kappamask"``; or ``"sensei-v2"``, ``"sensei-v2-<head>"`` or a torch module taking
        ``(image, descriptors)``, trained on partial-label ``data`` with ``epochs``,
        ``batch_size``, ``learning_rate``, ``val_fraction``, ``patience``, ``lr_patience``,
        ``lr_factor``, ``device``, ``seed`` and ``progress``; the other options are
        KappaMask's.
    level, depth, filters
        Input layout, the published U-Net's (``"L1C"``: the 13 bands; ``"L2A"``: AOT, 11
        bands without B07 and B10, WVP) and network size (the published 5 levels x 64 filters;
        the paper's grid: 5/6/7 levels x 32/64/128).
    head_channels
        The published 2-channel ReLU layer before the classifier; 0 drops it (it can start
        dead), which makes the checkpoint unlike the published network.
    epochs, batch_size, learning_rate, loss
        Training length, batch, Adam's learning rate and ``"dice"`` (the paper's loss is a
        dice) or ``"ce"`` (cross-entropy), both on the softmax of the classifier's output.
    val_fraction, seed, augment
        Random train/validation split by tile (0.2: the paper's 80/20), its seed, and random
        flips/rotations of training tiles.
    patience, lr_patience, lr_factor
        Stop after ``patience`` epochs without a lower validation loss; multiply the learning
        rate by ``lr_factor`` after ``lr_patience`` epochs without a higher validation dice.
    normalization
        ``"default"``: KappaMask's published min/max (stored in the checkpoint); ``"minmax"``:
        the 1st/99th percentiles of the training data.
    scale
        Factor from the files' band values to reflectance. ``None`` uses them as stored (and
        divides by 10000 values that look like digital numbers); KappaZeta's converter stores
        DN / 65535, for which ``xcloud.training.kappaset.CM_VSM_SCALE`` gives reflectance.
    resume
        Continue from ``<checkpoint>.state.pt`` (weights, optimiser, scheduler, history).
    device, amp
        ``"auto"`` uses CUDA when present; mixed precision defaults to on for CUDA only.
    progress
        Show a progress bar per epoch (tqdm) and a line per epoch.

    Returns
    -------
    TrainResult
        The history, the best epoch and whether it stopped early.

    Raises
    ------
    ValueError
        For an unknown ``loss``, or ``resume`` with partial labels.
    """
    from .partial import fit_partial, is_partial_data

    if not (isinstance(model, str) and model == "kappamask") or is_partial_data(data):
        return fit_partial(data, model=model, checkpoint=checkpoint, epochs=epochs,
                           batch_size=batch_size, learning_rate=learning_rate,
                           val_fraction=val_fraction, patience=patience,
                           lr_patience=lr_patience, lr_factor=lr_factor, resume=resume,
                           device=device, seed=seed, progress=progress)
    torch = import_optional("torch", extra="training")
    from ..models.kappamask_unet import KappaMaskUNet

    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
    torch.manual_seed(seed)
    train_set, val_set = _datasets(data, level=level, val_fraction=val_fraction, seed=seed,
                                   augment=augment, normalization=normalization, scale=scale)
    target = torch_device(device)
    network = KappaMaskUNet(in_channels=train_set.n_features, n_classes=N_CLASSES, depth=depth,
                            filters=filters, head_channels=head_channels).to(target)
    optimizer, scheduler = optimiser(network, learning_rate=learning_rate, lr_factor=lr_factor,
                                     lr_patience=lr_patience, mode="max")
    amp = bool(target.type == "cuda" if amp is None else amp)
    run = _Run(network, optimizer, scheduler, torch.amp.GradScaler(target.type, enabled=amp),
               target, amp, _loss_function(loss), train_set,
               Path("kappamask.safetensors" if checkpoint is None else checkpoint), level)
    state = run.load_state() if resume else LoopState()
    loaders = (_batches(train_set, batch_size, shuffle=True, seed=seed),
               _batches(val_set, batch_size, shuffle=False, seed=seed))
    fit(epochs=epochs, train_epoch=partial(run.train_epoch, loaders[0], progress),
        validate=partial(run.validate, loaders[1]), optimizer=optimizer, scheduler=scheduler,
        monitor=lambda entry: entry["val_loss"], schedule_on=lambda entry: entry["val_dice"],
        patience=patience, state=state, on_best=run.save_best, on_epoch_end=run.save_state,
        describe=_epoch_line if progress else None)
    return TrainResult(run.path, state.history, state.best_epoch, state.stopped_early)


def _epoch_line(entry: Entry) -> str:
    """The line printed after a KappaMask epoch."""
    return (f"epoch {entry['epoch']:>3}: train loss {entry['train_loss']:.4f}, "
            f"val loss {entry['val_loss']:.4f}, val dice {entry['val_dice']:.4f}, "
            f"val accuracy {entry['val_accuracy']:.4f}, lr {entry['learning_rate']:.2e}")


def summarize(result: TrainResult) -> Sequence[str]:
    """Lines describing a finished training run.

    Parameters
    ----------
    result
        What :func:`train` returned.

    Returns
    -------
    list of str
        The best epoch's figures and where the checkpoint is.
    """
    best = result.best
    return [f"best epoch {best.get('epoch')}: val loss {best.get('val_loss', math.nan):.4f}, "
            f"val dice {best.get('val_dice', math.nan):.4f}",
            f"checkpoint: {result.checkpoint}"]
