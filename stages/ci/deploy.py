"""`make deploy`, what cd.yml runs: promote, roll out, verify, and roll back when the check fails.

1. Move the registry's production alias to a copy of the staging candidate (stages.registry.promote, in
   process), when there is one: a commit whose model did not beat production leaves no staging version, and ships its
   image with production's model unchanged. The running service polls the alias and hot-reloads the
   model; no restart is needed for a new model.
2. When DEPLOY_HOOK_URL is set, POST {"image": ..., "model_version": ...} to it (with DEPLOY_TOKEN as a
   bearer token) so the platform pulls the new image. Most hosts offer such a deploy hook; a host
   without one can run a small receiver, or leave it unset and ship models only.
3. Verify DEPLOY_URL: /ready answers 200 and /model names the new production version (deploy_check).
4. On failure: move the alias back (stages.registry.rollback) if this run moved it,
   re-post the previous image if one is known, verify that the old version serves again, and fail.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from stages.ci.deploy_check import Expected, Outcome, service_arguments, verify
from stages.errors import StageError, run
from stages.registry import Registry, open_registry, promote, rollback


@dataclass(frozen=True)
class Steps:
    """The outside world, injected so that the sequence is testable without a registry or a platform."""

    production: Callable[[], Expected | None]
    staging: Callable[[], Expected | None]
    promote: Callable[[], None]
    rollback: Callable[[], None]
    rollout: Callable[[str, Expected], None] | None  # None: no deploy hook configured
    verify: Callable[[Expected], Outcome]


def deploy(steps: Steps, image: str | None, previous_image: str | None) -> bool:
    before, staged = steps.production(), steps.staging()
    if staged is None or staged == before:
        # A commit that trained no better model: the image still ships, production's model stays.
        print("deploy: no new staging version; production's model stays as it is", flush=True)
    else:
        steps.promote()
    after = steps.production()
    if after is None:
        print("deploy: the registry has no production version after promotion", flush=True)
        return False
    moved = after != before
    print(
        f"deploy: production is {after.name} v{after.version}" + ("" if moved else " (unchanged)"), flush=True
    )
    try:
        if steps.rollout and image:
            steps.rollout(image, after)
        outcome = steps.verify(after)
    except OSError as error:  # the hook refused or was unreachable: the alias has moved all the same
        outcome = Outcome(False, f"rollout of {image} failed: {error}")
    if outcome.ok:
        print(f"deploy: verified: {outcome.message}", flush=True)
        return True

    print(f"deploy: verification FAILED: {outcome.message}; rolling back", flush=True)
    if moved and before is not None:
        steps.rollback()
    if steps.rollout and previous_image and before is not None:
        steps.rollout(previous_image, before)
    if before is None:
        print("deploy: there was no earlier production version to return to", flush=True)
        return False
    restored = steps.verify(before)
    state = "serving again" if restored.ok else f"NOT verified either: {restored.message}"
    print(f"deploy: rolled back to {before.name} v{before.version}, {state}", flush=True)
    return False


def post_hook(hook_url: str, token: str | None, image: str, model: Expected) -> None:
    body = json.dumps({"image": image, "model_name": model.name, "model_version": model.version}).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(hook_url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        print(f"deploy: rollout of {image} accepted ({response.status})", flush=True)


def at_alias(registry: Registry, alias: str) -> Callable[[], Expected | None]:
    def lookup() -> Expected | None:
        version = registry.at(alias)
        # Named by its own model: a staged candidate v4 is not the served v4.
        return None if version is None else Expected(version.name, str(version.version))

    return lookup


def main(argv: list[str] | None = None) -> int:
    parser = service_arguments(__doc__)
    parser.add_argument(
        "--image", default=os.environ.get("IMAGE"), help="image to roll out (default: $IMAGE)"
    )
    parser.add_argument(
        "--previous-image", default=os.environ.get("PREVIOUS_IMAGE"), help="image to go back to"
    )
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("give --url or set DEPLOY_URL: the running service to verify")

    registry = open_registry()
    aliases = registry.aliases
    hook_url, token = os.environ.get("DEPLOY_HOOK_URL"), os.environ.get("DEPLOY_TOKEN")
    steps = Steps(
        production=at_alias(registry, aliases.production),
        staging=at_alias(registry, aliases.staging),
        promote=lambda: print(f"deploy: {promote(registry)}", flush=True),
        rollback=lambda: print(f"deploy: {rollback(registry)}", flush=True),
        rollout=(lambda image, model: post_hook(hook_url, token, image, model)) if hook_url else None,
        verify=lambda expected: verify(args.url, expected, timeout=args.timeout, interval=args.interval),
    )
    try:
        return 0 if deploy(steps, args.image, args.previous_image) else 1
    except StageError as error:
        print(f"deploy: {error}", flush=True)
        return 1


if __name__ == "__main__":
    run(main, "deploy")
