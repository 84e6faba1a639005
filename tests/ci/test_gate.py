"""The metric gate: floors, tolerances with their direction, missing metrics, the first run."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from stages.ci import gate
from stages.params import load_params
from stages.quality import Rule, evaluate, numeric_metrics, rules_from_params
from tests.support.processes import REPO_ROOT

QUALITY = {
    "primary_metric": "roc_auc",
    "metrics": {
        "roc_auc": {"direction": "higher", "floor": 0.90, "tolerance": 0.005},
        "accuracy": {"direction": "higher", "floor": 0.83, "tolerance": 0.01},
        "log_loss": {"direction": "lower", "tolerance": 0.01},
    },
}
RULES = rules_from_params(QUALITY["metrics"])
MAIN = {"roc_auc": 0.93, "accuracy": 0.86, "log_loss": 0.30, "recall": 0.60}


def test_rules_are_read_from_one_record_per_metric():
    assert {
        "roc_auc": Rule(direction="higher", floor=0.90, tolerance=0.005),
        "accuracy": Rule(direction="higher", floor=0.83, tolerance=0.01),
        "log_loss": Rule(direction="lower", floor=None, tolerance=0.01),
    } == RULES


def test_a_direction_other_than_higher_or_lower_is_refused():
    with pytest.raises(ValueError, match="direction"):
        rules_from_params({"f1": {"direction": "up", "tolerance": 0.1}})


def test_the_projects_own_params_give_every_tolerance_a_direction():
    rules = load_params().quality.metrics
    assert rules, "params.yaml quality block defines no gated metric"
    assert {rule.direction for rule in rules.values()} <= {"higher", "lower"}


def test_unchanged_metrics_pass():
    verdict = evaluate(dict(MAIN), MAIN, RULES)
    assert verdict.passed, verdict.failures
    assert verdict.notices == ()


def test_a_regression_beyond_tolerance_fails():
    verdict = evaluate({**MAIN, "roc_auc": 0.92}, MAIN, RULES)
    assert not verdict.passed
    assert verdict.failures == [
        "roc_auc regressed by 0.0100 (0.9300 → 0.9200), more than its tolerance 0.0050 (higher is better)"
    ]


def test_a_lower_is_better_metric_fails_when_it_rises_beyond_tolerance():
    verdict = evaluate({**MAIN, "log_loss": 0.32}, MAIN, RULES)
    assert [check.metric for check in verdict.checks if not check.passed] == ["log_loss"]


def test_a_regression_within_tolerance_passes():
    assert evaluate({**MAIN, "roc_auc": 0.927, "log_loss": 0.305}, MAIN, RULES).passed


def test_a_move_of_exactly_the_tolerance_passes_despite_float_error():
    assert 0.93 - 0.925 > 0.005  # the float error the gate must absorb
    assert evaluate({**MAIN, "roc_auc": 0.925}, MAIN, RULES).passed


def test_improvements_pass_in_both_directions():
    improved = {**MAIN, "roc_auc": 0.97, "accuracy": 0.90, "log_loss": 0.20}
    verdict = evaluate(improved, MAIN, RULES)
    assert verdict.passed
    assert {check.metric: round(check.change, 4) for check in verdict.checks} == {
        "roc_auc": 0.04,
        "accuracy": 0.04,
        "log_loss": -0.1,
    }


def test_a_missing_metric_fails():
    current = {name: value for name, value in MAIN.items() if name != "accuracy"}
    verdict = evaluate(current, MAIN, RULES)
    assert not verdict.passed
    assert verdict.failures == ["accuracy is missing from the metrics"]


def test_a_metric_that_is_not_a_number_fails():
    verdict = evaluate({**MAIN, "roc_auc": math.nan}, MAIN, RULES)
    assert verdict.failures == ["roc_auc is nan, not a finite number"]


def test_the_first_run_without_a_baseline_passes_with_a_notice():
    verdict = evaluate(dict(MAIN), None, RULES)
    assert verdict.passed
    assert not verdict.has_baseline
    assert verdict.notices == ("No baseline metrics on main yet: only the absolute floors were checked.",)


def test_floors_apply_even_without_a_baseline():
    verdict = evaluate({**MAIN, "accuracy": 0.80}, None, RULES)
    assert verdict.failures == ["accuracy 0.8000 is below its floor 0.8300"]


def test_a_floor_on_a_lower_is_better_metric_is_a_ceiling():
    rules = rules_from_params({"brier": {"direction": "lower", "floor": 0.1}})
    assert evaluate({"brier": 0.09}, None, rules).passed
    assert evaluate({"brier": 0.11}, None, rules).failures == ["brier 0.1100 is above its ceiling 0.1000"]


def test_a_gated_metric_new_since_main_is_noted_not_failed():
    baseline = {name: value for name, value in MAIN.items() if name != "log_loss"}
    verdict = evaluate(dict(MAIN), baseline, RULES)
    assert verdict.passed
    assert verdict.notices == ("log_loss has no baseline on main: its tolerance was not checked.",)


def test_numeric_metrics_flattens_nesting_and_drops_non_numbers():
    tree = {"roc_auc": 0.9, "slices": {"gender": {"Male": 0.8}}, "model": "xgboost", "ok": True, "n": 3}
    assert numeric_metrics(tree) == {"roc_auc": 0.9, "slices.gender.Male": 0.8, "n": 3.0}


# ---------------------------------------------------------------- against a real git history


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A repository whose main holds params.yaml and data/metrics.json, checked out on a branch."""
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["quality"] = QUALITY
    (root / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    (root / "data" / "metrics.json").write_text(json.dumps(MAIN))
    _git(root, "init", "-q", "-b", "main")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "root")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "baseline")
    _git(root, "checkout", "-q", "-b", "feature")
    monkeypatch.chdir(root)
    load_params.cache_clear()
    yield root
    load_params.cache_clear()


