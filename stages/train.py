"""train: fit every candidate family in params.yaml, pick the best on validation, log each to MLflow."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import pickle
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from xgboost import XGBClassifier

from stages.classification import classification_metrics
from stages.errors import run
from stages.features import feature_metadata, labels, model_inputs
from stages.params import Family, Features, load_params
from stages.tracking import TrainingRun, configure, record_training_run
from stages.workspace import experiment_name, git_dirty, git_sha, output, run_name, workspace

MISSING_CATEGORY = "__missing__"
SERVING_PACKAGES = ("mlflow", "scikit-learn", "xgboost-cpu", "pandas", "numpy", "cloudpickle")


def build_pipeline(family: Family, features: Features, settings: dict[str, Any], seed: int) -> Pipeline:
    """Preprocessing and estimator in one Pipeline, so training and serving cannot drift apart."""
    preprocess = ColumnTransformer(
        [
            (
                "numeric",
                Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]),
                list(features.numeric),
            ),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
                        ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                list(features.categorical),
            ),
        ],
        sparse_threshold=0.0,
    )
    estimator: LogisticRegression | XGBClassifier
    if family == "logreg":
        estimator = LogisticRegression(**settings, random_state=seed)
    else:  # stages.params.Family names every family there is
        estimator = XGBClassifier(**settings, tree_method="hist", random_state=seed, eval_metric="logloss")
    return Pipeline([("preprocess", preprocess), ("classifier", estimator)])


def serving_requirements() -> list[str]:
    """Pinned to what trained the model; MLflow's own inference would list the whole dev environment."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in SERVING_PACKAGES]


def main() -> None:
    params = load_params()
    features, settings = params.features, params.train
    prepared = workspace() / params.paths.prepared
    train = pd.read_parquet(prepared / "train.parquet")
    val = pd.read_parquet(prepared / "val.parquet")
    x_train, y_train = model_inputs(train, features), labels(train, features)
    x_val, y_val = model_inputs(val, features), labels(val, features)
    metadata = feature_metadata(train, features)
    example = x_val.dropna().head(5)
    threshold, selection = features.decision_threshold, settings.selection_metric

    configure()
    name = run_name()
    tags = {"dvc_exp_name": experiment_name(), "git_sha": git_sha(), "git_dirty": str(git_dirty()).lower()}
    candidates: dict[str, dict[str, Any]] = {}
    fitted: dict[str, Pipeline] = {}
    with mlflow.start_run(run_name=name, tags=tags) as parent:
        for family in settings.candidates:
            family_settings = settings.settings(family)
            with mlflow.start_run(run_name=f"{name}/{family}", nested=True, tags=tags) as child:
                pipeline = build_pipeline(family, features, family_settings, settings.seed)
                pipeline.fit(x_train, y_train)
                scores = classification_metrics(y_val, pipeline.predict_proba(x_val)[:, 1], threshold)
                mlflow.log_params({"family": family, **family_settings})
                mlflow.log_metrics({f"val_{name}": value for name, value in scores.items()})
                info = mlflow.sklearn.log_model(
                    pipeline,
                    name="model",
                    serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
                    # From all validation rows, so columns that may be missing are optional in the schema.
                    signature=infer_signature(x_val, pipeline.predict_proba(x_val)),
                    input_example=example,
                    pyfunc_predict_fn="predict_proba",
                    metadata={"feature_metadata": metadata},
                    pip_requirements=serving_requirements(),
                )
            candidates[family] = {"run_id": child.info.run_id, "model_uri": info.model_uri, "val": scores}
            fitted[family] = pipeline
            print(f"train: {family}: val {selection}={scores[selection]:.4f}")

        best = max(candidates, key=lambda family: candidates[family]["val"][selection])
        model_dir = output(params.paths.model)
        model_dir.mkdir(parents=True, exist_ok=True)
        model_bytes = pickle.dumps(fitted[best], protocol=5)
        (model_dir / "model.pkl").write_bytes(model_bytes)
        (model_dir / "feature_metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        model_sha256 = hashlib.sha256(model_bytes).hexdigest()
        mlflow.set_tags(
            {
                "model_sha256": model_sha256,
                "chosen_family": best,
                "chosen_run_id": candidates[best]["run_id"],
                "chosen_model_uri": candidates[best]["model_uri"],
            }
        )
        mlflow.log_params(
            {
                "candidates": ",".join(settings.candidates),
                "chosen_family": best,
                "sample_rows": params.data.sample_rows,
                "seed": settings.seed,
            }
        )
        mlflow.log_dict(metadata, "feature_metadata.json")
    record_training_run(TrainingRun(run_id=parent.info.run_id, model_sha256=model_sha256))

    report = {
        "selection_metric": selection,
        "chosen": best,
        "candidates": {family: item["val"] for family, item in candidates.items()},
    }
    output(params.paths.candidates).write_text(json.dumps(report, indent=2) + "\n")
    print(f"train: chose {best} (MLflow run {parent.info.run_id})")


if __name__ == "__main__":
    run(main, "train")
