"""Copy a registered model out of the registry, to bake it into the api image.

    python -m stages.ci.export_model --output DIR                    # staging if set, else production
    python -m stages.ci.export_model --alias production --output DIR

By default it takes the model that is Production once this commit is deployed: the staging version
that cd.yml is about to promote, or the current Production when nothing is staged. An image built
this way serves the right model even where it cannot reach the registry, and so passes the deploy
check. It prints the version it copied (and nothing else on stdout), so CI can tag the image with it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from stages.errors import run
from stages.params import load_params
from stages.registry import open_registry
from stages.tracking import tracking_uri


def export(
    model_name: str, aliases: list[str], output: Path, candidate_name: str | None = None
) -> tuple[str, str]:
    """Download the version behind the first alias that is set into `output` (replacing it); staging is
    looked up on the candidate model, production on the served one. Returns (alias, version)."""
    import mlflow

    alias, found = open_registry(model_name=model_name, candidate_name=candidate_name).first_of(aliases)
    version = str(found.version)
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{found.name}/{version}", dst_path=str(output), tracking_uri=tracking_uri()
    )
    return alias, version


def main(argv: list[str] | None = None) -> None:
    names = load_params().mlflow
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--alias",
        action="append",
        help="alias to export; repeat for fallbacks (default: staging, then production)",
    )
    parser.add_argument("--output", type=Path, required=True, help="directory to write the MLflow model into")
    args = parser.parse_args(argv)
    aliases = args.alias or [names.aliases.staging, names.aliases.production]
    alias, version = export(names.model_name, aliases, args.output)
    home = open_registry().home(alias)
    print(f"export-model: {home}@{alias} is v{version}, written to {args.output}", file=sys.stderr)
    print(version)


if __name__ == "__main__":
    run(main, "export-model")
