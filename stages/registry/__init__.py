"""The Model Registry, as the pipeline and CI/CD use it: one place for alias lookup, version tags,
promotion and rollback.

    python -m stages.registry promote [--first]   # production := staging (--first: only if none yet)
    python -m stages.registry rollback            # production := the version it replaced
    python -m stages.registry migrate-serving N   # add the serving artifact to an older version
"""

from stages.registry.promotion import promote, rollback
from stages.registry.versions import Registry, RegistryError, open_registry

__all__ = ["Registry", "RegistryError", "open_registry", "promote", "rollback"]
