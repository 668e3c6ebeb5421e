"""Compute many chunk tasks in batches, carrying the results later batches share.

Handing a local scheduler every chunk of a scene at once lets it read far ahead, so peak
memory grows with the scene. Batches of neighbouring chunks bound it, but neighbouring batches
share work (halo reads of the same source chunks, the tile sums of
:mod:`xcloud.engine.tile_once`): computed batch by batch, that work would run again in every
batch that needs it. Here each batch also returns the results that a later batch needs, and the
later batch starts from them. Only the frontier is carried: results that a task still to come
depends on directly (not those only needed to make other carried results); a result is dropped
once every task that needs it has run. Row-major batches of a scene therefore hold about one
row of chunks' shared results at a time, and every task runs once.

A ``distributed`` scheduler gets every task at once: it keeps each shared result on a worker
until its last user has run, and its queuing of root tasks keeps it from reading far ahead.
Other schedulers (processes) get plain batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import dask
from dask._task_spec import DataNode  # the task spec's literal (dask >= 2024.12)
from dask.base import collections_to_expr, get_scheduler
from dask.core import get_dependencies
from dask.local import get_sync
from dask.threaded import get as get_threaded
from dask.typing import Key

__all__ = ["compute_in_batches"]


def compute_in_batches(tasks: Sequence[Any], *, batch_size: int, scheduler: Any = None,
                       on_batch: Callable[[int], None] | None = None) -> list[Any]:
    """Compute Dask collections ``tasks`` in order, ``batch_size`` at a time; their results.

    ``on_batch(done)`` is called after each batch with the number of tasks done so far.
    """
    get = get_scheduler(scheduler=scheduler, collections=list(tasks)) if tasks else None
    batches = [list(tasks[i:i + batch_size]) for i in range(0, len(tasks), batch_size)]
    client = _distributed_client(get)
    if client is not None:
        return _all_at_once(client, list(tasks), batch_size, on_batch)
    if get not in (get_threaded, get_sync):
        results: list[Any] = []
        for batch in batches:
            results += dask.compute(*batch, scheduler=scheduler)
            _report(on_batch, len(results))
        return results
    return _carrying(batches, get, on_batch)


def _distributed_client(get: Callable[..., Any] | None) -> Any:
    """The ``distributed`` client whose ``get`` this is, if any."""
    owner = getattr(get, "__self__", None)
    try:
        from distributed import Client
    except ImportError:
        return None
    return owner if isinstance(owner, Client) else None


def _all_at_once(client: Any, tasks: list[Any], batch_size: int,
                 on_batch: Callable[[int], None] | None) -> list[Any]:
    """Every task in one graph: the distributed scheduler keeps each shared result once, on a
    worker, until its last user ran, and queues root tasks (reads) so as not to read ahead."""
    from distributed import as_completed

    futures = client.compute(tasks)
    for done, _ in enumerate(as_completed(futures), start=1):
        if done % batch_size == 0 or done == len(futures):
            _report(on_batch, done)
    return client.gather(futures)


def _report(on_batch: Callable[[int], None] | None, done: int) -> None:
    if on_batch is not None:
        on_batch(done)


def _carrying(batches: list[list[Any]], get: Callable[..., Any],
              on_batch: Callable[[int], None] | None) -> list[Any]:
    graph = dict(collections_to_expr([t for b in batches for t in b],
                                     optimize_graph=True).__dask_graph__())
    dependencies: dict[Key, set[Key]] = {}
    targets = [[task.key for task in batch] for batch in batches]
    last_use: dict[Key, int] = {}
    for index, keys in enumerate(targets):
        for key in _ancestors(keys, graph, dependencies, stop={}):
            last_use[key] = index
    dependents: dict[Key, set[Key]] = {}
    for key, needs in dependencies.items():
        for need in needs:
            dependents.setdefault(need, set()).add(key)
    carried: dict[Key, Any] = {}
    results: list[Any] = []
    for index, keys in enumerate(targets):
        needed = _ancestors(keys, graph, dependencies, stop=carried)
        todo = {key: graph[key] for key in needed if key not in carried}
        available = set(todo) | set(carried)
        frontier = {key for key in available if last_use[key] > index and any(
            last_use.get(user, -1) > index and user not in available
            for user in dependents.get(key, ()))}
        keep = [key for key in todo if key in frontier]
        todo.update({key: DataNode(key, carried[key]) for key in needed if key in carried})
        values = get(todo, [*keys, *keep])
        results += values[:len(keys)]
        carried = {key: value for key, value in carried.items() if key in frontier}
        carried.update(zip(keep, values[len(keys):], strict=True))
        _report(on_batch, len(results))
    return results


def _ancestors(keys: Iterable[Key], graph: Mapping[Key, Any],
               dependencies: dict[Key, set[Key]], stop: Mapping[Key, Any]) -> set[Key]:
    """``keys`` and every key they depend on, not looking past the keys in ``stop``."""
    seen: set[Key] = set()
    pending = list(keys)
    while pending:
        key = pending.pop()
        if key in seen:
            continue
        seen.add(key)
        if key in stop:
            continue
        if key not in dependencies:
            dependencies[key] = set(get_dependencies(graph, key))
        pending.extend(dependencies[key] - seen)
    return seen
