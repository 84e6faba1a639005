"""The pull-request comment, compared as exact markdown."""

from __future__ import annotations

import json
import subprocess

import yaml

from stages.ci import pr_comment
from stages.ci.pr_comment import ABSENT, params_diff, render
from stages.params import load_params
from stages.quality import evaluate, rules_from_params
from tests.support.processes import REPO_ROOT

RULES = rules_from_params(
    {
        "roc_auc": {"direction": "higher", "floor": 0.90, "tolerance": 0.005},
        "log_loss": {"direction": "lower", "tolerance": 0.01},
    }
)
MAIN = {"roc_auc": 0.93, "log_loss": 0.30, "recall": 0.60}
PARAMS_MAIN = {"train.xgboost.max_depth": 6, "train.candidates": ["logreg", "xgboost"], "evaluate.bins": 10}


def test_a_failing_gate_renders_its_reasons_and_both_tables():
    current = {"roc_auc": 0.92, "log_loss": 0.295, "recall": 0.61, "f1": 0.7}
    params_here = {"train.xgboost.max_depth": 8, "train.candidates": ["logreg", "xgboost"], "new.flag": None}
    markdown = render(evaluate(current, MAIN, RULES), current, MAIN, params_here, PARAMS_MAIN)
    assert markdown == (
        "## Model quality gate\n"
        "\n"
        "**❌ Gate failed**:\n"
        "\n"
        "- roc_auc regressed by 0.0100 (0.9300 → 0.9200), more than its tolerance 0.0050 (higher is better)\n"
        "\n"
        "### Metrics (test split)\n"
        "\n"
        "| Metric | main | this branch | change | rule | |\n"
        "|---|---:|---:|---:|---|:-:|\n"
        "| roc_auc | 0.9300 | 0.9200 | -0.0100 | ≥ 0.9000, drop ≤ 0.0050 | ❌ |\n"
        "| log_loss | 0.3000 | 0.2950 | -0.0050 | rise ≤ 0.0100 | ✅ |\n"
        "| recall | 0.6000 | 0.6100 | +0.0100 |  |  |\n"
        "| f1 | — | 0.7000 | new |  |  |\n"
        "\n"
        "### Params\n"
        "\n"
        "| Param | main | this branch |\n"
        "|---|---|---|\n"
        "| train.xgboost.max_depth | `6` | `8` |\n"
        "| evaluate.bins | `10` | — |\n"
        "| new.flag | — | `null` |\n"
        "\n"
        "<sub>Floors and tolerances live in `params.yaml` under `quality`; `make gate` applies them.</sub>\n"
    )


def test_a_passing_gate_with_a_missing_ungated_metric_and_no_param_change():
    current = {"roc_auc": 0.935, "log_loss": 0.29}
    markdown = render(evaluate(current, MAIN, RULES), current, MAIN, PARAMS_MAIN, PARAMS_MAIN)
    assert markdown == (
        "## Model quality gate\n"
        "\n"
        "**✅ Gate passed**: every gated metric clears its floor and stays within its tolerance of main.\n"
        "\n"
        "### Metrics (test split)\n"
        "\n"
        "| Metric | main | this branch | change | rule | |\n"
        "|---|---:|---:|---:|---|:-:|\n"
        "| roc_auc | 0.9300 | 0.9350 | +0.0050 | ≥ 0.9000, drop ≤ 0.0050 | ✅ |\n"
        "| log_loss | 0.3000 | 0.2900 | -0.0100 | rise ≤ 0.0100 | ✅ |\n"
        "| recall | 0.6000 | — | missing |  |  |\n"
        "\n"
        "### Params\n"
        "\n"
        "No parameter differs from main.\n"
        "\n"
        "<sub>Floors and tolerances live in `params.yaml` under `quality`; `make gate` applies them.</sub>\n"
    )


def test_the_first_run_says_there_is_no_baseline():
    current = {"roc_auc": 0.92, "log_loss": 0.3}
    verdict = evaluate(current, None, RULES, base_label="origin/main")
    markdown = render(verdict, current, None, PARAMS_MAIN, None, base_label="origin/main")
    assert markdown == (
        "## Model quality gate\n"
        "\n"
        "**✅ Gate passed**: every gated metric clears its floor.\n"
        "\n"
        "> No baseline metrics on origin/main yet: only the absolute floors were checked.\n"
        "\n"
        "### Metrics (test split)\n"
        "\n"
        "| Metric | origin/main | this branch | change | rule | |\n"
        "|---|---:|---:|---:|---|:-:|\n"
        "| roc_auc | — | 0.9200 | — | ≥ 0.9000, drop ≤ 0.0050 | ✅ |\n"
        "| log_loss | — | 0.3000 | — | rise ≤ 0.0100 | ✅ |\n"
        "\n"
        "### Params\n"
        "\n"
        "No `params.yaml` on origin/main to compare with.\n"
        "\n"
        "<sub>Floors and tolerances live in `params.yaml` under `quality`; `make gate` applies them.</sub>\n"
    )


