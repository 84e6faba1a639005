"""Move the `production` alias: to the `staging` version (promote), or back to the one it replaced
(rollback). Each move is recorded in version tags: who moved it, when, and which version it replaced."""

from __future__ import annotations

from stages.params import load_params
from stages.registry.versions import Registry, RegistryError, stamp


def promote(registry: Registry, only_if_none: bool = False) -> str:
    name, aliases = registry.model_name, registry.aliases
    current = registry.production()
    if only_if_none and current is not None:
        return f"{name}: production is already v{current.version}; nothing to do"
    staged = registry.staging()
    if staged is None:
        raise RegistryError(
            f"{name} has no '{aliases.staging}' version; run `dvc repro` and check "
            f"{load_params().paths.registry_report} for why the last version was not staged"
        )
    if current is not None and current.version == staged.version:
        return f"{name}: v{staged.version} is already production"
    when = stamp()
    replaced = str(current.version) if current is not None else "none"
    registry.move(aliases.production, staged.version)
    registry.clear(aliases.staging)
    registry.tag(
        staged.version,
        status="production",
        promoted_at=when["at"],
        promoted_by=when["by"],
        replaced_version=replaced,
    )
    if current is not None:
        registry.tag(current.version, status="archived", replaced_by=str(staged.version))
    before = f"v{replaced}" if current is not None else "(none)"
    return f"{name}: production {before} -> v{staged.version} (by {when['by']} at {when['at']})"


def rollback(registry: Registry) -> str:
    name = registry.model_name
    current = registry.production()
    if current is None:
        raise RegistryError(f"{name} has no production version")
    previous = current.tags.get("replaced_version", "none")
    if previous == "none":
        raise RegistryError(f"production v{current.version} replaced nothing; there is nothing to go back to")
    when = stamp()
    registry.move(registry.aliases.production, previous)
    registry.tag(current.version, status="rolled_back", rolled_back_at=when["at"], rolled_back_by=when["by"])
    registry.tag(previous, status="production")
    registry.untag(previous, "replaced_by")
    return f"{name}: production v{current.version} -> v{previous} (rollback by {when['by']} at {when['at']})"
