"""The three ways the service can score XGBoost trees, in process, on the registered model's own booster:
the numpy walk (api/fast/trees.py), the compiled walk (api/fast/compiled.py) and the booster's
`inplace_predict` on one thread, in µs per call at each batch size. api/fast/compiler.py's COMPILED_ROWS
(the compiled walk up to it, the booster above) is chosen from this table. Then one record end to end
(`predict_one`, what `model_inference_seconds` observes around the model call) with the compiled walk and
with the numpy walk it falls back to, and what compiling costs a fresh process with an empty numba cache
(cold) and with the cache the cold run left (warm).

    python -m tests.benchmarks.tree_walk [--rounds 7]

The model is MODEL_NAME@MODEL_ALIAS from MLFLOW_TRACKING_URI (`dvc repro` registers one). Blocks of calls
of every method and size alternate within each round, each charged the process's CPU time, and the median
round is reported, which keeps the shared machine's drift out of the comparison. A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.processes import REPO_ROOT, subprocess_env

SIZES = (1, 8, 32, 48, 64, 100, 1000)
BLOCK_SECONDS = 0.02  # per method, size and round: long enough for the clock, short enough to interleave


@contextmanager
def registered_model() -> Iterator[tuple[Any, Path]]:
    """The served model (ServedModel, the compiled predictor in it) and its downloaded files."""
    from api.loading import load_registered
    from api.registry import downloaded, resolve_alias
    from api.settings import Settings

    settings = Settings(model_uri=None)
    registered = resolve_alias(settings)
    served = load_registered(settings, registered)
    with downloaded(settings, registered) as path:
        yield served, path


def per_call_us(function: Callable[[Any], Any], inputs: list[Any], calls: int) -> float:
    # CPU time, not wall time: on a shared machine the wall clock also counts the other processes' turns.
    started = time.process_time()
    for item in islice(cycle(inputs), calls):
        function(item)
    return (time.process_time() - started) / calls * 1e6


def median_us(methods: dict[str, Callable[[Any], Any]], inputs: list[Any], rounds: int) -> dict[str, float]:
    """Each method's median µs per call over `rounds` interleaved blocks. The calls cycle through distinct
    inputs: a walk repeated on one row lets the CPU's branch predictor learn its path, which no stream of
    requests allows."""
    counts = {
        # From a first estimate, which also warms the function.
        name: max(1, int(BLOCK_SECONDS / (per_call_us(function, inputs, 3) * 1e-6)))
        for name, function in methods.items()
    }
    figures: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, function in methods.items():
            figures[name].append(per_call_us(function, inputs, counts[name]))
    return {name: statistics.median(values) for name, values in figures.items()}


def compile_cost(booster_file: Path, width: int, cache_dir: Path) -> dict[str, float]:
    """A fresh process's seconds to import numba and compile (or load) the walk, and its first call's µs."""
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.tree_walk",
            "--compile-child",
            str(booster_file),
            str(width),
        ],
        env={**subprocess_env(), "NUMBA_CACHE_DIR": str(cache_dir)},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    figures: dict[str, float] = json.loads(child.stdout.strip().splitlines()[-1])
    return figures


def compile_child(booster_file: Path, width: int) -> None:
    from xgboost import Booster

    from api.fast.trees import TreeEnsemble

    trees = TreeEnsemble(Booster(model_file=str(booster_file)), (0, 0))
    started = time.perf_counter()
    import numba  # noqa: F401

    imported = time.perf_counter()
    from api.fast.compiled import CompiledWalk

    walk = CompiledWalk(trees, width)
    compiled = time.perf_counter()
    walk.predict_row(np.zeros(width))
    first = time.perf_counter()
    print(
        json.dumps(
            {
                "import_s": imported - started,
                "compile_s": compiled - imported,
                "first_call_us": (first - compiled) * 1e6,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compile-child", nargs=2, metavar=("BOOSTER", "WIDTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compile_child:
        compile_child(Path(args.compile_child[0]), int(args.compile_child[1]))
        return

    from xgboost import Booster

    from api.artifact import BOOSTER_FILE, PREDICTOR_FILE, SERVING_DIR
    from api.fast import compiler
    from api.fast.compiled import CompiledWalk
    from api.fast.trees import TreeEnsemble
    from tests.benchmarks.api import benchmark_rows

    with registered_model() as (served, path), tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        booster_file = path / SERVING_DIR / BOOSTER_FILE
        spec = json.loads((path / SERVING_DIR / PREDICTOR_FILE).read_text())
        iterations = tuple(spec["classifier"]["iteration_range"])
        booster = Booster(model_file=str(booster_file))
        booster.set_param({"nthread": 1})
        trees = TreeEnsemble(booster, iterations)
        predictor = served.predictor
        walk = CompiledWalk(trees, predictor.width)
        rows = benchmark_rows(served, max(SIZES))
        matrix, _ = predictor.prepare({name: [row[name] for row in rows] for name in predictor.names})
        print(
            f"model {served.registry.name} v{served.registry.version}: {trees.roots.size} trees, depth "
            f"{trees.depth}, {predictor.width} inputs; {predictor.kind}, max parity error against the "
            f"logged pipeline at load {served.max_parity_error:.3g}"
        )

        def booster_call(batch: np.ndarray) -> Any:
            return booster.inplace_predict(
                batch, iteration_range=iterations, missing=np.nan, validate_features=False
            )

        with_missing = matrix.copy()
        with_missing[np.random.default_rng(0).random(matrix.shape) < 0.2] = np.nan
        expected, expected_missing = booster_call(matrix), booster_call(with_missing)
        print(
            "max |compiled - inplace_predict| on the 1,000 rows: "
            f"{np.abs(walk.predict(matrix) - expected).max():.3g}, with 20% NaN: "
            f"{np.abs(walk.predict(with_missing) - expected_missing).max():.3g}"
        )

        print(f"\nCPU µs per call (median of {args.rounds} rounds), one thread")
        print(f"{'rows':>6} {'numpy walk':>12} {'numba walk':>12} {'inplace_predict':>16}")
        for size in SIZES:
            batches = [
                np.ascontiguousarray(matrix[start : start + size]) for start in range(0, len(matrix), size)
            ]
            figures = median_us(
                {"numpy": trees.predict, "numba": walk.predict, "booster": booster_call}, batches, args.rounds
            )
            print(
                f"{size:>6} {figures['numpy']:>12.1f} {figures['numba']:>12.1f} {figures['booster']:>16.1f}"
            )

        # The same spec compiled with the walk unavailable: today's numpy path, as a missing numba leaves it.
        booster_bytes = booster_file.read_bytes()
        available = compiler.compile_walk
        compiler.compile_walk = lambda *_: None  # type: ignore[assignment]
        try:
            numpy_predictor = compiler.compile_spec(spec, booster_bytes, served.requests.columns)
        finally:
            compiler.compile_walk = available
        encoded = [predictor._encode_one(record)[0] for record in rows]
        one = median_us(
            {
                "compiled predict_one": lambda index: predictor.predict_one(rows[index]),
                "numpy predict_one": lambda index: numpy_predictor.predict_one(rows[index]),
                "compiled row walk": lambda index: walk.predict_row(encoded[index]),
                "numpy row walk": lambda index: trees.predict_row(encoded[index]),
                "encoding alone": lambda index: predictor._encode_one(rows[index]),
            },
            list(range(len(rows))),
            args.rounds,
        )
        print("\none record, CPU µs per call (predict_one is what model_inference_seconds observes)")
        for name, figure in one.items():
            print(f"  {name:<22} {figure:8.1f}")

        print(f"\ncompiling in a fresh process (NUMBA_CACHE_DIR={cache})")
        for run in ("cold", "warm", "warm"):
            cost = compile_cost(booster_file, predictor.width, Path(cache))
            print(
                f"  {run}: import numba {cost['import_s']:.2f} s, compile {cost['compile_s']:.2f} s, "
                f"first call {cost['first_call_us']:.0f} µs"
            )


if __name__ == "__main__":
    main()
