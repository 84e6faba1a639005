"""An XGBoost binary classifier's trees as flat numpy arrays, for requests of a few rows.

`Booster.inplace_predict` has a fixed cost of about 0.2 ms per call (it builds a proxy matrix, re-reads the
cgroup CPU quota and allocates per-call buffers), which is most of a one-row request. Walking all trees
at once with numpy gathers costs about 40 µs for one row. For large batches the booster's C++ loop wins,
so the compiler uses this only up to a row count (`FEW_ROWS` in api/fast/compiler.py), and only when the
compiled walk over the same arrays (api/fast/compiled.py, about ten times faster) is unavailable. It replays
XGBoost's arithmetic: float32 features and split conditions, `value < condition` goes left, missing values
take the default branch, leaf values summed in float32 in tree order onto the base margin, then the
logistic function.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
from collections.abc import Callable
from typing import Any, cast

import numpy as np


class UnsupportedBooster(Exception):
    pass


def _base_score(raw: Any) -> float:
    text = str(raw).strip().strip("[]")  # XGBoost 3 writes a vector: "[2.4058568E-1]"
    if "," in text:
        raise UnsupportedBooster("a multi-output base score")
    return float(text)


def _float32_log() -> Callable[[float], float]:
    """The C library's logf, which XGBoost's std::log of a float calls; else log in float64, rounded (one
    float32 step off for about 0.5% of arguments)."""
    name = ctypes.util.find_library("m")
    try:
        logf = ctypes.CDLL(name).logf if name else None
    except (OSError, AttributeError):
        logf = None
    if logf is None:
        return math.log
    logf.restype, logf.argtypes = ctypes.c_float, [ctypes.c_float]
    return cast(Callable[[float], float], logf)


FLOAT32_LOG = _float32_log()


def base_margin(base_score: float) -> np.float32:
    """The base score as a margin, as XGBoost computes it: -log(1 / p - 1), every step in float32. The
    logit taken in float64 and rounded, or numpy's own float32 log, is one float32 step off for some
    scores, and then so were a quarter of the answers (tests/api/test_compiled_walk.py)."""
    score = np.float32(base_score)
    odds = np.float32(np.float32(1.0) / score - np.float32(1.0))
    return np.float32(-FLOAT32_LOG(float(odds)))


class TreeEnsemble:
    def __init__(self, booster: Any, iteration_range: tuple[int, int]) -> None:
        model = json.loads(bytes(booster.save_raw("json")))
        learner = model["learner"]
        objective = learner["objective"]["name"]
        gradient_booster = learner["gradient_booster"]
        if objective != "binary:logistic" or gradient_booster["name"] != "gbtree":
            raise UnsupportedBooster(f"objective {objective} with booster {gradient_booster['name']}")
        params = learner["learner_model_param"]
        if int(params.get("num_class", 0)) > 1 or int(params.get("num_target", 1)) != 1:
            raise UnsupportedBooster("more than one output")
        trees = gradient_booster["model"]["trees"]
        per_round = int(gradient_booster["model"]["gbtree_model_param"].get("num_parallel_tree", 1) or 1)
        begin, end = iteration_range
        if end > 0:
            trees = trees[begin * per_round : end * per_round]
        elif begin > 0:
            trees = trees[begin * per_round :]
        base_score = _base_score(params["base_score"])
        if not 0.0 < base_score < 1.0:
            raise UnsupportedBooster(f"base score {base_score} is not a probability")
        self.base_margin = base_margin(base_score)

        features, conditions, lefts, rights, defaults, roots = [], [], [], [], [], []
        offset, depth = 0, 0
        for tree in trees:
            if any(tree.get("split_type", [])) or tree.get("categories"):
                raise UnsupportedBooster("categorical splits")
            left = np.asarray(tree["left_children"], dtype=np.int64)
            right = np.asarray(tree["right_children"], dtype=np.int64)
            nodes = np.arange(len(left))
            leaf = left == -1
            # Leaves point at themselves, so every tree can take the same number of steps.
            lefts.append(np.where(leaf, nodes, left) + offset)
            rights.append(np.where(leaf, nodes, right) + offset)
            features.append(np.where(leaf, 0, np.asarray(tree["split_indices"], dtype=np.int64)))
            # A leaf's value is stored in its split condition.
            conditions.append(np.asarray(tree["split_conditions"], dtype=np.float32))
            defaults.append(np.asarray(tree["default_left"], dtype=bool))
            roots.append(offset)
            depth = max(depth, _depth(left, right))
            offset += len(left)
        if not roots:
            raise UnsupportedBooster("no trees")
        # The smallest integer types that fit (here 8-bit features): a one-row request touches a few thousand
        # scattered nodes, and read from memory instead of cache they cost more than the math.
        index_type = np.min_scalar_type(offset)
        self.features = np.concatenate(features).astype(
            np.min_scalar_type(max(int(params["num_feature"]) - 1, 0))
        )
        self.conditions = np.concatenate(conditions)
        self.left = np.concatenate(lefts).astype(np.int64)
        self.right = np.concatenate(rights).astype(np.int64)
        self.default_left = np.concatenate(defaults)
        self.roots = np.asarray(roots, dtype=index_type)
        self.depth = depth
        self._base = np.array([self.base_margin], dtype=np.float32)
        # The one-record walk, when the trees are shallow enough to pad (see COMPLETE_LEVELS_MAX_DEPTH).
        self.levels = (
            CompleteLevels(trees, depth, self.features.dtype)
            if 0 < depth <= COMPLETE_LEVELS_MAX_DEPTH
            else None
        )

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """P(class 1) for each row of a float64 matrix (n_rows, n_features)."""
        values = matrix.astype(np.float32)
        missing = np.isnan(values).any()
        rows = np.arange(values.shape[0])[:, None]
        node = np.broadcast_to(self.roots, (values.shape[0], self.roots.size))
        for _ in range(self.depth):
            feature_values = values[rows, self.features[node]]
            go_left = feature_values < self.conditions[node]
            if missing:
                go_left = np.where(np.isnan(feature_values), self.default_left[node], go_left)
            node = np.where(go_left, self.left[node], self.right[node])
        leaves = self.conditions[node]
        margins = np.full((leaves.shape[0], 1), self.base_margin, dtype=np.float32)
        return self._probability(np.concatenate([margins, leaves], axis=1))

    def predict_row(self, row: np.ndarray) -> float:
        """P(class 1) for one float64 row with no missing value: the hot path of a one-record request, one
        gather per level over all trees. Only for trees with `levels` (the caller checks)."""
        assert self.levels is not None
        terms = np.concatenate([self._base, self.levels.leaves(row.astype(np.float32))])
        # Summed in float32 in tree order, as XGBoost does; the logistic function in float64 differs from
        # XGBoost's float32 one by less than 1e-7.
        return sigmoid(float(np.cumsum(terms, dtype=np.float32)[-1]))

    def _probability(self, terms: np.ndarray) -> np.ndarray:
        # Sequential float32 sums in tree order onto the base margin, as XGBoost accumulates them.
        margin = np.cumsum(terms, axis=1, dtype=np.float32)[:, -1]
        one = np.float32(1.0)
        return (one / (one + np.exp(-margin))).astype(np.float64)


# Padding every tree to 2**depth leaves costs memory exponentially, so deeper ensembles get no one-record
# walk: a single record then goes through `TreeEnsemble.predict` like a few rows do, which for 300 trees of
# depth 12 measured 182 µs against 131 µs for a one-record walk (and about 1 ms for the booster's own call).
# The default trains depth 6; a tuning search above depth 10 trades that speed away.
COMPLETE_LEVELS_MAX_DEPTH = 10


class CompleteLevels:
    """The trees padded to complete binary trees of one depth and stored level by level, tree after tree:
    node p of tree t on level L sits at t * 2**L + p, so its children on the next level sit at twice that
    index and the one after. One row then walks all trees with no child pointers to read, and the upper
    levels, which every row visits, are small and contiguous. A leaf above the last level fills every
    slot below it, so whichever way the padding nodes send the row, it arrives at that leaf's value."""

    def __init__(self, trees: list[dict[str, Any]], depth: int, feature_type: Any) -> None:
        count = len(trees)
        self.features = [np.zeros(count << level, dtype=feature_type) for level in range(depth)]
        self.conditions = [np.zeros(count << level, dtype=np.float32) for level in range(depth)]
        # Where a missing value goes (1: right), for the compiled walk; the numpy walk takes no NaN.
        self.default_right = [np.zeros(count << level, dtype=np.uint8) for level in range(depth)]
        self.leaf_values = np.zeros(count << depth, dtype=np.float32)
        for tree_index, tree in enumerate(trees):
            self._place(tree, tree_index, depth)
        self.depth = depth
        self._root_children = np.arange(count, dtype=np.intp) << 1

    def _place(self, tree: dict[str, Any], tree_index: int, depth: int) -> None:
        left, right = tree["left_children"], tree["right_children"]
        stack = [(0, 0, 0)]  # (node, level, position within the tree's slots on that level)
        while stack:
            node, level, position = stack.pop()
            if left[node] == -1:
                span = 1 << (depth - level)
                start = ((tree_index << level) + position) * span
                self.leaf_values[start : start + span] = tree["split_conditions"][node]
                continue
            index = (tree_index << level) + position
            self.features[level][index] = tree["split_indices"][node]
            self.conditions[level][index] = tree["split_conditions"][node]
            self.default_right[level][index] = 0 if tree["default_left"][node] else 1
            stack.append((left[node], level + 1, 2 * position))
            stack.append((right[node], level + 1, 2 * position + 1))

    def leaves(self, values: np.ndarray) -> np.ndarray:
        """The leaf value each tree gives a float32 row with no NaN, in tree order."""
        # `value < condition` goes left (index 2i), as in XGBoost; the roots need no gather.
        index = self._root_children + (values.take(self.features[0]) >= self.conditions[0])
        for level in range(1, self.depth):
            went_right = values.take(self.features[level].take(index)) >= self.conditions[level].take(index)
            index = (index << 1) + went_right
        return self.leaf_values.take(index)


def sigmoid(margin: float) -> float:
    """The logistic function on a Python float, without overflow at either end."""
    if margin >= 0:
        return 1.0 / (1.0 + math.exp(-margin))
    exp = math.exp(margin)
    return exp / (1.0 + exp)


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    depth, frontier = 0, [0]
    while frontier:
        children = [child for node in frontier for child in (left[node], right[node]) if child != -1]
        if not children:
            break
        depth += 1
        frontier = children
    return depth
