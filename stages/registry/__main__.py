"""`python -m stages.registry promote [--first]`, `... rollback` and `... migrate-serving VERSION`."""

from __future__ import annotations

import argparse

from stages.errors import run
from stages.registry import open_registry, promote, rollback
from stages.registry.migration import add_serving_artifact
from stages.tracking import configure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.registry", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    promoting = commands.add_parser("promote", help="move production to the staging version")
    promoting.add_argument("--first", action="store_true", help="only when there is no production yet")
    commands.add_parser("rollback", help="move production back to the version it replaced")
    migrating = commands.add_parser(
        "migrate-serving", help="add the serving artifact to a version registered before it existed"
    )
    migrating.add_argument("version")
    migrating.add_argument(
        "--candidates", action="store_true", help="a version of the candidate model, not the served one"
    )
    args = parser.parse_args(argv)

    configure()
    registry = open_registry()
    if args.command == "migrate-serving":
        target = registry.candidates if args.candidates else registry
        print(add_serving_artifact(target, args.version))
    elif args.command == "rollback":
        print(rollback(registry))
    else:
        print(promote(registry, only_if_none=args.first))


if __name__ == "__main__":
    run(main, "registry")