def test_a_missing_gated_metric_is_marked_failed_in_the_table():
    current = {"log_loss": 0.3}
    markdown = render(evaluate(current, MAIN, RULES), current, MAIN, PARAMS_MAIN, PARAMS_MAIN)
    assert "- roc_auc is missing from the metrics\n" in markdown
    assert "| roc_auc | 0.9300 | — | missing | ≥ 0.9000, drop ≤ 0.0050 | ❌ |\n" in markdown


def test_params_diff_tells_null_from_absent_and_escapes_table_pipes():
    assert params_diff({"a": None, "b": 1}, {"b": 1, "c": None}) == [("c", None, ABSENT), ("a", ABSENT, None)]
    table = pr_comment.params_table({"data.source": "a|b"}, {"data.source": "c"}, "main")
    assert table[-1] == "| data.source | `c` | `a\\|b` |"


def test_main_writes_the_comment_for_a_real_branch(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["quality"] = {"primary_metric": "roc_auc", "metrics": {"roc_auc": {"floor": 0.9}}}
    params["prepare"]["seed"] = 1
    (repo / "params.yaml").write_text(json.dumps(params))
    (repo / "data" / "metrics.json").write_text(json.dumps({"roc_auc": 0.93}))
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["init", "-q", "-b", "main"], ["add", "."], [*identity, "commit", "-q", "-m", "base"]):
        subprocess.run(["git", *command], cwd=repo, check=True)
    params["prepare"]["seed"] = 2
    (repo / "params.yaml").write_text(json.dumps(params))
    (repo / "data" / "metrics.json").write_text(json.dumps({"roc_auc": 0.95}))
    monkeypatch.chdir(repo)
    load_params.cache_clear()
    try:
        assert pr_comment.main(["--output", str(tmp_path / "out" / "comment.md")]) == 0
    finally:
        load_params.cache_clear()
    markdown = (tmp_path / "out" / "comment.md").read_text()
    assert "| roc_auc | 0.9300 | 0.9500 | +0.0200 | ≥ 0.9000 | ✅ |\n" in markdown
    assert "| prepare.seed | `1` | `2` |\n" in markdown


def test_a_retrain_branch_shows_its_new_rows_and_production_on_the_new_test_split():
    counts = {"rows_added": 500, "positive": 120, "negative": 380, "positive_fraction": 0.24,
              "feedback_ids": 510, "unknown_ids": 10, "already_in_data": 0}  # fmt: skip
    production = {"metric": "roc_auc", "test_rows": 5689, "retrained": 0.9312, "production_version": "7",
                  "production": 0.9290, "error": ""}  # fmt: skip
    lines = pr_comment.retrain_lines(counts, {"rows_added": 0}, production)
    assert lines == [
        "| new labelled rows | positive | negative | positive share | feedback ids | unknown ids | already in the data |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        "| 500 | 120 | 380 | 0.24 | 510 | 10 | 0 |",
        "",
        "On the new test split (5689 rows), roc_auc: this branch's model 0.9312, production v7 0.9290 (+0.0022).",
    ]
    verdict = evaluate(MAIN, MAIN, RULES, "main")
    markdown = render(verdict, MAIN, MAIN, PARAMS_MAIN, PARAMS_MAIN, "main", lines)
    assert "### New data (`make retrain`)\n\n" + "\n".join(lines) in markdown
    # Not a retrain: no rows, or the same retrain as main's.
    assert pr_comment.retrain_lines({"rows_added": 0}, None, None) == []
    assert pr_comment.retrain_lines(counts, dict(counts), production) == []
    assert "New data" not in render(verdict, MAIN, MAIN, PARAMS_MAIN, PARAMS_MAIN, "main")
    unscored = pr_comment.retrain_lines(
        counts, None, {**production, "production": None, "error": "no production version"}
    )
    assert unscored[-1] == "Production could not be scored on the new test split: no production version."
