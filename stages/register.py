"""register: add the trained model to the MLflow Model Registry and decide whether it earns `staging`.

Development -> Staging happens here; Staging -> Production only through `make promote`, never inside
`dvc repro`, so experiments cannot touch Production."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from sklearn import metrics as sk_metrics

from stages.config import experiment_name, git_sha, load_params, path, workspace
from stages.features import labels, model_inputs
from stages.tracking import configure, find_training_run

SCORERS = {"roc_auc": sk_metrics.roc_auc_score, "pr_auc": sk_metrics.average_precision_score}


@dataclass
class Decision:
    staging: bool
    reasons: list[str] = field(default_factory=list)


def decide(
    candidate: dict[str, float],
    floors: dict[str, float],
    primary: str,
    margin: float,
    production: float | None,
) -> Decision:
    """Staging needs every floor cleared AND the primary metric above production's by more than margin."""
    reasons = []
    for name, floor in floors.items():
        value = candidate.get(name)
        if value is None:
            reasons.append(f"FAIL floor {name}: metric missing")
        elif value < floor:
            reasons.append(f"FAIL floor {name}: {value:.6f} < {floor}")
        else:
            reasons.append(f"ok floor {name}: {value:.6f} >= {floor}")
    if production is None:
        reasons.append(f"ok no production version yet; {primary} {candidate[primary]:.6f} stands alone")
    elif candidate[primary] - production > margin:
        reasons.append(
            f"ok beats production on {primary}: {candidate[primary]:.6f} vs {production:.6f} "
            f"(margin {margin})"
        )
    else:
        reasons.append(
            f"FAIL does not beat production on {primary}: {candidate[primary]:.6f} vs "
            f"{production:.6f} (needs > {margin} better)"
        )
    return Decision(staging=not any(reason.startswith("FAIL") for reason in reasons), reasons=reasons)


def data_hash() -> str:
    """The prepared data's hash as dvc.lock records it (DVC writes each stage's lock entry as it ends)."""
    lock_file = workspace() / "dvc.lock"
    prepared = load_params()["paths"]["prepared"]
    if lock_file.exists():
        lock = yaml.safe_load(lock_file.read_text()) or {}
        for out in lock.get("stages", {}).get("prepare", {}).get("outs", []):
            if out["path"] == prepared:
                return out["md5"]
    digest = hashlib.md5()
    for file in sorted(path("prepared").glob("*.parquet")):
        digest.update(file.read_bytes())
    return digest.hexdigest()


def production_score(name: str, alias: str, primary: str) -> tuple[float | None, str | None]:
    """Production's primary metric on the CURRENT test split, so both models face the same rows."""
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    params = load_params()
    test = pd.read_parquet(path("prepared") / "test.parquet")
    try:
        model = mlflow.sklearn.load_model(f"models:/{name}@{alias}")
        probability = model.predict_proba(model_inputs(test, params["features"]))[:, 1]
        return round(float(SCORERS[primary](labels(test, params["features"]), probability)), 6), str(
            version.version
        )
    except Exception as error:
        recorded = version.tags.get(f"metric.{primary}")
        print(
            f"register: production v{version.version} cannot score the current test split ({error}); "
            f"using its recorded {primary}={recorded}"
        )
        return (float(recorded) if recorded else None), str(version.version)


def main() -> None:
    params = load_params()
    quality, names = params["quality"], params["mlflow"]
    model_name, aliases = names["model_name"], names["aliases"]
    scores = json.loads(path("metrics").read_text())

    configure()
    run = find_training_run(
        hashlib.sha256((path("model") / "model.pkl").read_bytes()).hexdigest(), experiment_name()
    )
    primary = quality["primary_metric"]
    production, production_version = production_score(model_name, aliases["production"], primary)
    decision = decide(scores, quality["floors"], primary, quality["promotion_margin"], production)

    tags = {
        "git_sha": git_sha(),
        "data_hash": data_hash(),
        "dvc_exp_name": experiment_name(),
        "training_run_id": run.info.run_id,
        "family": run.data.tags.get("chosen_family", ""),
        "status": "staging" if decision.staging else "rejected",
        "decision": "\n".join(decision.reasons),
        **{f"metric.{metric}": str(value) for metric, value in scores.items()},
    }
    version = mlflow.register_model(run.data.tags["chosen_model_uri"], model_name, tags=tags)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(model_name, aliases["development"], version.version)
    if decision.staging:
        client.set_registered_model_alias(model_name, aliases["staging"], version.version)

    report = {
        "model_name": model_name,
        "version": str(version.version),
        "aliases": [aliases["development"], *([aliases["staging"]] if decision.staging else [])],
        "staging": decision.staging,
        "reasons": decision.reasons,
        "production_version": production_version,
        "production_score": production,
        "tags": {key: value for key, value in tags.items() if key != "decision"},
    }
    out = path("reports") / "registry.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    # Only what is the same on every run of the same model: this is the out DVC hashes.
    submitted = {"model_name": model_name, "model_sha256": run.data.tags["model_sha256"], "metrics": scores}
    path("registered").write_text(json.dumps(submitted, indent=2) + "\n")
    verdict = "-> staging" if decision.staging else "stays in development (not staged)"
    print(f"register: {model_name} v{version.version} {verdict}")
    for reason in decision.reasons:
        print(f"  {reason}")


if __name__ == "__main__":
    main()
