"""The one training loop of :mod:`xcloud.training`, shared by every trainer.

:func:`fit` runs the epochs: each trains (a ``train_epoch`` callback, which runs
:func:`train_steps`), validates, steps the learning-rate scheduler, keeps track of the best
epoch (``on_best``: write the checkpoint), ends with ``on_epoch_end`` (write a resumable
state) and stops early after ``patience`` epochs without a better one. KappaMask
(:func:`xcloud.training.train.train`) and models trained on partial labels
(:func:`xcloud.training.partial.train_partial`) differ only in the callbacks they pass.

Torch is imported on first use: importing this module imports none.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Entry", "LoopState", "Step", "fit", "optimiser", "progress_bar", "torch_device",
           "train_steps"]

Entry = dict[str, float]
"""One epoch's figures: ``epoch``, training and validation figures, ``learning_rate``."""
Step = Callable[[Any], tuple[Any, tuple[float, ...]]]
"""One batch -> ``(loss to minimise, figures to log)``."""


@dataclass
class LoopState:
    """The epochs run so far, for :func:`fit` to continue from.

    Attributes
    ----------
    history
        One :data:`Entry` per epoch, in order (``history[i]["epoch"] == i``).
    best_epoch
        Index in ``history`` of the epoch with the lowest monitored value; -1 before any.
    bad_epochs
        Epochs since the best one.
    stopped_early
        Whether ``patience`` ended the run.
    """

    history: list[Entry] = field(default_factory=list)
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False


def torch_device(name: str) -> Any:
    """The torch device called ``name``.

    Parameters
    ----------
    name
        ``"auto"`` (CUDA when present, else the CPU) or a torch device name.

    Returns
    -------
    torch.device
        The device.
    """
    import torch

    from ..engine.device import resolve_device

    return torch.device(resolve_device(name))


def progress_bar(iterable: Iterable[Any], *, show: bool, description: str) -> Iterator[Any]:
    """The items of ``iterable``, behind a tqdm bar when ``show`` and tqdm is installed.

    Parameters
    ----------
    iterable
        What to go through.
    show
        Whether to show the bar.
    description
        The bar's label.

    Yields
    ------
    object
        The items of ``iterable``.
    """
    if show:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            show = False
    yield from (tqdm(iterable, desc=description, leave=False) if show else iterable)


def optimiser(model: Any, *, learning_rate: float, lr_factor: float, lr_patience: int,
              mode: Literal["min", "max"] = "min") -> tuple[Any, Any]:
    """Adam on ``model``'s parameters and a scheduler reducing its rate on a plateau.

    Parameters
    ----------
    model
        The torch module to train.
    learning_rate
        Adam's learning rate.
    lr_factor, lr_patience
        Multiply the rate by ``lr_factor`` after ``lr_patience`` epochs without a better
        scheduled value.
    mode
        ``"min"``: lower scheduled values are better; ``"max"``: higher ones.

    Returns
    -------
    optimizer, scheduler
        ``torch.optim.Adam`` and ``torch.optim.lr_scheduler.ReduceLROnPlateau``.
    """
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode,
                                                           factor=lr_factor,
                                                           patience=lr_patience)
    return optimizer, scheduler


def train_steps(model: Any, batches: Iterable[Any], step: Step, optimizer: Any, *,
                scaler: Any, progress: bool = False,
                description: str = "") -> list[tuple[float, ...]]:
    """One epoch of optimiser steps: ``step`` on each batch, backward pass, update.

    Parameters
    ----------
    model
        The torch module, put in training mode.
    batches
        The epoch's batches, in order.
    step
        A batch -> ``(loss, figures)``: the loss to minimise and the figures to log.
    optimizer
        The torch optimiser stepped after each batch.
    scaler
        A ``torch.amp.GradScaler`` (disabled: plain backward pass and step).
    progress, description
        A progress bar and its label.

    Returns
    -------
    list of tuple of float
        Each batch's figures, in order.
    """
    model.train()
    figures = []
    for batch in progress_bar(batches, show=progress, description=description):
        optimizer.zero_grad(set_to_none=True)
        loss, logged = step(batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        figures.append(logged)
    return figures


def fit(
    *,
    epochs: int,
    train_epoch: Callable[[int], Entry],
    validate: Callable[[], Entry],
    optimizer: Any,
    scheduler: Any,
    monitor: Callable[[Entry], float],
    schedule_on: Callable[[Entry], float] | None = None,
    patience: int | None = None,
    state: LoopState | None = None,
    on_best: Callable[[LoopState], None] | None = None,
    on_epoch_end: Callable[[LoopState], None] | None = None,
    describe: Callable[[Entry], str] | None = None,
) -> LoopState:
    """Run epochs up to ``epochs``: train, validate, schedule, keep the best, stop early.

    Parameters
    ----------
    epochs
        The epoch to stop before (counted from 0, resumed runs included).
    train_epoch
        Epoch number -> the training figures (``train_loss``, ...); trains the model.
    validate
        () -> the validation figures (``val_loss``, ...; empty without validation data).
    optimizer
        The torch optimiser, whose first group's rate goes in ``learning_rate``.
    scheduler
        A ``ReduceLROnPlateau`` stepped on ``schedule_on`` after each epoch.
    monitor
        Entry -> the value whose minimum is the best epoch.
    schedule_on
        Entry -> the value the scheduler is stepped on (default: ``monitor``).
    patience
        Stop after ``patience`` epochs without a lower monitored value (``None``: never).
    state
        Where a resumed run stands (default: a new run); continued at epoch
        ``len(state.history)`` and updated in place.
    on_best
        Called with the state when an epoch is the best so far (write the checkpoint).
    on_epoch_end
        Called with the state at the end of each epoch (write a resumable state).
    describe
        Entry -> a line printed after each epoch (``None``: none printed).

    Returns
    -------
    LoopState
        ``state``, with the new epochs.
    """
    state = LoopState() if state is None else state
    for epoch in range(len(state.history), epochs):
        entry = {"epoch": epoch, **train_epoch(epoch), **validate(),
                 "learning_rate": optimizer.param_groups[0]["lr"]}
        state.history.append(entry)
        scheduler.step((schedule_on or monitor)(entry))
        if _improves(state, monitor):
            state.best_epoch, state.bad_epochs = len(state.history) - 1, 0
            if on_best is not None:
                on_best(state)
        else:
            state.bad_epochs += 1
        if on_epoch_end is not None:
            on_epoch_end(state)
        if describe is not None:
            print(describe(entry), flush=True)
        if patience is not None and state.bad_epochs >= patience:
            state.stopped_early = True
            break
    return state


def _improves(state: LoopState, monitor: Callable[[Entry], float]) -> bool:
    """Whether the last epoch's monitored value is below the best epoch's."""
    best = monitor(state.history[state.best_epoch]) if state.best_epoch >= 0 else math.inf
    return monitor(state.history[-1]) < best
