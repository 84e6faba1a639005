"""evaluate: score the chosen model on the test split; write metrics, slice metrics and plot data."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import matplotlib
import mlflow
import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.inspection import permutation_importance
from sklearn.metrics import precision_recall_curve, roc_curve

from api.drift import feature_psi, probability_proportions
from stages.classification import bootstrap_intervals, classification_metrics, predicted_positive
from stages.errors import run
from stages.fairness import fairness
from stages.features import labels, model_inputs
from stages.params import Features, load_params
from stages.quality import numeric_metrics
from stages.tracking import configure, training_run
from stages.workspace import output, workspace

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DIGITS = 6


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(value), DIGITS) for value in values]


def slice_metrics(
    frame: pd.DataFrame, probability: np.ndarray, y: np.ndarray, columns: list[str], threshold: float
) -> dict[str, dict[str, Any]]:
    """Per-value metrics for each sensitive attribute; AUCs only where both classes occur."""
    report: dict[str, dict[str, Any]] = {}
    for column in columns:
        report[column] = {}
        for value in sorted(frame[column].dropna().unique()):
            mask = (frame[column] == value).to_numpy()
            entry: dict[str, Any] = {
                "rows": int(mask.sum()),
                "positive_rate": round(float(y[mask].mean()), DIGITS),
            }
            if len(np.unique(y[mask])) == 2:
                entry.update(classification_metrics(y[mask], probability[mask], threshold))
            report[column][str(value)] = entry
    return report


def drift_report(
    metadata: dict[str, Any], x_test: pd.DataFrame, probability: np.ndarray, warning: float
) -> dict[str, Any]:
    """The test split's PSI against the distribution the model learned from, by the service's own
    computation (api/drift.py): a fresh model shows no drift, every figure below `warning`. And the
    predicted probability's distribution on the test split, rows the served model never trained on:
    register hands it to the service as its prediction reference."""
    columns = {name: x_test[name].tolist() for name in x_test.columns}
    psi = {name: round(value, DIGITS) for name, value in feature_psi(metadata, columns).items()}
    return {
        "rows": len(x_test),
        "warning": warning,
        "drifted": sorted(name for name, value in psi.items() if value >= warning),
        "feature_psi": psi,
        "prediction_reference": [round(value, DIGITS) for value in probability_proportions(probability)],
    }


def plot_data(
    pipeline: Any,
    x: pd.DataFrame,
    y: np.ndarray,
    probability: np.ndarray,
    features: Features,
    bins: int,
    seed: int,
) -> dict[str, list[dict[str, Any]]]:
    fpr, tpr, _ = roc_curve(y, probability)
    precision, recall, _ = precision_recall_curve(y, probability)
    fraction_positive, mean_predicted = calibration_curve(y, probability, n_bins=bins, strategy="quantile")
    predicted = predicted_positive(probability, features.decision_threshold).astype(int)
    # The confusion matrix by label name, not 0/1: index 1 is the positive label.
    names = [str(features.negative_label), str(features.positive_label)]
    importance = permutation_importance(
        pipeline, x, y, scoring="roc_auc", n_repeats=3, random_state=seed, n_jobs=1
    )
    order = np.argsort(-importance.importances_mean)
    return {
        "roc": [{"fpr": a, "tpr": b} for a, b in zip(_rounded(fpr), _rounded(tpr), strict=True)],
        "pr": [
            {"recall": a, "precision": b} for a, b in zip(_rounded(recall), _rounded(precision), strict=True)
        ],
        "calibration": [
            {"mean_predicted": a, "fraction_positive": b}
            for a, b in zip(_rounded(mean_predicted), _rounded(fraction_positive), strict=True)
        ],
        "confusion": [
            {"actual": names[a], "predicted": names[b]}
            for a, b in zip(y.tolist(), predicted.tolist(), strict=True)
        ],
        "importance": [
            {"feature": x.columns[i], "importance": round(float(importance.importances_mean[i]), DIGITS)}
            for i in order
        ],
    }


def figures(plots: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """PNG views of the same data for the MLflow UI."""
    drawn = {}
    for name, x, y in (
        ("roc", "fpr", "tpr"),
        ("pr", "recall", "precision"),
        ("calibration", "mean_predicted", "fraction_positive"),
    ):
        figure, axis = plt.subplots(figsize=(5, 4))
        axis.plot(
            [p[x] for p in plots[name]],
            [p[y] for p in plots[name]],
            marker="." if name == "calibration" else "",
        )
        axis.set(xlabel=x, ylabel=y, title=name)
        drawn[name] = figure
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.barh(
        [p["feature"] for p in plots["importance"]][::-1],
        [p["importance"] for p in plots["importance"]][::-1],
    )
    axis.set(xlabel="drop in ROC AUC when permuted", title="feature importance")
    figure.tight_layout()
    drawn["importance"] = figure
    return drawn


def main() -> None:
    params = load_params()
    features, threshold = params.features, params.features.decision_threshold
    model_bytes = (workspace() / params.paths.model / "model.pkl").read_bytes()
    pipeline = pickle.loads(model_bytes)
    test = pd.read_parquet(workspace() / params.paths.prepared / "test.parquet")
    x_test, y_test = model_inputs(test, features), labels(test, features)
    probability = pipeline.predict_proba(x_test)[:, 1]

    scores: dict[str, Any] = classification_metrics(y_test, probability, threshold)
    slices = slice_metrics(test, probability, y_test, params.evaluate.slices, threshold)
    per_group, summaries = fairness(
        test, y_test, probability, predicted_positive(probability, threshold).astype(int),
        params.evaluate.slices, params.evaluate.min_group_size,
    )  # fmt: skip
    for column, by_group in per_group.items():
        for group, entry in by_group.items():
            slices[column].setdefault(group, {}).update(entry)
    if summaries:
        scores["fairness"] = summaries
    intervals = bootstrap_intervals(
        y_test, probability, threshold, params.evaluate.bootstrap_resamples, params.train.seed
    )
    plots = plot_data(
        pipeline, x_test, y_test, probability, features, params.evaluate.calibration_bins, params.train.seed
    )
    metadata = json.loads((workspace() / params.paths.model / "feature_metadata.json").read_text())
    drift = drift_report(metadata, x_test, probability, params.drift.warning)

    predictions = output(params.paths.predictions)
    pd.DataFrame({"label": y_test, "probability": probability}).to_parquet(predictions, index=False)
    write_json(output(params.paths.metrics), scores)
    write_json(output(params.paths.slices), slices)
    write_json(output(params.paths.drift), drift)
    write_json(output(params.paths.intervals), {"level": 0.95, "resamples": params.evaluate.bootstrap_resamples,
                                                "metrics": intervals})  # fmt: skip
    plots_dir = output(params.paths.plots)
    for name, rows in plots.items():
        write_json(plots_dir / f"{name}.json", rows)

    configure()
    parent = training_run(hashlib.sha256(model_bytes).hexdigest())
    for run_id in (parent.info.run_id, parent.data.tags["chosen_run_id"]):
        with mlflow.start_run(run_id=run_id, nested=run_id != parent.info.run_id):
            mlflow.log_metrics({f"test_{name}": value for name, value in numeric_metrics(scores).items()})
    with mlflow.start_run(run_id=parent.info.run_id):
        mlflow.log_metrics(
            {
                f"test_slice.{column}.{value}.{metric}": entry[metric]
                for column, values in slices.items()
                for value, entry in values.items()
                for metric in ("roc_auc", "accuracy", "f1", "selection_rate", "true_positive_rate")
                if entry.get(metric) is not None
            }
        )
        mlflow.log_dict(slices, "evaluation/slices.json")
        mlflow.log_dict(scores, "evaluation/metrics.json")
        mlflow.log_dict(drift, "evaluation/drift.json")
        mlflow.log_metrics({f"test_psi.{name}": value for name, value in drift["feature_psi"].items()})
        mlflow.log_artifacts(str(plots_dir), "evaluation/plots")
        for name, figure in figures(plots).items():
            mlflow.log_figure(figure, f"evaluation/{name}.png")
            plt.close(figure)
    print(f"evaluate: test {', '.join(f'{k}={v:.4f}' for k, v in numeric_metrics(scores).items())}")
    worst = max(drift["feature_psi"].items(), key=lambda item: item[1])
    print(
        f"evaluate: test vs train PSI at most {worst[1]:.4f} ({worst[0]}); drifted: {drift['drifted'] or 'none'}"
    )


def write_json(file: Path, content: Any) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(content, indent=2) + "\n")


if __name__ == "__main__":
    run(main, "evaluate")
