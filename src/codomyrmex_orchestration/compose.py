"""Composition: turn :class:`~codomyrmex_orchestration.config.Settings` into an engine, and hold the
process-wide engine behind the ``get_*()`` singletons.

This is the one place that reads ``Settings`` for the core (core classes take plain keyword arguments).
It owns the singleton (``_engine``), the configuration it was built from (``_configured``), both guarded
by ``_lock``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from codomyrmex_orchestration._suggest import did_you_mean
from codomyrmex_orchestration.config import ENV_PREFIX, Settings
from codomyrmex_orchestration.core._secrets import SecretSource
from codomyrmex_orchestration.core.actions import ActionRegistry, create_registry
from codomyrmex_orchestration.core.actions._policy import pin_extras
from codomyrmex_orchestration.core.backends import ExecutionBackend, create_backend
from codomyrmex_orchestration.core.engine import OrchestrationEngine
from codomyrmex_orchestration.core.projects import ProjectManager
from codomyrmex_orchestration.core.resources import ResourceManager
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.workflows import WorkflowManager
from codomyrmex_orchestration.errors import InvalidInputError, InvalidStateError
from codomyrmex_orchestration.samples import SAMPLES_DIR

__all__ = [
    "build_engine",
    "build_registry",
    "configure_engine",
    "engine_arguments",
    "get_orchestration_engine",
    "get_project_manager",
    "get_resource_manager",
    "get_task_orchestrator",
    "get_workflow_manager",
    "reset_engine",
]

#: The settings that shape an engine (the others configure the server, logging or the CLI).
ENGINE_SETTINGS = (
    "state_dir",
    "config_dir",
    "projects_dir",
    "templates_dir",
    "mcp_servers_file",
    "secrets_file",
    "max_workers",
    "max_queued_tasks",
    "max_queued_per_client",
    "max_steps",
    "max_workflows",
    "max_open_sessions",
    "max_map_items",
    "max_resolved_size",
    "max_output_bytes",
    "max_subworkflow_depth",
    "max_subworkflow_runs",
    "spill_outputs",
    "allow_shell",
    "durable",
    "retention_runs",
    "retention_events",
    "state_max_bytes",
    "max_parameters_bytes",
    "load_samples",
    "executor",
    "dask_scheduler",
    "dask_n_workers",
    "dask_processes",
    "dask_worker_resources",
    "dask_resource_map",
    "dask_worker_saturation",
)


def engine_arguments(settings: Settings) -> dict[str, Any]:
    """The :class:`OrchestrationEngine` keyword arguments ``settings`` stands for (no backend: see
    :func:`build_engine`)."""
    return {
        "state_dir": settings.state_dir,
        "config_dir": settings.config_dir,
        "projects_dir": settings.projects_dir,
        "templates_dir": settings.templates_dir,
        "max_workers": settings.max_workers,
        "max_queued_tasks": settings.max_queued_tasks,
        "max_queued_per_client": settings.max_queued_per_client,
        "max_steps": settings.max_steps,
        "max_workflows": settings.max_workflows,
        "max_open_sessions": settings.max_open_sessions,
        "max_map_items": settings.max_map_items,
        "max_resolved_size": settings.max_resolved_size,
        "max_output_bytes": settings.max_output_bytes,
        "max_subworkflow_depth": settings.max_subworkflow_depth,
        "max_subworkflow_runs": settings.max_subworkflow_runs,
        "spill_outputs": settings.spill_outputs,
        "allow_code_execution": settings.allow_shell is not False,
        "durable": settings.durable,
        "retention_runs": settings.retention_runs,
        "retention_events": settings.retention_events,
        "state_max_bytes": settings.state_max_bytes,
        "max_parameters_bytes": settings.max_parameters_bytes,
        "sample_dir": SAMPLES_DIR if settings.load_samples else None,
    }


def build_registry(settings: Settings, *, procs_dir: Path | None = None) -> ActionRegistry:
    """The action registry for ``settings``: the built-ins, plugins and ``mcp.call`` with the servers of
    ``settings.mcp_servers_file`` (stdio servers' process groups recorded under ``procs_dir``)."""
    from codomyrmex_orchestration import connectors  # imports mcp: only when a registry is built

    registry = create_registry(allow_code_execution=settings.allow_shell is not False)
    connectors.register(registry, settings.mcp_servers_file, procs_dir=procs_dir)
    return registry


def build_engine(settings: Settings, **overrides: Any) -> OrchestrationEngine:
    """A new engine configured from ``settings``; ``overrides`` (engine keyword arguments) win.

    A non-local ``settings.executor`` builds its backend here unless ``backend`` is overridden; the
    registry (with ``mcp.call``) here unless ``registry`` is. If the engine cannot be built, what was
    built for it here (the registry's connections, the backend) is closed again.

    Raises:
        InvalidInputError: an override is not an engine argument (the accepted ones are listed), or an
            argument is out of range (named as passed).
    """
    _check_overrides(overrides)
    kwargs = {**engine_arguments(settings), **overrides}
    opened: list[Callable[[], object]] = []  # closers of what is built here, for a failed build
    engine: OrchestrationEngine | None = None
    try:
        if "registry" not in kwargs:
            durable = kwargs.get("durable", True)
            procs_dir = Path(kwargs["state_dir"]) / "procs" if durable else None
            kwargs["registry"] = build_registry(
                settings.model_copy(update={"allow_shell": kwargs["allow_code_execution"]}),
                procs_dir=procs_dir,
            )
            opened.append(kwargs["registry"].close)
        if "backend" not in kwargs and settings.executor != "local":
            kwargs["backend"] = _backend(settings)
            opened.append(kwargs["backend"].close)
        engine = OrchestrationEngine(**kwargs)
        engine.workflow_manager.secrets = SecretSource(settings.secrets_file)
        if settings.python_call_allow:
            # the CLI's runs too: the server pins its whole transport policy again (tools.apply_policy)
            pin_extras(engine.registry, {"python_call_allow": settings.python_call_allow})
    except BaseException:
        if engine is not None:
            engine.shutdown()  # it closes the registry and the backend too
        else:
            for close in reversed(opened):
                with contextlib.suppress(Exception):  # the build's own error is the one to report
                    close()
        raise
    return engine


def _backend(settings: Settings) -> ExecutionBackend:
    """The backend ``settings.executor`` names.

    Raises:
        InvalidInputError: it cannot start (no scheduler at ``dask_scheduler``, no Dask installed), named
            as the variable a user sets (``CODOMYRMEX_DASK_SCHEDULER``), as settings errors are.
    """
    try:
        return create_backend(
            settings.executor,
            dask_scheduler=settings.dask_scheduler,
            dask_n_workers=settings.dask_n_workers,
            dask_processes=settings.dask_processes,
            dask_worker_resources=settings.dask_worker_resources,
            dask_resource_map=settings.dask_resource_map,
            dask_worker_saturation=settings.dask_worker_saturation,
        )
    except InvalidInputError as exc:
        if exc.field not in Settings.model_fields:
            raise
        raise InvalidInputError(ENV_PREFIX + exc.field.upper(), exc.reason) from None


def _check_overrides(overrides: dict[str, Any]) -> None:
    accepted = list(inspect.signature(OrchestrationEngine).parameters)
    for name in overrides:
        if name in accepted:
            continue
        hint = (
            f"a Settings field, not an engine argument: give it as Settings({name}=...)"
            if name in Settings.model_fields
            else f"not an engine argument{did_you_mean(name, accepted)}"
        )
        raise InvalidInputError(name, f"{hint}; engine arguments: {', '.join(sorted(accepted))}")


# ---------------------------------------------------------------------- the process-wide engine

_lock = threading.Lock()
_engine: OrchestrationEngine | None = None
_configured: dict[str, Any] = {}


def _configuration(settings: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    return {**{name: getattr(settings, name) for name in ENGINE_SETTINGS}, **overrides}


def configure_engine(settings: Settings | None = None, **overrides: Any) -> OrchestrationEngine:
    """Create the process-wide engine from ``settings`` and ``overrides``.

    ``settings`` defaults to the ``CODOMYRMEX_*`` variables of this process's environment, read as the
    CLI and the server read them (``Settings.from_env(os.environ)``), so a library user shares their
    state directory. Configuring again with the same engine settings returns the live engine;
    ``configure_engine()`` with no arguments returns it whatever it was built from.

    Raises:
        InvalidInputError: an override is not an engine argument (checked first, engine live or not), or
            a ``CODOMYRMEX_*`` variable has a value its setting does not accept (named).
        InvalidStateError: an engine is live and was built from different settings (they are named):
            call :func:`reset_engine` first to rebuild it.
    """
    global _engine, _configured
    _check_overrides(overrides)  # a misspelt name is that, not a settings conflict with a live engine
    with _lock:
        if _engine is not None:
            if settings is None and not overrides:
                return _engine
            wanted = _configuration(settings or _from_environment(), overrides)
            differing = sorted(
                name
                for name in wanted.keys() | _configured.keys()
                if wanted.get(name) != _configured.get(name)
            )
            if differing:
                raise InvalidStateError(
                    "engine",
                    "process-wide",
                    f"already configured with other {', '.join(differing)}",
                    "call reset_engine() first to rebuild it with these settings",
                )
            return _engine
        settings = settings or _from_environment()
        _engine = build_engine(settings, **overrides)
        _configured = _configuration(settings, overrides)
        return _engine


def _from_environment() -> Settings:
    return Settings.from_env(os.environ)


def get_orchestration_engine() -> OrchestrationEngine:
    """The process-wide engine (created on first use from the ``CODOMYRMEX_*`` environment, as the CLI
    and the server are)."""
    engine = _engine
    return engine if engine is not None else configure_engine()


def get_workflow_manager() -> WorkflowManager:
    return get_orchestration_engine().workflow_manager


def get_task_orchestrator() -> TaskOrchestrator:
    return get_orchestration_engine().task_orchestrator


def get_resource_manager() -> ResourceManager:
    return get_orchestration_engine().resource_manager


def get_project_manager() -> ProjectManager:
    return get_orchestration_engine().project_manager


def reset_engine() -> None:
    """Shut the process-wide engine down and forget it (tests, reconfiguration)."""
    global _engine, _configured
    with _lock:
        engine, _engine, _configured = _engine, None, {}
    if engine is not None:
        engine.shutdown()
