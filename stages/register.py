"""register: add the trained model to the MLflow Model Registry and decide whether it earns `staging`.

Development -> Staging happens here; Staging -> Production only through `make promote`, never inside
`dvc repro`, so experiments cannot touch Production."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException

from stages.config import experiment_name, git_dirty, git_sha, load_params, path, workspace
from stages.features import labels, model_inputs
from stages.metrics import classification_metrics
from stages.tracking import configure, find_training_run


@dataclass
class Decision:
    staging: bool
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Incumbent:
    """A version the candidate must beat, scored on the candidate's own test split (None: unscorable)."""

    alias: str
    version: str
    score: float | None
    error: str = ""


def decide(
    candidate: dict[str, float],
    quality: dict[str, Any],
    incumbents: list[Incumbent],
) -> Decision:
    """Staging needs every floor cleared AND the primary metric better than every incumbent's (production
    and the current staging version) by more than the margin, in the metric's own direction."""
    primary, margin = quality["primary_metric"], quality["promotion_margin"]
    reasons = []
    for name, floor in quality["floors"].items():
        higher = quality["tolerances"].get(name, {}).get("direction", "higher") == "higher"
        value = candidate.get(name)
        if value is None:
            reasons.append(f"FAIL floor {name}: metric missing")
        elif (value >= floor) if higher else (value <= floor):
            reasons.append(f"ok floor {name}: {value:.6f} {'>=' if higher else '<='} {floor}")
        else:
            reasons.append(f"FAIL floor {name}: {value:.6f} {'<' if higher else '>'} {floor}")
    higher = quality["tolerances"].get(primary, {}).get("direction", "higher") == "higher"
    ours = candidate[primary]
    if not incumbents:
        reasons.append(f"ok no production or staging version yet; {primary} {ours:.6f} stands alone")
    for incumbent in incumbents:
        name = f"{incumbent.alias} v{incumbent.version}"
        if incumbent.score is None:
            reasons.append(
                f"FAIL {name} cannot be scored on this test split ({incumbent.error}); compare by hand"
            )
            continue
        gain = (ours - incumbent.score) if higher else (incumbent.score - ours)
        verdict = "ok beats" if gain > margin else "FAIL does not beat"
        reasons.append(
            f"{verdict} {name} on {primary}: {ours:.6f} vs {incumbent.score:.6f} (margin {margin})"
        )
    return Decision(staging=not any(reason.startswith("FAIL") for reason in reasons), reasons=reasons)


def approval_rules() -> dict[str, Any]:
    """The quality bar of the commit the run started from. Inside `dvc exp run` the workspace's
    params.yaml carries the experiment's -S overrides, and an experiment must not set its own bar."""
    params = load_params()
    if not experiment_name():
        return params["quality"]
    committed = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=workspace(), capture_output=True, text=True, check=False
    )
    if committed.returncode != 0:
        raise SystemExit(f"register: cannot read the baseline params.yaml: {committed.stderr.strip()}")
    return yaml.safe_load(committed.stdout)["quality"]


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


def incumbents(name: str, aliases: dict[str, str], primary: str) -> list[Incumbent]:
    """Production and staging, each scored on the CURRENT test split, so all face the same rows."""
    client = mlflow.MlflowClient()
    features = load_params()["features"]
    test = pd.read_parquet(path("prepared") / "test.parquet")
    found, seen = [], set()
    for alias in (aliases["production"], aliases["staging"]):
        try:
            version = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            continue
        if str(version.version) in seen:
            continue
        seen.add(str(version.version))
        # Any failure (a feature it lacks, an incompatible artifact) means no fair comparison is possible.
        try:
            model = mlflow.sklearn.load_model(f"models:/{name}/{version.version}")
            probability = model.predict_proba(model_inputs(test, features))[:, 1]
        except Exception as error:
            found.append(Incumbent(alias, str(version.version), None, f"{type(error).__name__}: {error}"))
            continue
        score = classification_metrics(labels(test, features), probability)[primary]
        found.append(Incumbent(alias, str(version.version), score))
    return found


def main() -> None:
    params = load_params()
    names = params["mlflow"]
    model_name, aliases = names["model_name"], names["aliases"]
    quality = approval_rules()
    scores = json.loads(path("metrics").read_text())

    configure()
    run = find_training_run(hashlib.sha256((path("model") / "model.pkl").read_bytes()).hexdigest())
    rivals = incumbents(model_name, aliases, quality["primary_metric"])
    decision = decide(scores, quality, rivals)

    tags = {
        "git_sha": git_sha(),
        "git_dirty": str(git_dirty()).lower(),
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
        for rival in rivals:
            if rival.alias == aliases["staging"]:
                client.set_model_version_tag(model_name, rival.version, "status", "superseded")
                client.set_model_version_tag(model_name, rival.version, "superseded_by", str(version.version))
        client.set_registered_model_alias(model_name, aliases["staging"], version.version)

    report = {
        "model_name": model_name,
        "version": str(version.version),
        "aliases": [aliases["development"], *([aliases["staging"]] if decision.staging else [])],
        "staging": decision.staging,
        "reasons": decision.reasons,
        "compared_with": [rival.__dict__ for rival in rivals],
        "tags": {key: value for key, value in tags.items() if key != "decision"},
    }
    path("registry_report").write_text(json.dumps(report, indent=2) + "\n")
    # Only what is the same on every run of the same model: this is the out DVC hashes.
    submitted = {"model_name": model_name, "model_sha256": run.data.tags["model_sha256"], "metrics": scores}
    path("registered").write_text(json.dumps(submitted, indent=2) + "\n")
    verdict = "-> staging" if decision.staging else "stays in development (not staged)"
    print(f"register: {model_name} v{version.version} {verdict}")
    for reason in decision.reasons:
        print(f"  {reason}")


if __name__ == "__main__":
    main()
