"""`python -m stages.registry promote [--first]` and `python -m stages.registry rollback`."""

from __future__ import annotations

import argparse

from stages.errors import run
from stages.registry import open_registry, promote, rollback
from stages.tracking import configure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.registry", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    promoting = commands.add_parser("promote", help="move production to the staging version")
    promoting.add_argument("--first", action="store_true", help="only when there is no production yet")
    commands.add_parser("rollback", help="move production back to the version it replaced")
    args = parser.parse_args(argv)

    configure()
    registry = open_registry()
    print(rollback(registry) if args.command == "rollback" else promote(registry, only_if_none=args.first))


if __name__ == "__main__":
    run(main, "registry")
