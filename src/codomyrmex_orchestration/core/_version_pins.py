"""Keeps the definition version a new run is pinned to: a delete or an overwrite of its workflow landing
between the run's plan and its first save must not drop that version from the store."""

from __future__ import annotations

from codomyrmex_orchestration.core._workflow_plan import Plan
from codomyrmex_orchestration.core._workflow_registry import DefinitionRegistry, _canonical

__all__ = ["keep_version"]


def keep_version(definitions: DefinitionRegistry, plan: Plan) -> None:
    """Called once a run of ``plan`` has its record queued for the store.

    Housekeeping drops a version that is not its name's newest (or whose name was deleted) once no
    stored run refers to it. While ``plan``'s version is still the current definition, a later delete or
    overwrite is queued after the run's record (the registry's lock orders the two reads), so the run's
    row is there first. If it is no longer current, the version may already be gone: queue it again
    (a no-op where it is still kept), after the run's record, which refers to it from then on.
    """
    version = plan.version
    if not version:  # no versions (a run recorded before them continues the current definition)
        return
    name = plan.spec.name
    if definitions.current_version(name) == version:
        return
    definitions.store.save_workflow_version(name, version, plan.digest, _canonical(plan.spec))
