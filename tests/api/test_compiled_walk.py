"""The compiled tree walk (api/fast/compiled.py) against XGBoost itself, its place among the predictor's
routes, the numpy walk it falls back to without numba, and where numba keeps its cache."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from xgboost import XGBClassifier

from api.fast import compile_predictor, compiler, verify_parity
from api.fast import compiled as compiled_module
from api.fast.compiled import CompiledWalk, compile_walk
from api.fast.trees import TreeEnsemble
from tests.api.test_fast_path import (
    CLASSIFIERS,
    COLUMNS,
    TOLERANCE,
    early_stopped_xgboost,
    frame,
    pipeline,
    rows_of,
    target,
)
from tests.support.processes import REPO_ROOT, subprocess_env

WIDTH = 6  # early_stopped_xgboost's features


@pytest.fixture(scope="module")
def boosted():
    """(booster, its iteration range, its features with NaNs, the TreeEnsemble, its compiled walk)."""
    model, features = early_stopped_xgboost()
    booster = model.get_booster()
    iterations = (0, model.best_iteration + 1)
    trees = TreeEnsemble(booster, iterations)
    walk = compile_walk(trees, WIDTH)
    assert walk is not None, "numba is a dependency: the walk must compile here"
    return booster, iterations, features, trees, walk


def xgboost(booster, iterations, matrix: np.ndarray) -> np.ndarray:
    return booster.inplace_predict(matrix, iteration_range=iterations, missing=np.nan)


def split_conditions(trees: TreeEnsemble) -> dict[int, np.ndarray]:
    """Each feature's split conditions (float32) over every internal node."""
    internal = trees.left != np.arange(trees.left.size)
    features, conditions = trees.features[internal], trees.conditions[internal]
    return {int(feature): np.unique(conditions[features == feature]) for feature in np.unique(features)}


def boundary_rows(trees: TreeEnsemble) -> np.ndarray:
    """For split conditions of every feature, four rows alike but for that feature: on the condition
    (XGBoost sends it right), one float32 step below and above, and a float64 below it that float32 rounds
    onto it. Shape (conditions, 4, width)."""
    rng = np.random.default_rng(11)
    groups = []
    for feature, conditions in split_conditions(trees).items():
        for condition in conditions[:20]:
            base = rng.normal(size=WIDTH)
            group = np.tile(base, (4, 1))
            group[:, feature] = (
                float(condition),
                float(np.nextafter(condition, np.float32(-np.inf))),
                float(np.nextafter(condition, np.float32(np.inf))),
                float(condition) - abs(float(np.spacing(condition))) / 4,
            )
            groups.append(group)
    return np.array(groups)


EXTREME_ROWS = np.array(
    [
        np.full(WIDTH, np.nan),
        np.where(np.arange(WIDTH) % 2 == 0, np.nan, 0.0),
        np.full(WIDTH, np.inf),
        np.full(WIDTH, -np.inf),
        np.full(WIDTH, 1e300),  # beyond float32: rounds to infinity, as XGBoost reads it
        np.full(WIDTH, -1e300),
        np.zeros(WIDTH),
    ]
)


