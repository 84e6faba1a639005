"""register: add the trained model to the MLflow Model Registry and decide whether it earns `staging`.

Versions are registered under the candidate model (params.yaml `mlflow.candidate_model_name`), where
`development` and `staging` live. Staging -> Production only through `make promote`, which copies the
staged candidate into the served model; never inside `dvc repro`, so experiments (and CI's credentials,
which may edit candidates only) cannot touch Production."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass, field

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from api.artifact import DIGEST_TAG
from api.monitoring import MONITORING_TAG, encode_monitoring
from api.predictor import Columns
from stages.classification import classification_metrics
from stages.errors import StageError, run
from stages.features import labels, model_inputs
from stages.params import Params, Quality, load_params, parse_quality, read_yaml
from stages.quality import clears_floor, gain, numeric_metrics
from stages.registry import Registry, open_registry
from stages.registry.faults import crash_point
from stages.registry.locks import decision_lock
from stages.serving import registered_scores
from stages.tracking import configure, training_run
from stages.workspace import dvc_hash, experiment_name, git_dirty, git_sha, output, workspace

LINEAGE_TAG_PREFIX = "retrain."  # make retrain's lineage, on the version trained on its data


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
    quality: Quality,
    incumbents: list[Incumbent],
    slices: list[str] | None = None,
) -> Decision:
    """Staging needs every floor cleared AND the primary metric better than every incumbent's (production
    and the current staging version) by more than the margin, in the metric's own direction."""
    primary, margin = quality.primary_metric, quality.promotion_margin
    reasons = []
    for name, rule in quality.rules(slices or []).items():
        if rule.floor is None:
            continue
        value = candidate.get(name)
        higher = rule.direction == "higher"
        if value is None:
            reasons.append(f"FAIL floor {name}: metric missing")
        elif clears_floor(rule, value):
            reasons.append(f"ok floor {name}: {value:.6f} {'>=' if higher else '<='} {rule.floor}")
        else:
            reasons.append(f"FAIL floor {name}: {value:.6f} {'<' if higher else '>'} {rule.floor}")
    rule, ours = quality.metrics[primary], candidate[primary]
    if not incumbents:
        reasons.append(f"ok no production or staging version yet; {primary} {ours:.6f} stands alone")
    for incumbent in incumbents:
        name = f"{incumbent.alias} v{incumbent.version}"
        if incumbent.score is None:
            reasons.append(
                f"FAIL {name} cannot be scored on this test split ({incumbent.error}); compare by hand"
            )
            continue
        verdict = "ok beats" if gain(rule, ours, incumbent.score) > margin else "FAIL does not beat"
        reasons.append(
            f"{verdict} {name} on {primary}: {ours:.6f} vs {incumbent.score:.6f} (margin {margin})"
        )
    return Decision(staging=not any(reason.startswith("FAIL") for reason in reasons), reasons=reasons)


def approval_rules() -> tuple[Quality, list[str]]:
    """The quality bar, and the sensitive attributes its fairness rules apply to, of the commit the run
    started from. Inside `dvc exp run` the workspace's params.yaml carries the experiment's -S overrides,
    and an experiment must not set its own bar (nor drop the attributes it is judged on)."""
    if not experiment_name():
        params = load_params()
        return params.quality, params.evaluate.slices
    committed = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=workspace(), capture_output=True, text=True, check=False
    )
    if committed.returncode != 0:
        raise StageError(f"cannot read the baseline params.yaml: {committed.stderr.strip()}")
    baseline = read_yaml(committed.stdout, "HEAD:params.yaml") or {}
    slices = list((baseline.get("evaluate") or {}).get("slices") or [])
    return parse_quality(baseline.get("quality"), "HEAD:params.yaml"), slices


def incumbents(
    registry: Registry, test: pd.DataFrame, primary: str, own_run: str | None = None
) -> list[Incumbent]:
    """Production (on the served model) and staging (on the candidates), each scored on the CURRENT test
    split, so all face the same rows. A version trained by `own_run` (this model, registered by an
    interrupted run) and a staged candidate that production is a copy of are not rivals twice."""
    features = load_params().features
    columns = Columns(numeric=tuple(features.numeric), categorical=tuple(features.categorical))
    found, seen = [], {own_run}
    for alias in (registry.aliases.production, registry.aliases.staging):
        version = registry.at(alias)
        # The copy carries its candidate's tags, training_run_id included; a bare version, its own key.
        trained_by = version.tags.get("training_run_id") or version.source if version else None
        if version is None or trained_by in seen:
            continue
        seen.add(trained_by)
        # Scored through its serving artifact, checked against its digests: the registry's pickles are
        # never loaded here (CI runs this stage with registry credentials). Any failure (no artifact, a
        # feature it lacks, a refused digest) means no fair comparison is possible.
        try:
            probability = registered_scores(
                registry.client, version.name, str(version.version), model_inputs(test, features), columns
            )
        except Exception as error:
            found.append(Incumbent(alias, str(version.version), None, f"{type(error).__name__}: {error}"))
            continue
        threshold = features.decision_threshold
        score = classification_metrics(labels(test, features), probability, threshold)[primary]
        found.append(Incumbent(alias, str(version.version), score))
    return found


