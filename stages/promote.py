"""Move the `production` alias: to the `staging` version (promote), or back to the one it replaced
(rollback). Each move is recorded in version tags: who moved it, when, and which version it replaced."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime

import mlflow
from mlflow.exceptions import MlflowException

from stages.config import load_params
from stages.tracking import configure


def _alias_version(client: mlflow.MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _stamp() -> dict[str, str]:
    return {"at": datetime.now(UTC).isoformat(timespec="seconds"), "by": getpass.getuser()}


def promote(client: mlflow.MlflowClient, name: str, aliases: dict[str, str], only_if_none: bool) -> str:
    current = _alias_version(client, name, aliases["production"])
    if only_if_none and current is not None:
        return f"{name}: production is already v{current.version}; nothing to do"
    staged = _alias_version(client, name, aliases["staging"])
    if staged is None:
        raise SystemExit(
            f"promote: {name} has no '{aliases['staging']}' version; run `dvc repro` and check "
            f"{load_params()['paths']['registry_report']} for why the last version was not staged"
        )
    if current is not None and current.version == staged.version:
        return f"{name}: v{staged.version} is already production"
    stamp = _stamp()
    replaced = str(current.version) if current is not None else "none"
    client.set_registered_model_alias(name, aliases["production"], staged.version)
    client.delete_registered_model_alias(name, aliases["staging"])
    for key, value in {
        "status": "production",
        "promoted_at": stamp["at"],
        "promoted_by": stamp["by"],
        "replaced_version": replaced,
    }.items():
        client.set_model_version_tag(name, staged.version, key, value)
    if current is not None:
        client.set_model_version_tag(name, current.version, "status", "archived")
        client.set_model_version_tag(name, current.version, "replaced_by", str(staged.version))
    before = f"v{replaced}" if current is not None else "(none)"
    return f"{name}: production {before} -> v{staged.version} (by {stamp['by']} at {stamp['at']})"


def rollback(client: mlflow.MlflowClient, name: str, aliases: dict[str, str]) -> str:
    current = _alias_version(client, name, aliases["production"])
    if current is None:
        raise SystemExit(f"rollback: {name} has no production version")
    previous = current.tags.get("replaced_version", "none")
    if previous == "none":
        raise SystemExit(
            f"rollback: production v{current.version} replaced nothing; there is nothing to go back to"
        )
    stamp = _stamp()
    client.set_registered_model_alias(name, aliases["production"], previous)
    client.set_model_version_tag(name, current.version, "status", "rolled_back")
    client.set_model_version_tag(name, current.version, "rolled_back_at", stamp["at"])
    client.set_model_version_tag(name, current.version, "rolled_back_by", stamp["by"])
    client.set_model_version_tag(name, previous, "status", "production")
    client.delete_model_version_tag(name, previous, "replaced_by")
    return (
        f"{name}: production v{current.version} -> v{previous} (rollback by {stamp['by']} at {stamp['at']})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--first", action="store_true", help="promote only when there is no production yet")
    mode.add_argument(
        "--rollback", action="store_true", help="move production back to the version it replaced"
    )
    args = parser.parse_args(argv)

    names = load_params()["mlflow"]
    configure()
    client = mlflow.MlflowClient()
    if args.rollback:
        message = rollback(client, names["model_name"], names["aliases"])
    else:
        message = promote(client, names["model_name"], names["aliases"], only_if_none=args.first)
    print(message)


if __name__ == "__main__":
    sys.exit(main())
