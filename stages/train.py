"""train: fit every candidate family in params.yaml, pick the best on validation, refit it on train +
validation, log each to MLflow. How a family is fitted is stages.modelling's."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import pickle
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature

from api.artifact import DIGEST_TAG
from stages.classification import classification_metrics
from stages.errors import run
from stages.features import feature_metadata, labels, model_inputs
from stages.modelling import Fitted, fit, refit, refit_settings
from stages.params import Family, load_params
from stages.serving import log_serving_artifact
from stages.tracking import TrainingRun, configure, record_training_run
from stages.workspace import experiment_name, git_dirty, git_sha, output, run_name, workspace

SERVING_PACKAGES = ("mlflow", "scikit-learn", "xgboost-cpu", "pandas", "numpy", "skops")
# skops refuses every type outside sklearn's and numpy's own unless it is listed; these are the ones our
# families add (XGBoost's estimator and booster, and numpy dtypes as skops stores them).
SKOPS_TRUSTED_TYPES = ["numpy.dtype", "xgboost.core.Booster", "xgboost.sklearn.XGBClassifier"]


def serving_requirements() -> list[str]:
    """Pinned to what trained the model; MLflow's own inference would list the whole dev environment."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in SERVING_PACKAGES]


def log_model(model: Any, x_val: pd.DataFrame, example: pd.DataFrame, metadata: dict[str, Any]) -> str:
    """The model as an MLflow model in the active run, with its serving artifact (what the service loads:
    data, not a pickle) and that artifact's digests as a run tag; the model's URI."""
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        # Not cloudpickle: skops loads only the types it is told to trust.
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        # From all validation rows, so columns that may be missing are optional in the schema.
        signature=infer_signature(x_val, model.predict_proba(x_val)),
        input_example=example,
        pyfunc_predict_fn="predict_proba",
        metadata={"feature_metadata": metadata},
        pip_requirements=serving_requirements(),
    )
    digests = log_serving_artifact(info.model_id, model, example, metadata)
    if digests is not None:
        mlflow.set_tag(DIGEST_TAG, digests)
    return str(info.model_uri)


def main() -> None:
    params = load_params()
    features, settings = params.features, params.train
    prepared = workspace() / params.paths.prepared
    train = pd.read_parquet(prepared / "train.parquet")
    val = pd.read_parquet(prepared / "val.parquet")
    x_train, y_train = model_inputs(train, features), labels(train, features)
    x_val, y_val = model_inputs(val, features), labels(val, features)
    # The model learns from train + validation once refitted: that is the distribution it carries.
    learned_from = pd.concat([train, val], ignore_index=True) if settings.refit else train
    metadata = feature_metadata(learned_from, features)
    example = x_val.dropna().head(5)
    threshold, selection = features.decision_threshold, settings.selection_metric

    configure()
    name = run_name()
    tags = {"dvc_exp_name": experiment_name(), "git_sha": git_sha(), "git_dirty": str(git_dirty()).lower()}
    candidates: dict[Family, dict[str, Any]] = {}
    fitted: dict[Family, Fitted] = {}
    with mlflow.start_run(run_name=name, tags=tags) as parent:
        for family in settings.candidates:
            family_settings = settings.settings(family)
            with mlflow.start_run(
                run_name=f"{name}/{family}", nested=True, tags={**tags, "role": "candidate"}
            ) as child:
                candidate = fit(
                    family,
                    features,
                    family_settings,
                    settings.early_stopping,
                    settings.seed,
                    x_train,
                    y_train,
                )
                scores = classification_metrics(
                    y_val, candidate.pipeline.predict_proba(x_val)[:, 1], threshold
                )
                mlflow.log_params({"family": family, **family_settings})
                mlflow.log_metrics({f"val_{metric}": value for metric, value in scores.items()})
                if candidate.rounds is not None:
                    mlflow.log_metric("rounds_used", candidate.rounds)
                model_uri = log_model(candidate.pipeline, x_val, example, metadata)
            candidates[family] = {"run_id": child.info.run_id, "model_uri": model_uri, "val": scores}
            fitted[family] = candidate
            used = f", {candidate.rounds} rounds" if candidate.rounds is not None else ""
            print(f"train: {family}: val {selection}={scores[selection]:.4f}{used}")

        best = max(candidates, key=lambda family: candidates[family]["val"][selection])
        chosen_run, chosen_uri, model = (
            candidates[best]["run_id"],
            candidates[best]["model_uri"],
            fitted[best].pipeline,
        )
        if settings.refit or settings.calibration != "none":
            x_all = pd.concat([x_train, x_val], ignore_index=True)
            y_all = np.concatenate([y_train, y_val])
            final = refit_settings(best, settings.settings(best), fitted[best], len(x_all))
            with mlflow.start_run(
                run_name=f"{name}/{best}/refit", nested=True, tags={**tags, "role": "refit"}
            ) as refitted:
                model = refit(best, features, final, settings.calibration, settings.seed, x_all, y_all)
                mlflow.log_params(
                    {"family": best, "refit_rows": len(x_all), "calibration": settings.calibration, **final}
                )
                chosen_run, chosen_uri = refitted.info.run_id, log_model(model, x_val, example, metadata)
            print(
                f"train: refitted {best} on train + validation ({len(x_all)} rows, {final.get('n_estimators', '-')} rounds)"
            )
        model_dir = output(params.paths.model)
        model_dir.mkdir(parents=True, exist_ok=True)
        model_bytes = pickle.dumps(model, protocol=5)
        (model_dir / "model.pkl").write_bytes(model_bytes)
        (model_dir / "feature_metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        model_sha256 = hashlib.sha256(model_bytes).hexdigest()
        chosen_digests = mlflow.get_run(chosen_run).data.tags.get(DIGEST_TAG)
        mlflow.set_tags(
            {
                **({DIGEST_TAG: chosen_digests} if chosen_digests else {}),
                "model_sha256": model_sha256,
                "chosen_family": best,
                "chosen_run_id": chosen_run,
                "chosen_model_uri": chosen_uri,
            }
        )
        mlflow.log_params(
            {
                "candidates": ",".join(settings.candidates),
                "chosen_family": best,
                "sample_rows": params.data.sample_rows,
                "seed": settings.seed,
                "refit": settings.refit,
            }
        )
        mlflow.log_dict(metadata, "feature_metadata.json")
    record_training_run(TrainingRun(run_id=parent.info.run_id, model_sha256=model_sha256))

    report = {
        "selection_metric": selection,
        "chosen": best,
        "candidates": {family: item["val"] for family, item in candidates.items()},
        "rounds_used": {family: item.rounds for family, item in fitted.items() if item.rounds is not None},
    }
    output(params.paths.candidates).write_text(json.dumps(report, indent=2) + "\n")
    print(f"train: chose {best} (MLflow run {parent.info.run_id})")


if __name__ == "__main__":
    run(main, "train")
