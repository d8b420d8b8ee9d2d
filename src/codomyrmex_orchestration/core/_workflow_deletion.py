"""What a caller should know about deleting a workflow: a name that matched nothing (and the close
ones), a definition the next start registers again (a shipped sample, a config file), and the
workflows whose ``workflow.run`` steps call it. Owns no state; reads the manager's definitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from codomyrmex_orchestration._suggest import did_you_mean
from codomyrmex_orchestration.core.models import WorkflowInfo, WorkflowSpec
from codomyrmex_orchestration.errors import NotFoundError

if TYPE_CHECKING:
    from codomyrmex_orchestration.core.workflows import WorkflowManager

__all__ = ["SAMPLES_SETTING", "callers_of", "delete_with_note", "deletion_note", "unknown_note"]

#: The setting that keeps the shipped samples from being registered at start.
SAMPLES_SETTING = "CODOMYRMEX_LOAD_SAMPLES=0"
#: Most names a note lists.
_SHOWN = 20


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def unknown_note(name: str, known: Iterable[str]) -> str:
    """A delete of a name no workflow has: nothing was deleted (a repeat delete is no error)."""
    names = sorted(known)
    return (
        f"no workflow {name!r} is registered{did_you_mean(name, names)}: nothing was deleted; "
        f"known: {_listing(names) or '(none)'}"
    )


def callers_of(name: str, specs: Iterable[WorkflowSpec]) -> list[str]:
    """The workflows with a ``workflow.run`` step naming ``name`` literally (a templated name is only
    known when it runs)."""
    return sorted(
        spec.name
        for spec in specs
        if spec.name != name
        and any(
            s.module == "workflow" and s.action == "run" and s.parameters.get("workflow") == name
            for s in spec.steps
        )
    )


def deletion_note(info: WorkflowInfo, callers: list[str]) -> str | None:
    """What deleting the workflow ``info`` describes leaves behind, or None when nothing needs saying."""
    notes = []
    if info.source == "sample":
        notes.append(
            "it is a shipped sample: the server registers it again when it restarts, unless samples "
            f"are turned off ({SAMPLES_SETTING})"
        )
    elif info.source == "config" and info.path:
        notes.append(
            f"it was loaded from {info.path}: the server loads it again when it restarts, unless that "
            "file is removed"
        )
    if callers:
        notes.append(f"these workflows call it (workflow.run) and now fail at that step: {_listing(callers)}")
    return "; ".join(notes) or None


def delete_with_note(manager: WorkflowManager, name: str) -> tuple[bool, str | None]:
    """Delete ``name`` (as :meth:`WorkflowManager.delete_workflow`: False if there was none) and say
    what the caller should know about it (see the module's docstring), or None."""
    infos = {info.name: info for info in manager.list_workflows()}
    if not manager.delete_workflow(name):
        return False, unknown_note(name, infos)
    specs = []
    for other in infos:
        if other != name:
            try:
                specs.append(manager.get_workflow(other))
            except NotFoundError:  # deleted meanwhile, or refused by the policy (it cannot run anyway)
                continue
    info = infos.get(name)  # None: created between the listing and the delete
    return True, deletion_note(info, callers_of(name, specs)) if info is not None else None
