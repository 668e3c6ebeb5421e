"""LightGBM text models as flat arrays, evaluated by numba kernels exactly as LightGBM does.

:func:`parse_model` reads a model saved by ``lightgbm.Booster.save_model`` (numerical splits
only; categorical splits and linear trees raise) into a :class:`TreeEnsemble`;
:meth:`TreeEnsemble.predict_raw` and :meth:`TreeEnsemble.predict` give the raw score and the
probability of ``lightgbm.Booster.predict`` (``raw_score=True`` and default), bit for bit.

Exactness. LightGBM reads a dense row as doubles and drops values with
``|x| <= kZeroThreshold`` (the float ``1e-35f``), which then read as 0; at each node
(``NumericalDecision``) a NaN becomes 0 unless the node's missing type is ``NaN``; a missing
value (``Zero``: a zero, ``NaN``: a NaN) goes to the default child (``default_left`` bit),
any other value left iff ``value <= threshold``; the tree outputs are summed in tree order in
double, starting from 0, and the binary objective maps the sum ``s`` to
``1 / (1 + exp(-sigmoid * s))``. The kernels do the same operations in the same order.
For float32 input each threshold ``t`` is replaced by the largest float32 ``<= t``: for a
float32 ``x``, ``x <= t`` holds exactly when ``x <= float32_floor(t)``, so the comparisons
run in float32 with the same outcome.

Layout. Every tree is stored in depth-first preorder, leaves included: a node's left child is
the next node, and ``step[node] = (1, offset of the right child)`` moves a walk by
``step[node, not (x <= threshold)]``, a load instead of a branch. A leaf steps by 0 either
way (and has a NaN threshold), so a walk that reached a leaf stays there. Buffer offsets and
steps are uint16 when the model allows it (smaller trees stay in L1 cache).

Kernels. Models whose nodes all have missing type ``None`` (the common case, and
s2cloudless's booster) take the fast kernel: rows are copied in blocks of ``_BLOCK`` into a
feature-major buffer (NaN -> 0 there, as every node would do), and each tree walks eight rows
at once with branch-free steps until none of them moves (the eight independent walks hide
the latency of each other's loads; the tree stays in L1 cache over the whole block). On one
2-core AMD EPYC this runs about 5x faster per core than ``lightgbm.Booster.predict`` (see
``benchmarks/bench_s2cloudless.py``). Other
models take a plain walk per row and tree that follows ``NumericalDecision`` line by line.
:meth:`TreeEnsemble.predict_raw` runs the serial kernel (it releases the GIL: Dask threads run
it side by side) unless ``threads`` asks for more, in which case numba's parallel kernel
(``prange`` over chunks of rows) runs on that many threads; arrays below
:data:`PARALLEL_MIN_ROWS` rows always run serially. One parallel call runs at a time in a
process (a concurrent caller runs serially instead), which keeps numba's ``workqueue``
threading layer, which is not thread-safe, safe too.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

__all__ = ["PARALLEL_MIN_ROWS", "ZERO_THRESHOLD", "TreeEnsemble", "load_model", "parse_model"]

ZERO_THRESHOLD = float(np.float32(1e-35))
"""LightGBM's ``kZeroThreshold``: the float ``1e-35f`` as a double."""

PARALLEL_MIN_ROWS = 65536
"""Arrays with fewer rows run on the serial kernel whatever ``threads`` says."""

_CATEGORICAL = 1  # decision_type bits, as in LightGBM's tree.h
_DEFAULT_LEFT = 2
_MISSING_ZERO = 1  # missing type: (decision_type >> 2) & 3
_MISSING_NAN = 2
_LEAF = 128  # xcloud's own mark in `decision` for leaf nodes
_BLOCK = 256  # rows per block in the fast kernel (feature-major buffer of _BLOCK x features)
_CHUNK = 16 * _BLOCK  # rows per parallel work item

_jit = numba.njit(cache=True, nogil=True)
_inline = numba.njit(cache=True, nogil=True, inline="always")
_PARALLEL_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tree:
    """One tree as LightGBM writes it: internal nodes in split order, leaves as ``~leaf``."""

    split_feature: np.ndarray
    threshold: np.ndarray
    decision_type: np.ndarray
    left_child: np.ndarray
    right_child: np.ndarray
    leaf_value: np.ndarray