def monitoring_tag(params: Params, quality: Quality) -> str:
    """What the service watches the model with: the drift thresholds, the quality floors it was approved
    against, and the predicted probability's distribution on the test split (evaluate's drift report)."""
    report = json.loads((workspace() / params.paths.drift).read_text())
    drift = params.drift
    return encode_monitoring(
        {"warning": drift.warning, "alert": drift.alert},
        drift.min_window_rows,
        {name: rule.floor for name, rule in quality.metrics.items() if rule.floor is not None},
        report["prediction_reference"],
    )


def lineage_tags(params: Params) -> dict[str, str]:
    """What register tags a version trained on a retrain's data version with: the parent data's hash, its
    own and the rows added. From the retrain's reports, which the retrain PR commits, so the version the
    merge registers into the shared registry carries them too, not only the runner's throwaway one.
    None while the data is not a retrain's (no report, or one of an earlier data version)."""
    batch_file, counts_file = workspace() / params.paths.retrain_batch, workspace() / params.paths.retrain
    if not batch_file.is_file() or not counts_file.is_file():
        return {}
    batch = json.loads(batch_file.read_text())
    if batch["data"]["sha256"] != params.data.sha256:
        return {}
    return {
        f"{LINEAGE_TAG_PREFIX}parent_data_sha256": batch["parent"]["sha256"],
        f"{LINEAGE_TAG_PREFIX}data_sha256": batch["data"]["sha256"],
        f"{LINEAGE_TAG_PREFIX}rows_added": str(json.loads(counts_file.read_text())["rows_added"]),
    }


def registered_from(registry: Registry, run_id: str) -> ModelVersion | None:
    """The version an earlier run of register made from this training run, if one did."""
    query = f"name = '{registry.model_name}' and tag.training_run_id = '{run_id}'"
    found = registry.client.search_model_versions(query, max_results=1)
    return found[0] if found else None


def main() -> None:
    params = load_params()
    aliases = params.mlflow.aliases
    quality, slices = approval_rules()
    scores = numeric_metrics(json.loads((workspace() / params.paths.metrics).read_text()))
    test = pd.read_parquet(workspace() / params.paths.prepared / "test.parquet")

    configure()
    registry = open_registry()
    candidates = registry.candidates
    model_name = candidates.model_name
    trained = training_run(
        hashlib.sha256((workspace() / params.paths.model / "model.pkl").read_bytes()).hexdigest()
    )
    # The whole decision, from reading the incumbents to moving `staging`, under the registry lock: two
    # registers at once would otherwise both beat the same incumbents, and the worse could win.
    with decision_lock(candidates):
        earlier = registered_from(candidates, trained.info.run_id)
        rivals = incumbents(registry, test, quality.primary_metric, own_run=trained.info.run_id)
        decision = decide(scores, quality, rivals, slices)
        tags = {
            "git_sha": git_sha(),
            "git_dirty": str(git_dirty()).lower(),
            "data_hash": dvc_hash(workspace() / params.paths.prepared),
            "dvc_exp_name": experiment_name(),
            "training_run_id": trained.info.run_id,
            # What the service and later registers verify the serving artifact against.
            **({DIGEST_TAG: trained.data.tags[DIGEST_TAG]} if DIGEST_TAG in trained.data.tags else {}),
            "family": trained.data.tags.get("chosen_family", ""),
            "status": "staging" if decision.staging else "rejected",
            "decision": "\n".join(decision.reasons),
            **{f"metric.{metric}": str(value) for metric, value in scores.items()},
            MONITORING_TAG: monitoring_tag(params, quality),
            **lineage_tags(params),  # a retrain's data version: its parent, rows added
        }
        if earlier is None:
            version = str(
                mlflow.register_model(trained.data.tags["chosen_model_uri"], model_name, tags=tags).version
            )
        else:
            # A run killed after registering left this version without its aliases: finish it, once.
            version = str(earlier.version)
            candidates.tag(version, **tags)
            print(
                f"register: {model_name} v{version} was already registered from this training run "
                "(an interrupted or repeated run); finishing it instead of adding a version"
            )
        crash_point("register:after-version")
        candidates.move(aliases.development, version)
        if decision.staging:
            for rival in rivals:
                if rival.alias == aliases.staging:
                    candidates.tag(rival.version, status="superseded", superseded_by=version)
            candidates.move(aliases.staging, version)

    report = {
        "model_name": model_name,
        "version": version,
        "aliases": [aliases.development, *([aliases.staging] if decision.staging else [])],
        "staging": decision.staging,
        "reasons": decision.reasons,
        "compared_with": [asdict(rival) for rival in rivals],
        "tags": {key: value for key, value in tags.items() if key != "decision"},
    }
    output(params.paths.registry_report).write_text(json.dumps(report, indent=2) + "\n")
    # Only what is the same on every run of the same model: this is the out DVC hashes.
    submitted = {
        "model_name": model_name,
        "model_sha256": trained.data.tags["model_sha256"],
        "metrics": scores,
    }
    output(params.paths.registered).write_text(json.dumps(submitted, indent=2) + "\n")
    verdict = "-> staging" if decision.staging else "stays in development (not staged)"
    print(f"register: {model_name} v{version} {verdict}")
    for reason in decision.reasons:
        print(f"  {reason}")


if __name__ == "__main__":
    run(main, "register")
