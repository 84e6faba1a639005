"""The trees of a TreeEnsemble walked by a loop that numba compiles to machine code.

The numpy walk (api/fast/trees.py) spends most of a one-row call on numpy's per-call overhead: a gather per
level over all trees is a handful of array allocations, each costing more than the arithmetic. A compiled
loop over the same flat arrays visits only the nodes on each row's path, allocates one output array and
returns. One row walks the trees as CompleteLevels pads them (api/fast/trees.py), four at a time, with
no child pointers to read. The jitted functions are this module's own code, generic over the arrays: a model supplies data
only (the arrays TreeEnsemble reads from XGBoost's JSON), never code. Numba specialises the functions on
the arrays' dtypes, so models whose arrays have the same types share one compilation, and `cache=True`
keeps it on disk across processes: in NUMBA_CACHE_DIR (api/Dockerfile, api/k8s/base set it to a writable
directory; numba's default, a __pycache__ beside this file, is read-only in the image). That cache holds
pickles that numba loads: it must be a directory only this service writes (the pod's own emptyDir).

It replays XGBoost's arithmetic exactly as the numpy walk does: float32 features and split conditions,
`value < condition` goes left, a NaN takes the node's default branch, leaf values added in float32 in tree
order onto the base margin, then the float32 logistic function. No fastmath: it would let LLVM assume no
NaN (dropping the default branches) and reorder the float32 sum.

`compile_walk(trees, width)` is the CompiledWalk, or None (with one log line) when numba is missing or
fails: the numpy walk then serves, as it did before this module. Without a writable cache directory it
compiles uncached (with one log line), at every process start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from api.fast.trees import TreeEnsemble

log = logging.getLogger(__name__)


def _probabilities(
    matrix: Any,
    features: Any,
    conditions: Any,
    left: Any,
    right: Any,
    default_left: Any,
    roots: Any,
    depth: int,
    base_margin: Any,
) -> Any:
    """P(class 1) per row of a float64 matrix; compiled by numba (see _kernel)."""
    rows = matrix.shape[0]
    margins = np.full(rows, base_margin, dtype=np.float32)
    # Tree by tree, each over every row: a tree's nodes stay in cache across the rows, and each row's
    # margin still takes the trees in order, as XGBoost sums them.
    for tree in range(roots.shape[0]):
        root = np.int64(roots[tree])
        for row in range(rows):
            node = root
            # At most `depth` steps (leaves point at themselves), so a malformed tree cannot loop forever.
            for _ in range(depth):
                if left[node] == node:
                    break
                value = np.float32(matrix[row, features[node]])
                if np.isnan(value):
                    go_left = default_left[node]
                else:
                    go_left = value < conditions[node]
                node = left[node] if go_left else right[node]
            margins[row] += conditions[node]  # a leaf's value is stored in its split condition
    probabilities = np.empty(rows, dtype=np.float64)
    one = np.float32(1.0)
    for row in range(rows):
        probabilities[row] = one / (one + np.exp(-margins[row]))
    return probabilities


def _row_probability(
    row: Any,
    features: Any,
    conditions: Any,
    default_right: Any,
    leaves: Any,
    trees: int,
    depth: int,
    base_margin: Any,
) -> float:
    """P(class 1) of one float64 row, over the trees as CompleteLevels lays them out (api/fast/trees.py):
    level by level, tree after tree, so that a node's children are found by arithmetic, not by reading two
    more arrays. Four trees are walked side by side: each walk is a chain of dependent loads, and four
    independent chains keep the processor busy while each waits (measured: 12 µs for 336 trees of depth
    5 walked one by one with child pointers, 5 µs like this). Their leaves are still added one tree after
    the other, in XGBoost's order."""
    margin = np.float32(base_margin)
    tree = 0
    while tree + 4 <= trees:
        a = b = c = d = 0
        for level in range(depth):
            width = 1 << level
            start = trees * (width - 1) + tree * width
            # Right at or above the condition, left below it; NaN (neither) takes the default branch.
            # Without a branch: a mispredicted one costs more than the two comparisons.
            at, value = start + a, np.float32(row[features[start + a]])
            a = 2 * a + ((value >= conditions[at]) | ((value != value) & (default_right[at] != 0)))
            at, value = start + width + b, np.float32(row[features[start + width + b]])
            b = 2 * b + ((value >= conditions[at]) | ((value != value) & (default_right[at] != 0)))
            at, value = start + 2 * width + c, np.float32(row[features[start + 2 * width + c]])
            c = 2 * c + ((value >= conditions[at]) | ((value != value) & (default_right[at] != 0)))
            at, value = start + 3 * width + d, np.float32(row[features[start + 3 * width + d]])
            d = 2 * d + ((value >= conditions[at]) | ((value != value) & (default_right[at] != 0)))
        margin += leaves[(tree << depth) + a]
        margin += leaves[((tree + 1) << depth) + b]
        margin += leaves[((tree + 2) << depth) + c]
        margin += leaves[((tree + 3) << depth) + d]
        tree += 4
    while tree < trees:  # the last trees, fewer than four
        a = 0
        for level in range(depth):
            width = 1 << level
            at = trees * (width - 1) + tree * width + a
            value = np.float32(row[features[at]])
            a = 2 * a + ((value >= conditions[at]) | ((value != value) & (default_right[at] != 0)))
        margin += leaves[(tree << depth) + a]
        tree += 1
    one = np.float32(1.0)
    return float(one / (one + np.exp(-margin)))


