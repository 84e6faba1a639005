"""The benchmark's verdicts: the figures of each server, against the targets, printed and saved."""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

from tests.support.processes import REPO_ROOT

BATCH_ROWS = 1000
TARGETS = {
    "vs_mlflow": 10.0,
    "vs_bare": 0.70,
    "vs_ceiling": 0.50,
    "p99_ms": 5.0,
    "inference_p50_ms": 0.5,
    "batch_rows_per_s": 100_000,
}
# Against --baseline: how much of the ratio to bare FastAPI, and of the batch throughput, a change may cost.
BASELINE_TARGETS = {"vs_bare_points": 3.0, "batch_rows_fraction": 0.95}
# Drift monitoring and the inference log may cost at most this share of throughput (single rows and batches).
MONITORING_COST_TARGET = 0.05
OURS, BASELINE, MLFLOW, BARE = "this service", "baseline", "mlflow models serve", "bare FastAPI (constant)"
CEILING = "raw ASGI (read + decode)"
UNMONITORED_SUFFIX = ", monitoring off"
UNMONITORED = OURS + UNMONITORED_SUFFIX


def report(
    results: dict[str, dict[str, Any]], options: argparse.Namespace, version: Any, kind: str, output_dir: Path
) -> None:
    ours, bare = results[OURS], results[BARE]
    baseline_name = next((name for name in results if name.startswith(BASELINE)), None)
    ratios = {name: result["requests_per_s"] / bare["requests_per_s"] for name, result in results.items()}
    ceiling = results.get(CEILING)
    shares = {
        name: result["requests_per_s"] / ceiling["requests_per_s"] if ceiling else float("nan")
        for name, result in results.items()
    }

    def verdict(ok: bool) -> str:
        return "meets target" if ok else "MISSES target"

    print(
        f"\nsingle-row POST, wrk {options.threads} threads x {options.connections} connections, medians of "
        f"{options.rounds} interleaved {options.duration:g} s rounds, loopback, {os.cpu_count()} cores "
        f"(model v{version}, {kind})"
    )
    print(
        f"{'server':<34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'÷ bare':>10}{'÷ ceiling':>11}"
        f"{'CPU µs/req':>12}"
    )
    for name, result in results.items():
        print(
            f"{name:<34}{result['requests_per_s']:>10,.0f}{result['p50_ms']:>10.2f}{result['p99_ms']:>10.2f}"
            f"{ratios[name]:>10.1%}{shares[name]:>11.1%}{result['cpu_us_per_request']:>12.1f}"
        )
    batched = {name: result for name, result in results.items() if "batch_rows_per_s" in result}
    print(
        f"\n{BATCH_ROWS:,}-row batches, {options.batch_connections} connections, medians of "
        f"{options.batch_rounds} interleaved rounds"
    )
    print(f"{'server':<34}{'rows/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    for name, result in batched.items():
        print(
            f"{name:<34}{result['batch_rows_per_s']:>12,.0f}{result['batch_p50_ms']:>10.1f}{result['batch_p99_ms']:>10.1f}"
        )
    print()
    verdicts: dict[str, bool] = {}
    if MLFLOW in results:
        vs_mlflow = ours["requests_per_s"] / results[MLFLOW]["requests_per_s"]
        verdicts["vs_mlflow"] = vs_mlflow >= TARGETS["vs_mlflow"]
        print(
            f"{'this service / mlflow models serve':<44}{vs_mlflow:>10.1f}x   target >= {TARGETS['vs_mlflow']:g}x   "
            f"{verdict(verdicts['vs_mlflow'])}"
        )
    verdicts["vs_bare"] = ratios[OURS] >= TARGETS["vs_bare"]
    if ceiling:
        verdicts["vs_ceiling"] = shares[OURS] >= TARGETS["vs_ceiling"]
        print(
            f"{f'this service / {CEILING}':<44}{shares[OURS]:>10.0%}    target >= {TARGETS['vs_ceiling']:.0%}   "
            f"{verdict(verdicts['vs_ceiling'])}"
        )
        cpu_share = ceiling["cpu_us_per_request"] / ours["cpu_us_per_request"]
        print(f"{'the same share by CPU per request':<44}{cpu_share:>10.0%}")
    verdicts["p99_ms"] = ours["p99_ms"] <= TARGETS["p99_ms"]
    print(
        f"{f'p99 at {options.connections} connections':<44}{ours['p99_ms']:>8.2f} ms   "
        f"target <= {TARGETS['p99_ms']:g} ms   {verdict(verdicts['p99_ms'])}"
    )
    verdicts["inference_p50_ms"] = ours["inference_p50_ms"] <= TARGETS["inference_p50_ms"]
    verdicts["batch_rows_per_s"] = ours["batch_rows_per_s"] >= TARGETS["batch_rows_per_s"]
    print(
        f"{'this service / bare FastAPI':<44}{ratios[OURS]:>10.0%}    target >= {TARGETS['vs_bare']:.0%}   "
        f"{verdict(verdicts['vs_bare'])}"
    )
    print(
        f"{'model_inference_seconds p50 (server side)':<44}{ours['inference_p50_ms']:>8.3f} ms   "
        f"target <= {TARGETS['inference_p50_ms']} ms   {verdict(verdicts['inference_p50_ms'])}"
    )
    print(
        f"{f'batches of {BATCH_ROWS:,} rows':<44}{ours['batch_rows_per_s']:>10,.0f} rows/s   "
        f"target >= {TARGETS['batch_rows_per_s']:,}   {verdict(verdicts['batch_rows_per_s'])}"
    )
    if UNMONITORED in results:
        off = results[UNMONITORED]
        for key, what in (
            ("requests_per_s", "single rows"),
            ("batch_rows_per_s", f"{BATCH_ROWS:,}-row batches"),
        ):
            cost = 1 - ours[key] / off[key]
            verdicts[f"monitoring_cost_{key}"] = cost <= MONITORING_COST_TARGET
            print(
                f"{f'monitoring cost, {what}':<44}{cost:>10.1%}    target <= {MONITORING_COST_TARGET:.0%}   "
                f"{verdict(verdicts[f'monitoring_cost_{key}'])}"
            )
    # Each pair's cost round by round too: a round's two figures were measured minutes apart at most, so
    # the median of their ratios keeps more of the machine's drift out than the ratio of the medians.
    for name in results:
        if not name.endswith(UNMONITORED_SUFFIX) or name.removesuffix(UNMONITORED_SUFFIX) not in results:
            continue
        on, off = results[name.removesuffix(UNMONITORED_SUFFIX)], results[name]
        for key in ("rounds_requests_per_s", "rounds_batch_rows_per_s"):
            if on.get(key) and off.get(key):
                ratios_by_round = [a / b for a, b in zip(on[key], off[key], strict=True)]
                print(
                    f"{name.removesuffix(UNMONITORED_SUFFIX)}: monitoring cost per round, "
                    f"{'single rows' if 'requests' in key else 'batches'}: "
                    f"{', '.join(f'{1 - ratio:.1%}' for ratio in ratios_by_round)}; "
                    f"median {1 - statistics.median(ratios_by_round):.1%}"
                )
    if baseline_name is not None:
        points = (ratios[OURS] - ratios[baseline_name]) * 100
        fraction = ours["batch_rows_per_s"] / results[baseline_name]["batch_rows_per_s"]
        verdicts["vs_baseline_points"] = points >= -BASELINE_TARGETS["vs_bare_points"]
        verdicts["vs_baseline_batch"] = fraction >= BASELINE_TARGETS["batch_rows_fraction"]
        speedup = ours["requests_per_s"] / results[baseline_name]["requests_per_s"]
        cpu = results[baseline_name]["cpu_us_per_request"] / ours["cpu_us_per_request"]
        print(f"{'single rows/s, this service / baseline':<44}{speedup:>10.2f}x")
        print(f"{'CPU per single row, baseline / this service':<44}{cpu:>10.2f}x")
        print(
            f"{'÷ bare, this service - baseline':<44}{points:>+9.1f} pts   "
            f"target >= -{BASELINE_TARGETS['vs_bare_points']:g} pts   {verdict(verdicts['vs_baseline_points'])}"
        )
        print(
            f"{'batch rows/s, this service / baseline':<44}{fraction:>10.1%}    "
            f"target >= {BASELINE_TARGETS['batch_rows_fraction']:.0%}   {verdict(verdicts['vs_baseline_batch'])}"
        )
    summary = {
        "results": results,
        "ratios_to_bare": ratios,
        "shares_of_ceiling": shares if ceiling else {},
        "verdicts": verdicts,
        "targets": TARGETS
        | {"monitoring_cost": MONITORING_COST_TARGET}
        | ({"baseline": BASELINE_TARGETS} if baseline_name else {}),
        "baseline": options.baseline,
        "model_version": str(version),
        "predictor": kind,
    }
    (output_dir / "api.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nbench: figures saved to {(output_dir / 'api.json').relative_to(REPO_ROOT)}")