def _key_values(lines: list[str]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _array(fields: dict[str, str], key: str, dtype: type, count: int) -> np.ndarray:
    values: np.ndarray = np.array(fields.get(key, "").split(), dtype=dtype)
    if values.shape != (count,):
        raise ValueError(f"tree field {key!r} has {values.size} values, expected {count}")
    return values


def _parse_tree(fields: dict[str, str]) -> _Tree:
    leaves = int(fields["num_leaves"])
    if int(fields.get("num_cat", "0")) > 0:
        raise ValueError("categorical splits are not supported by xcloud's LightGBM evaluator")
    if int(fields.get("is_linear", "0")):
        raise ValueError("linear trees are not supported by xcloud's LightGBM evaluator")
    nodes = leaves - 1
    tree = _Tree(
        split_feature=_array(fields, "split_feature", np.int64, nodes),
        threshold=_array(fields, "threshold", np.float64, nodes),
        decision_type=_array(fields, "decision_type", np.int64, nodes),
        left_child=_array(fields, "left_child", np.int64, nodes),
        right_child=_array(fields, "right_child", np.int64, nodes),
        leaf_value=_array(fields, "leaf_value", np.float64, leaves),
    )
    if np.any(tree.decision_type & _CATEGORICAL):
        raise ValueError("categorical splits are not supported by xcloud's LightGBM evaluator")
    return tree


def _sigmoid(objective: str) -> float | None:
    """The sigmoid coefficient of a ``binary`` objective, ``None`` for other objectives."""
    name, *options = objective.split()
    if name != "binary":
        return None
    settings = dict(option.split(":", 1) for option in options if ":" in option)
    return float(settings.get("sigmoid", 1.0))


def _split_blocks(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Header fields and one field dict per ``Tree=`` block."""
    body = text.split("end of trees", 1)[0]
    header, *blocks = body.split("\nTree=")
    return _key_values(header.splitlines()), [_key_values(b.splitlines()) for b in blocks]


def parse_model(text: str) -> TreeEnsemble:
    """A :class:`TreeEnsemble` from the text of a LightGBM model file.

    Raises
    ------
    ValueError
        For categorical splits, linear trees, multi-class models and averaged (random
        forest) output, which the kernels do not evaluate.
    """
    header, blocks = _split_blocks(text)
    if int(header.get("num_tree_per_iteration", "1")) != 1:
        raise ValueError("multi-class LightGBM models are not supported")
    if "average_output" in header:
        raise ValueError("LightGBM models with averaged output (rf) are not supported")
    if not blocks:
        raise ValueError("the LightGBM model has no trees")
    trees = [_parse_tree(fields) for fields in blocks]
    n_features = int(header["max_feature_idx"]) + 1
    return _flatten(trees, n_features, _sigmoid(header.get("objective", "")))


def load_model(path: str | Path) -> TreeEnsemble:
    """:func:`parse_model` of a LightGBM model file."""
    return parse_model(Path(path).read_text())


# --------------------------------------------------------------------------------------------
# preorder layout
# --------------------------------------------------------------------------------------------


def _concatenated(trees: list[_Tree]) -> dict[str, np.ndarray]:
    """All trees' arrays end to end; children and leaves index the concatenation."""
    node_base = np.cumsum([0] + [t.threshold.size for t in trees])
    leaf_base = np.cumsum([0] + [t.leaf_value.size for t in trees])

    def children(name: str) -> np.ndarray:
        parts = []
        for tree, nodes, leaves in zip(trees, node_base, leaf_base, strict=False):
            child = getattr(tree, name)
            parts.append(np.where(child >= 0, child + nodes, ~(~child + leaves)))
        return np.concatenate(parts)

    roots = [nodes if t.threshold.size else ~leaves
             for t, nodes, leaves in zip(trees, node_base, leaf_base, strict=False)]
    return {
        "feature": np.concatenate([t.split_feature for t in trees]),
        "threshold": np.concatenate([t.threshold for t in trees]),
        "decision": np.concatenate([t.decision_type for t in trees]),
        "left": children("left_child"),
        "right": children("right_child"),
        "leaf_value": np.concatenate([t.leaf_value for t in trees]),
        "roots": np.asarray(roots, np.int64),
    }


@_jit
def _preorder(roots: np.ndarray, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
              threshold: np.ndarray, decision: np.ndarray, leaf_value: np.ndarray,
              n_features: int) -> tuple[np.ndarray, ...]:
    """Depth-first preorder arrays of all trees: feature, right-child offset, threshold,
    decision, value, and each tree's first node."""
    size = left.size + leaf_value.size
    features = np.full(size, n_features, np.int64)
    offsets = np.zeros(size, np.int64)
    thresholds = np.full(size, np.nan)
    decisions = np.full(size, _LEAF, np.uint8)
    values = np.zeros(size)
    starts = np.empty(roots.size, np.int64)
    stack = np.empty(2 * size + 2, np.int64)  # pairs (source node, parent awaiting its right)
    position = 0
    for tree in range(roots.size):
        starts[tree] = position
        stack[0], stack[1], depth = roots[tree], -1, 1
        while depth:
            depth -= 1
            node, parent = stack[2 * depth], stack[2 * depth + 1]
            if parent >= 0:
                offsets[parent] = position - parent
            if node < 0:
                values[position] = leaf_value[~node]
            else:
                features[position] = feature[node]
                thresholds[position] = threshold[node]
                decisions[position] = decision[node]
                stack[2 * depth], stack[2 * depth + 1] = right[node], position
                stack[2 * depth + 2], stack[2 * depth + 3] = left[node], -1
                depth += 2
            position += 1
    return features, offsets, thresholds, decisions, values, starts


def _float32_floor(values: np.ndarray) -> np.ndarray:
    """The largest float32 <= each value (NaN stays NaN, values beyond float32 saturate)."""
    with np.errstate(over="ignore"):
        rounded = values.astype(np.float32)
    above = rounded.astype(np.float64) > values
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def _smallest_uint(values: np.ndarray) -> np.ndarray:
    """``values`` as uint16 when they fit, else uint32."""
    dtype = np.uint16 if values.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    return values.astype(dtype)


def _flatten(trees: list[_Tree], n_features: int, sigmoid: float | None) -> TreeEnsemble:
    flat = _concatenated(trees)
    if flat["feature"].size and (flat["feature"].min() < 0
                                 or flat["feature"].max() >= n_features):
        raise ValueError("a split feature lies outside max_feature_idx")
    feature, offset, threshold, decision, value, roots = _preorder(
        flat["roots"], flat["left"], flat["right"], flat["feature"], flat["threshold"],
        flat["decision"].astype(np.uint8), flat["leaf_value"], n_features)
    inner = decision != _LEAF
    step = np.stack([inner.astype(np.int64), offset], axis=1)
    missing = (decision[inner] >> 2) & 3
    return TreeEnsemble(feature=feature.astype(np.int32),
                        buffer_offset=_smallest_uint(feature * _BLOCK),
                        step=_smallest_uint(step), threshold=threshold,
                        threshold32=_float32_floor(threshold), decision=decision, value=value,
                        roots=roots, n_features=n_features, sigmoid=sigmoid,
                        simple=not missing.any())


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------


@_inline
def _output(raw: float, sigmoid: float, transform: bool) -> float:
    """LightGBM's binary ``ConvertOutput`` (or the raw score)."""
    if transform:
        return 1.0 / (1.0 + math.exp(-sigmoid * raw))
    return raw


@_inline
def _load_block(x: np.ndarray, start: int, count: int, buffer: np.ndarray) -> None:
    """Rows ``start:start + count`` into ``buffer[feature * _BLOCK + row]``; NaN and values
    LightGBM drops as zero become 0, and the rows after ``count`` are 0."""
    zero = buffer.dtype.type(0)
    for j in range(x.shape[1]):
        row = buffer[j * _BLOCK:(j + 1) * _BLOCK]
        for i in range(count):
            value = x[start + i, j]
            row[i] = zero if np.isnan(value) or abs(value) <= ZERO_THRESHOLD else value
        for i in range(count, _BLOCK):
            row[i] = zero


@_inline
def _step(lanes: np.ndarray, model: tuple, node: np.uintp, lane: np.uintp) -> np.uintp:
    """One branch-free step of one walk: the next node (``node`` itself at a leaf)."""
    buffer_offset, step, threshold = model
    value = lanes[np.uintp(buffer_offset[node]) + lane]
    right = np.uintp(not value <= threshold[node])
    return node + np.uintp(step[node, right])


@_inline
def _tree_block(lanes: np.ndarray, model: tuple, value: np.ndarray, root: np.uintp,
                raw: np.ndarray) -> None:
    """Add one tree's output to ``raw`` for the 8 rows whose features start ``lanes``."""
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = root
    while True:
        a0 = _step(lanes, model, n0, np.uintp(0))
        a1 = _step(lanes, model, n1, np.uintp(1))
        a2 = _step(lanes, model, n2, np.uintp(2))
        a3 = _step(lanes, model, n3, np.uintp(3))
        a4 = _step(lanes, model, n4, np.uintp(4))
        a5 = _step(lanes, model, n5, np.uintp(5))
        a6 = _step(lanes, model, n6, np.uintp(6))
        a7 = _step(lanes, model, n7, np.uintp(7))
        still = ((a0 == n0) & (a1 == n1) & (a2 == n2) & (a3 == n3)
                 & (a4 == n4) & (a5 == n5) & (a6 == n6) & (a7 == n7))
        n0, n1, n2, n3, n4, n5, n6, n7 = a0, a1, a2, a3, a4, a5, a6, a7
        if still:
            break
    raw[0] += value[n0]
    raw[1] += value[n1]
    raw[2] += value[n2]
    raw[3] += value[n3]
    raw[4] += value[n4]
    raw[5] += value[n5]
    raw[6] += value[n6]
    raw[7] += value[n7]


@_jit
def _rows_fast(x: np.ndarray, start: int, stop: int, walk: tuple, value: np.ndarray,
               roots: np.ndarray, sigmoid: float, transform: bool, out: np.ndarray) -> None:
    """Rows ``start:stop`` of a model without missing-value handling, block by block;
    ``walk`` is (buffer_offset, step, threshold in the input's precision)."""
    buffer = np.zeros(_BLOCK * (x.shape[1] + 1), walk[2].dtype)  # last row: leaves' feature
    raw = np.empty(_BLOCK)
    for first in range(start, stop, _BLOCK):
        count = min(_BLOCK, stop - first)
        _load_block(x, first, count, buffer)
        raw[:] = 0.0
        for tree in range(roots.size):
            root = np.uintp(roots[tree])
            for lane in range(0, _BLOCK, 8):
                _tree_block(buffer[lane:], walk, value, root, raw[lane:lane + 8])
        for i in range(count):
            out[first + i] = _output(raw[i], sigmoid, transform)


@_inline
def _decide(value: float, node: int, threshold: np.ndarray, decision: np.ndarray) -> bool:
    """LightGBM's ``NumericalDecision``: True to go left."""
    kind = decision[node]
    missing = (kind >> 2) & 3
    if np.isnan(value) and missing != _MISSING_NAN:
        value = 0.0
    if ((missing == _MISSING_ZERO and -ZERO_THRESHOLD < value <= ZERO_THRESHOLD)
            or (missing == _MISSING_NAN and np.isnan(value))):
        return (kind & _DEFAULT_LEFT) != 0
    return value <= threshold[node]


@_jit
def _rows_general(x: np.ndarray, start: int, stop: int, feature: np.ndarray,
                  step: np.ndarray, threshold: np.ndarray, decision: np.ndarray,
                  value: np.ndarray, roots: np.ndarray, sigmoid: float, transform: bool,
                  out: np.ndarray) -> None:
    """Rows ``start:stop`` of any numerical model, one row and tree at a time."""
    row = np.empty(x.shape[1])
    for i in range(start, stop):
        for j in range(x.shape[1]):
            v = np.float64(x[i, j])
            row[j] = 0.0 if abs(v) <= ZERO_THRESHOLD else v
        raw = 0.0
        for tree in range(roots.size):
            node = roots[tree]
            while decision[node] != _LEAF:
                left = _decide(row[feature[node]], node, threshold, decision)
                node += step[node, 0 if left else 1]
            raw += value[node]
        out[i] = _output(raw, sigmoid, transform)


@_inline
def _rows(x: np.ndarray, start: int, stop: int, model: tuple, sigmoid: float, transform: bool,
          simple: bool, out: np.ndarray) -> None:
    """Rows ``start:stop`` on the fast kernel (``simple``) or the general one."""
    feature, buffer_offset, step, threshold, threshold64, decision, value, roots = model
    if simple:
        _rows_fast(x, start, stop, (buffer_offset, step, threshold), value, roots, sigmoid,
                   transform, out)
    else:
        _rows_general(x, start, stop, feature, step, threshold64, decision, value, roots,
                      sigmoid, transform, out)


@_jit
def _predict_serial(x: np.ndarray, model: tuple, sigmoid: float, transform: bool,
                    simple: bool, out: np.ndarray) -> None:
    """All rows on the calling thread (GIL released)."""
    _rows(x, 0, x.shape[0], model, sigmoid, transform, simple, out)


@numba.njit(cache=True, nogil=True, parallel=True)
def _predict_parallel(x: np.ndarray, model: tuple, sigmoid: float, transform: bool,
                      simple: bool, out: np.ndarray) -> None:
    """Chunks of ``_CHUNK`` rows on numba's threads."""
    chunks = (x.shape[0] + _CHUNK - 1) // _CHUNK
    for chunk in numba.prange(chunks):
        start = chunk * _CHUNK
        _rows(x, start, min(start + _CHUNK, x.shape[0]), model, sigmoid, transform, simple, out)


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """A LightGBM model's trees in preorder arrays (see the module's notes).

    Per node: ``feature`` (``n_features`` at leaves) and ``buffer_offset`` (feature times the
    block size), ``step`` (nodes to move: left, right), ``threshold``/``threshold32`` (NaN at
    leaves; float64, and rounded down to float32), ``decision`` (LightGBM's decision type,
    ``128`` at leaves) and ``value`` (leaf output, 0 elsewhere); ``roots`` holds each tree's
    first node. ``sigmoid`` is the binary objective's coefficient (``None`` for other
    objectives); ``simple`` tells that no node handles missing values (the fast kernel runs).
    """

    feature: np.ndarray
    buffer_offset: np.ndarray
    step: np.ndarray
    threshold: np.ndarray
    threshold32: np.ndarray
    decision: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    n_features: int
    sigmoid: float | None
    simple: bool

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return int(self.roots.size)

    def predict_raw(self, features: np.ndarray, *, threads: int | None = 1) -> np.ndarray:
        """Raw scores (float64, one per row) of ``features`` (rows, features).

        Parameters
        ----------
        features
            Float32 or float64 (other dtypes become float32, as in LightGBM), any strides.
        threads
            1: the serial kernel, which releases the GIL (inside Dask tasks); ``n > 1``:
            numba's parallel kernel on ``n`` threads (at most numba's thread count);
            ``None``: on all of numba's threads. Arrays of fewer than
            :data:`PARALLEL_MIN_ROWS` rows always run serially.
        """
        return self._run(features, threads, transform=False)

    def predict(self, features: np.ndarray, *, threads: int | None = 1) -> np.ndarray:
        """Probabilities (float64) as ``lightgbm.Booster.predict``; see :meth:`predict_raw`."""
        if self.sigmoid is None:
            raise ValueError("probabilities need a binary objective; use predict_raw")
        return self._run(features, threads, transform=True)

    def _run(self, features: np.ndarray, threads: int | None, *, transform: bool) -> np.ndarray:
        x = _as_features(features, self.n_features)
        out = np.empty(x.shape[0])
        threshold = self.threshold32 if x.dtype == np.float32 else self.threshold
        model = (self.feature, self.buffer_offset, self.step, threshold, self.threshold,
                 self.decision, self.value, self.roots)
        args = (x, model, float(self.sigmoid or 1.0), transform, self.simple, out)
        # numba.config sets its settings at run time, so mypy does not see them
        max_threads: int = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
        threads = max_threads if threads is None else int(threads)
        if threads > 1 and x.shape[0] >= PARALLEL_MIN_ROWS and _PARALLEL_LOCK.acquire(False):
            try:
                _run_parallel(args, min(threads, max_threads))
            finally:
                _PARALLEL_LOCK.release()
        else:
            _predict_serial(*args)
        return out


def _run_parallel(args: tuple, threads: int) -> None:
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        _predict_parallel(*args)
    finally:
        numba.set_num_threads(previous)


def _as_features(features: np.ndarray, n_features: int) -> np.ndarray:
    x = np.asarray(features)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"features must have shape (rows, {n_features}), got {x.shape}")
    return x