def _write_metrics(repo: Path, metrics: dict) -> None:
    (repo / "data" / "metrics.json").write_text(json.dumps(metrics))


def test_main_fails_on_a_regression_against_the_main_branch(repo, capsys):
    _write_metrics(repo, {**MAIN, "roc_auc": 0.91})
    assert gate.main([]) == 1
    assert "roc_auc regressed by 0.0200" in capsys.readouterr().out


def test_main_passes_an_improvement_against_the_main_branch(repo, capsys):
    _write_metrics(repo, {**MAIN, "roc_auc": 0.95})
    assert gate.main([]) == 0
    assert capsys.readouterr().out.rstrip().endswith("gate: passed")


def test_main_falls_back_to_the_remote_tracking_branch(repo):
    """GitHub's checkout of a pull request has origin/main but no local main."""
    _git(repo, "update-ref", "refs/remotes/origin/main", "main")
    _git(repo, "branch", "-q", "-D", "main")
    assert gate.load_baseline("main", None, "data/metrics.json") == MAIN


def test_no_metrics_on_main_is_the_first_run(repo, capsys):
    _git(repo, "rm", "-q", "--cached", "data/metrics.json")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "drop")
    _git(repo, "branch", "-q", "-f", "main", "HEAD")
    assert gate.main([]) == 0
    assert "No baseline metrics on main yet" in capsys.readouterr().out


def test_a_baseline_file_replaces_the_git_ref(repo, tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**MAIN, "accuracy": 0.95}))
    assert gate.main(["--baseline", str(old)]) == 1


def test_a_shallow_clone_is_refused_rather_than_read_as_a_first_run(repo, tmp_path, monkeypatch, capsys):
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow)], check=True)
    monkeypatch.chdir(shallow)
    load_params.cache_clear()
    assert gate.main([]) == 2
    assert "shallow clone" in capsys.readouterr().err
