"""Move the `production` alias: to a copy of the `staging` candidate (promote), or back to the version it
replaced (rollback). Each move is recorded in version tags: who moved it, when, which version it replaced,
and which candidate version (and training run) the served version was copied from.

Promote first copies the staged candidate into the served model (`MlflowClient.copy_model_version`, whose
copy names its source, `models:/<candidates>/<version>`). A promote killed after the copy finds that copy
by its source on the next run and reuses it, so a candidate is copied once.

A move is three writes that MLflow cannot make atomic (the alias, the new version's tags, the old one's),
so it is made recoverable instead. Under the registry lock, the intent (action, from, to, when, who) is
first written as a tag on the registered model; then the alias moves; then the version tags are
written; then the intent is cleared. Whoever finds an intent left by a crash (the next promote, rollback
or deploy) finishes it when the alias had already moved, and drops it when it had not, and says which.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from stages.params import load_params
from stages.registry.faults import crash_point
from stages.registry.locks import decision_lock
from stages.registry.versions import Registry, RegistryError, stamp

INTENT_TAG = "promotion_intent"
NONE = "none"


@dataclass(frozen=True)
class Intent:
    action: str  # "promote" or "rollback"
    source: str  # the production version before the move, or "none"
    target: str  # the version production moves to
    at: str
    by: str
    candidate: str = NONE  # promote: the candidate version the target was copied from


def _pending(registry: Registry) -> Intent | None:
    from mlflow.exceptions import MlflowException

    try:
        text = registry.client.get_registered_model(registry.model_name).tags.get(INTENT_TAG)
    except MlflowException as error:  # no served model yet: the first promotion creates it by copying
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return Intent(**json.loads(text)) if text else None


def _finish(registry: Registry, intent: Intent) -> None:
    """Every write after the alias move; each is idempotent, so finishing twice is finishing once."""
    name, aliases = registry.model_name, registry.aliases
    if intent.action == "promote":
        staged = registry.staging()
        if staged is not None and str(staged.version) == intent.candidate:
            registry.clear(aliases.staging)  # only the version promoted: a newer staging stays
        registry.tag(
            intent.target,
            status="production",
            promoted_at=intent.at,
            promoted_by=intent.by,
            replaced_version=intent.source,
            candidate_model=registry.candidate_name,
            candidate_version=intent.candidate,
        )
        registry.candidates.tag(intent.candidate, status="promoted", served_version=intent.target)
        crash_point("promote:between-tags")
        if intent.source != NONE:
            registry.tag(intent.source, status="archived", replaced_by=intent.target)
    else:
        registry.tag(intent.source, status="rolled_back", rolled_back_at=intent.at, rolled_back_by=intent.by)
        registry.tag(intent.target, status="production")
        versions = registry.client.get_model_version(name, intent.target)
        if "replaced_by" in versions.tags:
            registry.untag(intent.target, "replaced_by")
    registry.client.delete_registered_model_tag(name, INTENT_TAG)


def recover(registry: Registry) -> str | None:
    """Finish or drop an interrupted move; a line that says which, or None when there was none.
    Callers hold the registry lock."""
    intent = _pending(registry)
    if intent is None:
        return None
    current = registry.production()
    moved = current is not None and str(current.version) == intent.target
    what = f"{intent.action} v{intent.source} -> v{intent.target} by {intent.by} at {intent.at}"
    if moved:
        _finish(registry, intent)
        return f"completed an interrupted {what}: the alias had moved"
    registry.client.delete_registered_model_tag(registry.model_name, INTENT_TAG)
    return f"reversed an interrupted {what}: the alias had not moved, nothing else had changed"


def _source(registry: Registry, candidate: str) -> str:
    return f"models:/{registry.candidate_name}/{candidate}"


def copy_of(registry: Registry, candidate: str) -> str:
    """The served version copied from this candidate version: an earlier copy when a killed promote left
    one (found by the source the copy names), else a new copy."""
    source = _source(registry, candidate)
    for version in registry.client.search_model_versions(f"name = '{registry.model_name}'"):
        if version.source == source:
            return str(version.version)
    copied = registry.client.copy_model_version(source, registry.model_name)
    crash_point("promote:after-copy")
    return str(copied.version)


def _move(registry: Registry, intent: Intent) -> None:
    registry.client.set_registered_model_tag(registry.model_name, INTENT_TAG, json.dumps(asdict(intent)))
    crash_point(f"{intent.action}:before-alias")
    registry.move(registry.aliases.production, intent.target)
    crash_point(f"{intent.action}:after-alias")
    _finish(registry, intent)


def _with_recovery(note: str | None, message: str) -> str:
    return f"{note}\n{message}" if note else message


def promote(registry: Registry, only_if_none: bool = False) -> str:
    with decision_lock(registry):
        note = recover(registry)
        name, aliases = registry.model_name, registry.aliases
        current = registry.production()
        if only_if_none and current is not None:
            return _with_recovery(note, f"{name}: production is already v{current.version}; nothing to do")
        staged = registry.staging()
        if staged is None:
            raise RegistryError(
                _with_recovery(
                    note,
                    f"{name} has no '{aliases.staging}' version; run `dvc repro` and check "
                    f"{load_params().paths.registry_report} for why the last version was not staged",
                )
            )
        candidate = str(staged.version)
        if current is not None and current.source == _source(registry, candidate):
            return _with_recovery(
                note, f"{name}: v{current.version} (candidate v{candidate}) is already production"
            )
        target = copy_of(registry, candidate)
        when = stamp()
        replaced = str(current.version) if current is not None else NONE
        _move(registry, Intent("promote", replaced, target, when["at"], when["by"], candidate))
        before = f"v{replaced}" if current is not None else "(none)"
        return _with_recovery(
            note,
            f"{name}: production {before} -> v{target}, a copy of {registry.candidate_name} "
            f"v{candidate} (by {when['by']} at {when['at']})",
        )


def rollback(registry: Registry) -> str:
    with decision_lock(registry):
        note = recover(registry)
        name = registry.model_name
        current = registry.production()
        if current is None:
            raise RegistryError(_with_recovery(note, f"{name} has no production version"))
        previous = current.tags.get("replaced_version", NONE)
        if previous == NONE:
            raise RegistryError(
                _with_recovery(
                    note, f"production v{current.version} replaced nothing; there is nothing to go back to"
                )
            )
        when = stamp()
        _move(registry, Intent("rollback", str(current.version), previous, when["at"], when["by"]))
        return _with_recovery(
            note,
            f"{name}: production v{current.version} -> v{previous} (rollback by {when['by']} at {when['at']})",
        )