def test_the_compiled_walk_replays_xgboost_with_missing_values_and_early_stopping(boosted):
    booster, iterations, features, _, walk = boosted
    assert np.isnan(features).any(axis=1).mean() > 0.3, "the default branches must be exercised"
    expected = xgboost(booster, iterations, features)
    np.testing.assert_allclose(walk.predict(features), expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose([walk.predict_row(row) for row in features], expected, rtol=0, atol=TOLERANCE)


def test_the_compiled_walk_agrees_on_split_conditions_nans_and_extremes(boosted):
    booster, iterations, _, trees, walk = boosted
    groups = boundary_rows(trees)
    rows = np.concatenate([groups.reshape(-1, WIDTH), EXTREME_ROWS])
    expected = xgboost(booster, iterations, rows)
    np.testing.assert_allclose(walk.predict(rows), expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose([walk.predict_row(row) for row in rows], expected, rtol=0, atol=TOLERANCE)
    # The rows do reach the comparisons: one float32 step below a condition changes XGBoost's answer (for
    # the rows whose path goes through a node with that condition), and a float64 below it that rounds onto
    # it does not (the comparison is in float32).
    on, below, _, rounded_onto = expected[: groups.size // WIDTH].reshape(-1, 4).T
    assert (on != below).sum() >= 10
    np.testing.assert_array_equal(rounded_onto, on)


def test_the_compiled_walk_takes_an_empty_batch_and_a_sliced_matrix(boosted):
    booster, iterations, features, _, walk = boosted
    assert walk.predict(np.empty((0, WIDTH))).shape == (0,)
    every_other = features[::2]  # not contiguous: a view, as a caller might pass
    np.testing.assert_allclose(
        walk.predict(every_other), xgboost(booster, iterations, every_other), rtol=0, atol=TOLERANCE
    )
    # Copied to the one layout and dtype compiled at load, instead of compiling another on a request.
    signatures = len(compiled_module._kernel().signatures)
    np.testing.assert_allclose(
        walk.predict(features.astype(np.float32)),
        xgboost(booster, iterations, features),
        rtol=0,
        atol=TOLERANCE,
    )
    assert len(compiled_module._kernel().signatures) == signatures


def test_an_index_out_of_range_is_refused_before_the_compiled_loop_reads_it(boosted, caplog):
    trees = boosted[3]
    for array, bad in (("features", WIDTH), ("left", trees.left.size), ("roots", trees.left.size)):
        broken = TreeEnsemble.__new__(TreeEnsemble)
        broken.__dict__.update(trees.__dict__)
        values = getattr(trees, array).astype(np.int64)
        values[0] = bad
        setattr(broken, array, values)
        with pytest.raises(ValueError, match="out of range"):
            CompiledWalk(broken, WIDTH)
        with caplog.at_level(logging.WARNING, logger=compiled_module.__name__):
            assert compile_walk(broken, WIDTH) is None


@pytest.mark.parametrize("family", list(CLASSIFIERS))
def test_batches_up_to_the_crossover_and_single_records_take_the_compiled_walk(family, monkeypatch):
    train, test = frame(600, 1), frame(300, 2)
    fitted = pipeline(CLASSIFIERS[family]()).fit(train, target(train))
    expected = fitted.predict_proba(test)[:, 1]
    fast = compile_predictor(fitted, COLUMNS, positive_index=1)
    assert fast.batch_limits == ((compiler.COMPILED_ROWS,) if family == "xgboost" else ())
    assert verify_parity(fast, rows_of(test), expected) <= TOLERANCE
    if family != "xgboost":
        return
    # Shift the compiled walk's answers: the parity check must see it on every route the walk serves.
    predict, predict_row = CompiledWalk.predict, CompiledWalk.predict_row
    monkeypatch.setattr(CompiledWalk, "predict", lambda self, matrix: predict(self, matrix) + 0.01)
    monkeypatch.setattr(CompiledWalk, "predict_row", lambda self, row: predict_row(self, row) + 0.02)
    shifted = compile_predictor(fitted, COLUMNS, positive_index=1)
    rows = rows_of(test)
    few = shifted.predict_rows(rows[: compiler.COMPILED_ROWS])[0]
    np.testing.assert_allclose(few - expected[: compiler.COMPILED_ROWS], 0.01, atol=TOLERANCE)
    many = shifted.predict_rows(rows[: compiler.COMPILED_ROWS + 1])[0]
    np.testing.assert_allclose(many, expected[: compiler.COMPILED_ROWS + 1], rtol=0, atol=TOLERANCE)
    assert shifted.predict_one(rows[0])[0] == pytest.approx(expected[0] + 0.02, abs=TOLERANCE)
    assert verify_parity(shifted, rows, expected) == pytest.approx(0.02, abs=1e-6)


@pytest.mark.parametrize("failure", ["numba missing", "compilation fails"])
def test_without_the_compiled_walk_the_numpy_walk_serves_with_one_log_line(failure, monkeypatch, caplog):
    if failure == "numba missing":
        monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
        monkeypatch.setattr(compiled_module, "_compiled", {})
    else:

        def broken_kernel(*arguments):
            raise RuntimeError("LLVM refused")

        monkeypatch.setattr(compiled_module, "_kernel", lambda name="probabilities": broken_kernel)
    numpy_walk = TreeEnsemble.predict
    walked: list[int] = []
    monkeypatch.setattr(
        TreeEnsemble, "predict", lambda self, matrix: walked.append(len(matrix)) or numpy_walk(self, matrix)
    )
    train, test = frame(600, 1), frame(300, 2, unseen=True)
    fitted = pipeline(CLASSIFIERS["xgboost"]()).fit(train, target(train))
    with caplog.at_level(logging.WARNING, logger=compiled_module.__name__):
        fast = compile_predictor(fitted, COLUMNS, positive_index=1)
    (line,) = [record for record in caplog.records if record.name == compiled_module.__name__]
    assert "walked with numpy" in line.getMessage()
    assert ("ModuleNotFoundError" if failure == "numba missing" else "LLVM refused") in line.getMessage()
    assert fast.batch_limits == (compiler.FEW_ROWS,)
    expected = fitted.predict_proba(test)[:, 1]
    assert verify_parity(fast, rows_of(test), expected) <= TOLERANCE
    assert compiler.FEW_ROWS in walked, "the few-rows batches went through the numpy walk"


def test_without_a_writable_cache_dir_the_walk_compiles_uncached_with_one_log_line(
    boosted, monkeypatch, caplog
):
    from numba.core import caching

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])  # as if no directory were writable
    monkeypatch.setattr(compiled_module, "_compiled", {})
    monkeypatch.setattr(compiled_module, "_uncached_logged", False)
    booster, iterations, features, trees, _ = boosted
    with caplog.at_level(logging.WARNING, logger=compiled_module.__name__):
        walk = compile_walk(trees, WIDTH)
    assert walk is not None
    (line,) = [record for record in caplog.records if record.name == compiled_module.__name__]
    assert "not cached" in line.getMessage() and "NUMBA_CACHE_DIR" in line.getMessage()
    assert compiled_module._kernel().stats.cache_path is None
    assert compiled_module._kernel("row").stats.cache_path is None
    np.testing.assert_allclose(walk.predict(features), xgboost(booster, iterations, features), atol=TOLERANCE)


def test_numba_caches_the_compiled_walk_in_numba_cache_dir(tmp_path):
    """A fresh process with NUMBA_CACHE_DIR set writes its cache there, and a second one reads it back
    instead of compiling: the image's root filesystem (with this module's __pycache__) is read-only."""
    cache = tmp_path / "numba-cache"
    script = textwrap.dedent(
        """
        import numpy as np
        from xgboost import XGBClassifier
        from api.fast import compiled
        from api.fast.trees import TreeEnsemble

        rng = np.random.default_rng(0)
        features = rng.normal(size=(200, 4))
        model = XGBClassifier(n_estimators=5, max_depth=3, n_jobs=1).fit(features, features[:, 0] > 0)
        walk = compiled.compile_walk(TreeEnsemble(model.get_booster(), (0, 0)), 4)
        assert walk is not None
        kernels = [compiled._kernel(), compiled._kernel("row")]
        print(sum(len(kernel.stats.cache_hits) for kernel in kernels),
              sum(len(kernel.stats.cache_misses) for kernel in kernels))
        """
    )

    def run() -> list[int]:
        result = subprocess.run(
            [sys.executable, "-c", script],
            env=subprocess_env(NUMBA_CACHE_DIR=str(cache)),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return [int(count) for count in result.stdout.split()]

    hits, misses = run()
    assert (hits, misses) == (0, 2)  # the matrix walk and the row walk
    assert list(cache.rglob("*.nbi")) and list(cache.rglob("*.nbc"))
    hits, misses = run()
    assert (hits, misses) == (2, 0)


def _writable_dirs(volumes: list[dict], mounts: list[dict]) -> set[str]:
    empty = {volume["name"] for volume in volumes if "emptyDir" in volume}
    return {mount["mountPath"] for mount in mounts if mount["name"] in empty and not mount.get("readOnly")}


def test_the_image_and_the_deployment_point_numba_at_a_writable_cache_dir():
    dockerfile = (REPO_ROOT / "api" / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert "NUMBA_CACHE_DIR=/tmp/" in final_stage
    deployment = yaml.safe_load((REPO_ROOT / "api" / "k8s" / "base" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "api"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (cache_dir,) = [
        variable["value"] for variable in container["env"] if variable["name"] == "NUMBA_CACHE_DIR"
    ]
    writable = _writable_dirs(pod["volumes"], container["volumeMounts"])
    assert any(Path(cache_dir).is_relative_to(directory) for directory in writable), (cache_dir, writable)


@pytest.mark.parametrize("base_score", [0.24058568, 0.3, 0.61, 0.9])
def test_the_compiled_walk_gives_xgboost_s_probabilities_bit_for_bit(base_score):
    """The same float32 steps as XGBoost's, the base score's margin among them: not merely within the
    tolerance, so that a record's probability does not depend on whether its batch took the walk or the
    booster (COMPILED_ROWS)."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(600, WIDTH))
    labels = (features[:, 0] - features[:, 2] > 0.4).astype(int)
    features[rng.random(features.shape) < 0.2] = np.nan
    # 41 trees: the row walk takes them four at a time, and the last one alone.
    model = XGBClassifier(n_estimators=41, max_depth=4, n_jobs=1, random_state=0, base_score=base_score)
    model.fit(features, labels)
    booster = model.get_booster()
    walk = compile_walk(TreeEnsemble(booster, (0, 0)), WIDTH)
    assert walk is not None
    expected = booster.inplace_predict(features, missing=np.nan)
    found = np.asarray(walk.predict(features))
    assert np.array_equal(found.astype(np.float32), expected), int(
        (found.astype(np.float32) != expected).sum()
    )
    one_by_one = np.array([walk.predict_row(row) for row in features], dtype=np.float32)
    assert np.array_equal(one_by_one, expected), int((one_by_one != expected).sum())