_Kernel = Callable[..., Any]
_compiled: dict[str, _Kernel] = {}
_uncached_logged = False


def _kernel(name: str = "probabilities") -> _Kernel:
    """A walk under numba.njit (`probabilities` for a matrix, `row` for one row), created on first use:
    importing numba costs 0.1-0.3 s, which a service that never serves trees should not pay. Raises
    whatever numba raises."""
    kernel = _compiled.get(name)
    if kernel is None:
        import numba

        # error_model="numpy": a float division follows IEEE 754 instead of raising (it never divides by
        # zero here, but the check would cost a branch). nogil: a batch scored in a worker thread leaves
        # the event loop free.
        options: dict[str, Any] = {"nogil": True, "error_model": "numpy"}
        kernel = _jit(numba, _probabilities if name == "probabilities" else _row_probability, options)
        _compiled[name] = kernel
    return kernel


def _jit(numba: Any, function: Callable[..., Any], options: dict[str, Any]) -> _Kernel:
    try:
        jitted: _Kernel = numba.njit(cache=True, **options)(function)
    except RuntimeError as error:  # numba found no writable cache directory
        global _uncached_logged
        if not _uncached_logged:  # one line for both walks
            _uncached_logged = True
            log.warning(
                "the compiled tree walk is not cached (%s): every process compiles it; set "
                "NUMBA_CACHE_DIR to a writable directory",
                error,
            )
        jitted = numba.njit(**options)(function)
    return jitted


class CompiledWalk:
    """The compiled loop bound to one TreeEnsemble's arrays, compiled (or read from the disk cache) by the
    constructor, so that no request pays for it."""

    def __init__(self, trees: TreeEnsemble, width: int) -> None:
        nodes = trees.conditions.size
        # The compiled loop reads without bounds checks: an index out of range would read past an array
        # instead of raising, so every index the data holds is checked once here.
        in_range = all(
            array.size == 0 or (int(array.min()) >= 0 and int(array.max()) < nodes)
            for array in (trees.left, trees.right, trees.roots)
        )
        if not in_range or (trees.features.size and int(trees.features.max()) >= width):
            raise ValueError("a tree's child, root or feature index is out of range")
        kernel = _kernel()
        self._arguments = (
            trees.features,
            trees.conditions,
            trees.left,
            trees.right,
            trees.default_left,
            trees.roots,
            trees.depth,
            trees.base_margin,
        )
        self._kernel = kernel
        # Compiles for these arrays' types now, at load time, from the cache when it has them.
        kernel(np.zeros((1, width), dtype=np.float64), *self._arguments)
        # One row walks the complete levels, where the trees are shallow enough to have them.
        self._row_kernel: _Kernel | None = None
        levels = trees.levels
        if levels is not None:
            self._row_arguments = (
                np.concatenate(levels.features),
                np.concatenate(levels.conditions),
                np.concatenate(levels.default_right),
                levels.leaf_values,
                trees.roots.size,
                levels.depth,
                trees.base_margin,
            )
            self._row_kernel = _kernel("row")
            self._row_kernel(np.zeros(width, dtype=np.float64), *self._row_arguments)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """P(class 1) for each row of a matrix (n_rows, width)."""
        # Numba compiles anew for another dtype or memory layout: on a request, that would be a second of
        # compiling. A C-contiguous float64 matrix, which is what the predictor passes, is not copied.
        result: np.ndarray = self._kernel(np.ascontiguousarray(matrix, dtype=np.float64), *self._arguments)
        return result

    def predict_row(self, row: np.ndarray) -> float:
        """P(class 1) for one float64 row (width,), missing values (NaN) included."""
        if self._row_kernel is not None:
            probability: float = self._row_kernel(row, *self._row_arguments)
            return probability
        return float(self._kernel(row.reshape(1, -1), *self._arguments)[0])


def compile_walk(trees: TreeEnsemble, width: int) -> CompiledWalk | None:
    """The compiled walk of `trees`, or None when numba cannot give one (not installed, a compilation
    error) or the trees hold an index out of range: the caller then walks with numpy."""
    try:
        return CompiledWalk(trees, width)
    except Exception as error:  # a missing or broken compiler must cost speed, never the model
        log.warning(
            "no compiled tree walk (%s: %s): trees are walked with numpy", type(error).__name__, error
        )
        return None
