"""The command line: argv -> Settings -> logging -> a subcommand.

Exit codes: 0 success; 1 a run failed or was cancelled, validation found problems, or the command could
not do what was asked; 2 usage (bad arguments, unknown workflow or run, an invalid workflow document,
bad configuration); 130 a run interrupted with Ctrl-C (and cancelled).

Each subcommand is one ``_add_<cmd>_parser(subparsers)`` function plus one ``_cmd_<cmd>(args, settings)``
function, registered in ``_PARSERS`` and ``_COMMANDS``.

Opening state without declaring other processes' runs dead: the engine marks every RUNNING run
INTERRUPTED when it starts (``store.recover()``, which spares runs whose CLI owner is alive), which is
right for the one process that owns a state directory (the server), wrong for a CLI command that shares
it with a live server or another ``run``.
So ``runs``, ``show`` and ``cancel`` open the SQLite store read-only; ``run``,
``resume``, ``status`` and ``health`` build an engine with ``recover=False``. A run started by the CLI
is owned by its process through a lock file (``core._run_owners``), which is how ``cancel`` reaches it
from another terminal and how ``resume`` refuses to take over a run that is still alive.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from codomyrmex_orchestration import __version__
from codomyrmex_orchestration._cli_paths import add_paths_parser, cmd_paths
from codomyrmex_orchestration._text import holds_lone_surrogate
from codomyrmex_orchestration.config import ENV_PREFIX, Settings
from codomyrmex_orchestration.errors import (
    DAGValidationError,
    InvalidInputError,
    NotFoundError,
    OrchestrationError,
    RunNotFoundError,
    StateStoreError,
)
from codomyrmex_orchestration.logs import configure_logging, import_structlog_plain

if TYPE_CHECKING:
    from rich.console import Console

    from codomyrmex_orchestration._cli_display import RunDisplay
    from codomyrmex_orchestration.core._run_owners import Claim, Owner
    from codomyrmex_orchestration.core._store_readonly import ReadOnlyStore
    from codomyrmex_orchestration.core.engine import OrchestrationEngine
    from codomyrmex_orchestration.core.models import RunRecord, StepResult
    from codomyrmex_orchestration.core.store import SqliteStore
    from codomyrmex_orchestration.core.workflows import StepCallback, WorkflowManager

__all__ = ["build_parser", "main"]

PROG = "codomyrmex-orchestration"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: ``run``/``resume``: the run waits for a person's answer (a ``core.approve`` step) and stays waiting
EXIT_WAITING = 3
EXIT_INTERRUPTED = 130
#: how long ``cancel`` waits for the owning process to stop the run
DEFAULT_CANCEL_WAIT = 30.0
#: ``run``/``resume``: the longest the main thread blocks at a time while it runs a run (see ``_Sigint``)
_SIGNAL_SLICE = 0.1


class _Failed(Exception):
    """The command could not do what was asked: its message is printed, exit code 1."""


# ---------------------------------------------------------------------- parsers


def _common(parser: argparse.ArgumentParser, *, quiet_logs: bool = True) -> None:
    """Options every subcommand takes. ``quiet_logs``: log warnings and up unless asked for more, so
    log lines do not break the output a person reads (``serve`` keeps info).
    """
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error", "critical"],
        help="log level on stderr (default warning for commands, CODOMYRMEX_LOG_LEVEL wins)",
    )
    parser.add_argument("--log-format", choices=["console", "json"])
    parser.add_argument("--state-dir", help="state directory (default DATA_DIR/.workflows; see `paths`)")
    parser.add_argument(
        "--config-dir", help="workflow JSON directory (default DATA_DIR/config/workflows/production)"
    )
    parser.add_argument("--projects-dir", help="projects root (default DATA_DIR/projects)")
    if quiet_logs:
        parser.set_defaults(default_log_level="warning")


def _executor_flags(parser: argparse.ArgumentParser) -> None:
    """Where ready steps run (also CODOMYRMEX_EXECUTOR / CODOMYRMEX_DASK_SCHEDULER)."""
    parser.add_argument(
        "--executor",
        choices=["local", "dask"],
        help="run steps on this process's threads (local, the default) or a Dask cluster (dask)",
    )
    parser.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="tcp://host:8786 of a running Dask scheduler (default with --executor dask: a LocalCluster)",
    )


def _add_run_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="run a workflow (a JSON file or a registered name) with live progress",
        description="Run a workflow through the engine; its record is kept in the state directory. "
        "Exit 0 only if the run completed; Ctrl-C cancels it (exit 130).",
    )
    _common(run)
    _executor_flags(run)
    run.add_argument("workflow", metavar="FILE|NAME", help="a workflow JSON file or a registered name")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a run parameter")
    run.add_argument("--json", action="store_true", help="print only the final run record, as JSON")
    run.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="cancel the run if it takes longer")


def _add_validate_parser(sub: Any) -> None:
    validate = sub.add_parser(
        "validate",
        help="validate workflow files; list every problem, exit 1 on any",
        description="Check workflow JSON files: schema, dependencies, cycles, actions, templates.",
    )
    _common(validate)
    validate.add_argument("files", nargs="+", metavar="FILE")


def _add_graph_parser(sub: Any) -> None:
    graph = sub.add_parser(
        "graph",
        help="print a workflow's DAG as Mermaid or Graphviz DOT",
        description="Print the step graph (inferred template edges included). "
        "DOT output renders with `dot -Tpng`.",
    )
    _common(graph)
    graph.add_argument("workflow", metavar="FILE|NAME")
    graph.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")


def _add_runs_parser(sub: Any) -> None:
    from codomyrmex_orchestration.core.models import WorkflowStatus

    runs = sub.add_parser("runs", help="list recorded runs, newest first")
    _common(runs)
    runs.add_argument("--status", choices=[s.value for s in WorkflowStatus])
    runs.add_argument("--workflow", metavar="NAME", help="only runs of this workflow")
    runs.add_argument("--limit", type=_positive_int, default=20, metavar="N", help="at most N runs (20)")
    runs.add_argument("--json", action="store_true", help="print the run records as a JSON list")


def _add_show_parser(sub: Any) -> None:
    show = sub.add_parser("show", help="show one run and its steps")
    _common(show)
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument("--json", action="store_true", help="print the run record as JSON")
    show.add_argument(
        "--open",
        action="store_true",
        help="print the run's URL in the run view of a server running on this state",
    )


def _add_resume_parser(sub: Any) -> None:
    resume = sub.add_parser(
        "resume",
        help="re-run the unfinished steps of a failed, cancelled or interrupted run",
        description="Completed steps keep their outputs; the others run again. Same display and exit "
        "codes as `run`.",
    )
    _common(resume)
    _executor_flags(resume)
    resume.add_argument("run_id", metavar="RUN_ID")
    resume.add_argument("--json", action="store_true", help="print only the final run record, as JSON")
    resume.add_argument("--timeout", type=_seconds, metavar="SECONDS")
    resume.add_argument(
        "--force",
        action="store_true",
        help="resume a run marked running that no CLI process owns (only if its process is gone)",
    )


def _add_cancel_parser(sub: Any) -> None:
    cancel = sub.add_parser(
        "cancel",
        help="cancel a run that a `run` or `resume` in another terminal is running",
        description="Asks the CLI process that owns the run to cancel it (as Ctrl-C there would) and "
        "waits for it to stop. Runs owned by a server process must be cancelled through the server.",
    )
    _common(cancel)
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--wait", type=_seconds, default=DEFAULT_CANCEL_WAIT, metavar="SECONDS", help="(30)")


def _add_status_parser(sub: Any) -> None:
    status = sub.add_parser("status", help="the engine's system status: workflows, runs, queue, resources")
    _common(status)
    status.add_argument("--json", action="store_true")


def _add_health_parser(sub: Any) -> None:
    health = sub.add_parser(
        "health", help="the engine's health checks and the serving process's verdict; exit 1 when unhealthy"
    )
    _common(health)
    health.add_argument("--json", action="store_true")


# --------------------------------------------------------------------------- serve


def _add_serve_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve the MCP tools over stdio (default), SSE or streamable HTTP",
        description="Serve the MCP server. Every flag also reads a CODOMYRMEX_* variable "
        "(e.g. --port <- CODOMYRMEX_PORT, --allowed-host <- CODOMYRMEX_ALLOWED_HOSTS); flags win.",
    )
    _common(serve, quiet_logs=False)
    _executor_flags(serve)
    serve.add_argument("--transport", choices=["stdio", "sse", "streamable-http"])
    serve.add_argument("--host", help="bind address (default 127.0.0.1; non-loopback needs a token)")
    serve.add_argument("--port", type=int, help="port (default 8765)")
    serve.add_argument(
        "--allow-shell",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="allow shell.run/python.call/mcp.call (default: allowed on stdio, refused on network ones)",
    )
    serve.add_argument(
        "--auth-token-file", help="file holding the bearer token (or set CODOMYRMEX_AUTH_TOKEN)"
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        dest="allowed_hosts",
        metavar="HOST",
        help="a Host/Origin name accepted besides loopback (repeatable)",
    )


def _serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("transport", "host", "port", "allow_shell", "auth_token_file")
    values: dict[str, Any] = {name: getattr(args, name, None) for name in names}
    if args.allowed_hosts:
        values["allowed_hosts"] = tuple(args.allowed_hosts)
    return values


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from codomyrmex_orchestration.server.app import serve

    try:
        return serve(settings)
    except OrchestrationError as exc:
        # Configuration refused before serving (e.g. a non-loopback bind without a token).
        print(f"error: {_by_flag(exc, args)}", file=sys.stderr)
        return EXIT_USAGE


_PARSERS: dict[str, Callable[[Any], None]] = {
    "run": _add_run_parser,
    "validate": _add_validate_parser,
    "graph": _add_graph_parser,
    "runs": _add_runs_parser,
    "show": _add_show_parser,
    "resume": _add_resume_parser,
    "cancel": _add_cancel_parser,
    "status": _add_status_parser,
    "health": _add_health_parser,
    "serve": _add_serve_parser,
    "paths": lambda sub: add_paths_parser(sub, _common),
}


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line like every other error (subcommands' parsers are of
    the class of their parent)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; with ``command``, only that subcommand's (what ``main`` parses with when the
    command line starts with one: building all eleven is ~0.005x of a cold server's start)."""
    parser = _Parser(
        prog=PROG,
        description="Run workflows as DAGs of real actions, and serve them to agents over MCP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, add in _PARSERS.items():
        if command is None or name == command:
            add(sub)
    return parser


def _seconds(raw: str) -> float | None:
    """A positive, finite number of seconds; ``None`` (no limit) beyond what a thread can wait
    (``threading.TIMEOUT_MAX``, about 292 years)."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a finite number of seconds (one above {threading.TIMEOUT_MAX:.3g}, about 292 "
            "years, means no limit)"
        )
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be above 0")
    return value if value <= threading.TIMEOUT_MAX else None


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} must be 1 or more")
    return value


# ---------------------------------------------------------------------- shared helpers


def _parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a value that parses as JSON is that JSON (``n=3`` is 3), else a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        pair = _decoded(pair)
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidInputError("--param", f"{pair!r}: expected KEY=VALUE")
        if holds_lone_surrogate(pair):  # bytes that are not UTF-8: the JSON parameters go to cannot hold them
            named = not holds_lone_surrogate(key)
            raise InvalidInputError(
                f"--param {key}" if named else "--param",
                f"the {'value' if named else 'argument'} {os.fsencode(raw if named else pair)!r} is not "
                "valid UTF-8; a parameter is text, a number or JSON",
            )
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _decoded(argument: str) -> str:
    """A command-line argument as UTF-8 text where its bytes are UTF-8: under a C locale Python decodes
    the bytes of ``Zoë`` to lone surrogates, which no JSON can hold. Otherwise it is returned as is."""
    if not holds_lone_surrogate(argument):
        return argument
    try:
        return os.fsencode(argument).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return argument


#: The flag of a setting whose flag is not ``--`` and its name with dashes.
_FLAG_OF = {"allowed_hosts": "--allowed-host"}


def _flagged(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line can give, by name (None: its flag was not given)."""
    return {
        "log_level": getattr(args, "log_level", None),
        "log_format": getattr(args, "log_format", None),
        "state_dir": getattr(args, "state_dir", None),
        "config_dir": getattr(args, "config_dir", None),
        "projects_dir": getattr(args, "projects_dir", None),
        "executor": getattr(args, "executor", None),
        "dask_scheduler": getattr(args, "dask_scheduler", None),
        **(_serve_overrides(args) if args.command == "serve" else {}),
    }


def _given_flags(args: argparse.Namespace) -> dict[str, str]:
    """The flag that gave each setting given on the command line (``{"port": "--port"}``)."""
    return {
        name: _FLAG_OF.get(name, "--" + name.replace("_", "-"))
        for name, value in _flagged(args).items()
        if value is not None
    }


def _by_flag(exc: OrchestrationError, args: argparse.Namespace) -> str:
    """The error's message, naming the flag besides the variable a setting's check names when the flag
    gave the value (a user who typed --auth-token-file never set CODOMYRMEX_AUTH_TOKEN_FILE)."""
    if isinstance(exc, InvalidInputError):
        for name, flag in _given_flags(args).items():
            variable = ENV_PREFIX + name.upper()
            if exc.field == variable or exc.field.startswith(variable + " "):
                return str(InvalidInputError(f"{flag} ({exc.field})", exc.reason))
    return str(exc)


def _settings(args: argparse.Namespace) -> Settings:
    flagged = _flagged(args)
    # A value's error names the flag that gave it (a user who typed --port 99999 never set CODOMYRMEX_PORT).
    flags = _given_flags(args)
    log_level = flagged.pop("log_level")
    if log_level is None and not os.environ.get("CODOMYRMEX_LOG_LEVEL"):  # empty is unset
        log_level = getattr(args, "default_log_level", None)  # the command's default: no flag gave it
    return Settings.from_env(os.environ, flags=flags, log_level=log_level, **flagged)


def _load_document(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(str(path), f"cannot read the file ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(str(path), f"not valid JSON ({exc})") from None
    except RecursionError:
        from codomyrmex_orchestration.core.models import MAX_PARAMETER_NESTING as most

        raise InvalidInputError(
            str(path), f"nested deeper than {most} levels of objects and lists (the most a workflow may use)"
        ) from None


def _workflow_object(path: Path) -> dict[str, Any]:
    document = _load_document(path)
    if not isinstance(document, dict):
        raise InvalidInputError(str(path), "expected one JSON object with 'name' and 'steps'")
    return document


def _is_file_argument(value: str) -> bool:
    return value.endswith(".json") or Path(value).is_file()


@contextlib.contextmanager
def _definitions(settings: Settings, *, registered: bool) -> Iterator[WorkflowManager]:
    """A WorkflowManager for finding and validating definitions, without running anything.

    With ``registered`` it knows the samples, the config directory's workflows and the store's (opened
    for reading, never recovered); without, none: it only validates. Nothing is created on disk either way.
    """
    from codomyrmex_orchestration.compose import build_registry
    from codomyrmex_orchestration.core.engine import build_resource_manager
    from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
    from codomyrmex_orchestration.core.store import MemoryStore
    from codomyrmex_orchestration.core.workflows import WorkflowManager
    from codomyrmex_orchestration.samples import SAMPLES_DIR

    registry = build_registry(settings)
    # The capacities a run's engine has (resources.json included): steps' resources are checked as run would.
    resources = build_resource_manager(
        state_dir=settings.state_dir,
        config_dir=settings.config_dir,
        max_workers=settings.max_workers,
        durable=settings.durable,
    )
    orchestrator = TaskOrchestrator(1, registry=registry, resource_manager=resources)
    try:
        with _definitions_store(settings) if registered else contextlib.nullcontext() as stored:
            # Definitions' default parameters are held to the store's limit, as runs' parameters are.
            store = stored or MemoryStore(max_parameters_bytes=settings.max_parameters_bytes)
            yield WorkflowManager(
                orchestrator=orchestrator,
                registry=registry,
                store=store,
                config_dir=settings.config_dir if registered else None,
                sample_dir=SAMPLES_DIR if registered and settings.load_samples else None,
                max_steps=settings.max_steps,
                max_map_items=settings.max_map_items,
            )
    finally:
        orchestrator.shutdown(wait=True)
        resources.shutdown()
        registry.close()


@contextlib.contextmanager
def _definitions_store(settings: Settings) -> Iterator[SqliteStore | None]:
    """The state store, for the workflows it keeps, or None when nothing was ever recorded there.

    Never calls ``recover()``: a RUNNING run may belong to a live process.
    """
    from codomyrmex_orchestration.core._store_readonly import recorded
    from codomyrmex_orchestration.core.store import SqliteStore

    if not recorded(settings.state_db):
        yield None
        return
    # Opening applies retention: with the limits the server keeps, not the defaults (a directory kept
    # under a larger run limit or byte budget lost every run past the defaults to a `graph NAME`).
    store = SqliteStore(
        settings.state_db,
        retention_runs=settings.retention_runs,
        retention_events=settings.retention_events,
        max_bytes=settings.state_max_bytes,
        max_parameters_bytes=settings.max_parameters_bytes,
    )
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def _read_store(settings: Settings) -> Iterator[ReadOnlyStore | None]:
    """The state store opened read-only (on a read-only mount too), or None when nothing was ever
    recorded there; a state directory or file of another kind, or unreadable, is a StateStoreError."""
    from codomyrmex_orchestration.core._store_readonly import ReadOnlyStore, recorded

    if not recorded(settings.state_db):
        yield None
        return
    with ReadOnlyStore(settings.state_db) as store:
        yield store


def _open_engine(settings: Settings) -> OrchestrationEngine:
    from codomyrmex_orchestration.compose import build_engine

    return build_engine(settings, recover=False)


def _stdout_console() -> Console:
    from rich.console import Console

    return Console(file=sys.stdout, highlight=False)


def _dump(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _run_owner(settings: Settings, record: RunRecord) -> tuple[str, Owner]:
    """(the run whose owner lock says who runs ``record``'s, that owner): its own lock, or for a sub-run
    without one (it runs in the process of its top-level run) its top-level run's."""
    from codomyrmex_orchestration.core._run_owners import owner_of

    run_id, parent, seen = record.run_id, record.parent_run_id, {record.run_id}
    owner = owner_of(settings.state_dir, run_id)
    while not owner.exists and parent is not None and parent not in seen:
        seen.add(parent)
        run_id = parent
        owner = owner_of(settings.state_dir, run_id)
        try:
            parent = _get_run(settings, run_id).parent_run_id
        except RunNotFoundError:  # trimmed by retention: the lock of the last run found decides
            break
    return run_id, owner


def _owner_label(settings: Settings, record: RunRecord) -> str:
    """``running`` plus who runs it, for a run the store says is running."""
    from codomyrmex_orchestration.core.models import WorkflowStatus

    status = record.status.value
    if record.status.is_terminal:
        return status
    _, owner = _run_owner(settings, record)
    if owner.alive:
        return f"{status} (pid {owner.pid})"
    if owner.exists:
        return f"{status} (its CLI process is gone)"
    if record.status is WorkflowStatus.WAITING_FOR_INPUT:  # a server continues it, or will as it starts
        return f"{status} (answered over MCP: respond_to_run)"
    return f"{status} (another process)"


# ---------------------------------------------------------------------- run and resume


def _make_display(args: argparse.Namespace, steps: Mapping[str, StepResult]) -> RunDisplay:
    from codomyrmex_orchestration._cli_display import LiveDisplay, PlainDisplay, SilentDisplay

    if args.json:
        return SilentDisplay(steps, sys.stderr)
    console = _stdout_console()
    if console.is_terminal:
        return LiveDisplay(steps, console)
    return PlainDisplay(steps, sys.stdout, sys.stderr)


def _execute(
    engine: OrchestrationEngine,
    settings: Settings,
    args: argparse.Namespace,
    steps: Mapping[str, StepResult],
    start: Callable[[StepCallback], RunRecord],
    sigint: _Sigint,
) -> int:
    """Start a run (``start`` must not wait), show it until it ends, report, and choose the exit code.

    The caller holds the run's owner lock throughout (a durable state directory), from before ``start``
    records the run, and ``sigint`` installed until its engine has shut down.
    """
    from codomyrmex_orchestration.core.models import WorkflowStatus

    display = _make_display(args, steps)
    # Armed before the run starts: a Ctrl-C while it starts cancels it once it has an id.
    sigint.arm(display)
    record = start(display.on_step)
    run_id = record.run_id
    display.start(run_id, record.workflow_name)
    sigint.started(run_id)
    timed_out = waiting = False
    try:
        final = _wait_settled(engine, run_id, args.timeout, sigint.poll)
        waiting = final.status is WorkflowStatus.WAITING_FOR_INPUT
        if waiting and not settings.durable:
            display.note(f"run {run_id} waits for an answer; its state is in memory: cancelling it")
            final = _cancel_here(engine, run_id, sigint.poll)
        elif not waiting and not final.status.is_terminal:
            timed_out = True
            display.note(f"run {run_id} did not finish within {args.timeout:g}s: cancelling it")
            final = _cancel_here(engine, run_id, sigint.poll)
    finally:
        display.stop()
    interrupted = sigint.interrupted
    if args.json:
        _dump(final.model_dump(mode="json"))
    elif final.status is WorkflowStatus.WAITING_FOR_INPUT:
        _report_waiting(final)
    else:
        _report(final, interrupted=interrupted, timed_out=timed_out, resumable=settings.durable)
        if waiting:  # in memory: nobody could have answered it after this process
            print("  it waited for an answer (a core.approve step): run it with a durable state directory")
    if interrupted:
        return EXIT_INTERRUPTED
    if final.status is WorkflowStatus.WAITING_FOR_INPUT:
        return EXIT_WAITING
    return EXIT_OK if final.succeeded else EXIT_FAILED


def _wait_settled(
    engine: OrchestrationEngine, run_id: str, timeout: float | None, poll: Callable[[], None]
) -> RunRecord:
    """The run's record once it ended, or waits on a question nobody here can answer (a core.approve
    step) with every step that can go on without the answer done (so what is printed is what is stored,
    and stays so), or as it stands after ``timeout`` seconds. Waits in slices (:func:`_in_slices`)."""
    from codomyrmex_orchestration.core.models import WorkflowStatus

    manager = engine.workflow_manager
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        _until_stopped(manager, run_id, end, poll)
        record = manager.get_run(run_id)
        if record.status is not WorkflowStatus.WAITING_FOR_INPUT:
            return record
        busy = _until_quiet(manager, run_id, end, poll)
        record = manager.get_run(run_id)
        if (
            busy
            or record.status is not WorkflowStatus.RUNNING
            or (end is not None and time.monotonic() >= end)
        ):
            return record  # quiet and still waiting, ended, or out of time


def _until_stopped(
    manager: WorkflowManager, run_id: str, end: float | None, poll: Callable[[], None]
) -> None:
    """What ``inputs.wait`` waits for (the run ended, or waits on a question nobody is asked), in slices
    (one watcher for the whole wait, where a slice of inputs.wait would add one each)."""
    stopped = threading.Event()
    manager.inputs.on_stop(run_id, lambda _record: stopped.set())
    _in_slices(stopped.wait, end, poll)


def _until_quiet(
    manager: WorkflowManager, run_id: str, end: float | None, poll: Callable[[], None]
) -> list[str]:
    """``wait_quiet`` in slices: the steps still busy at ``end`` (empty: quiet)."""
    busy: list[str] = []

    def quiet(seconds: float) -> bool:
        busy[:] = manager.wait_quiet(run_id, seconds)
        return not busy

    _in_slices(quiet, end, poll)
    return busy


def _report_waiting(record: RunRecord) -> None:
    """A run left waiting for a person: each question, and how it gets answered."""
    print(f"run {record.run_id} of {record.workflow_name} is waiting for input; it stays waiting:")
    for question in record.pending_inputs:
        schema = question.requested_schema or {}
        fields = ", ".join(
            f"{name} ({prop.get('type', 'any')}{', required' if name in schema.get('required', []) else ''})"
            for name, prop in schema.get("properties", {}).items()
        )
        deadline = f"; unanswered, it fails at {question.deadline.isoformat()}" if question.deadline else ""
        sub = f" of sub-run {question.run_id}" if question.run_id not in (None, record.run_id) else ""
        print(f"  step {question.step!r}{sub} asks: {question.message}")
        print(f"    answer: accept{f' with {fields}' if fields else ''}, or decline{deadline}")
    print(
        f"answer it over MCP: `{PROG} serve` on this state directory continues waiting runs as it starts, "
        "asks a client that supports elicitation, and takes respond_to_run (or cancel_workflow_run); "
        f"`{PROG} show {record.run_id}` shows it meanwhile"
    )


def _in_slices(wait: Callable[[float], bool], end: float | None, poll: Callable[[], None]) -> bool:
    """``wait(seconds)`` (true once what it waits for has happened) a slice at a time, until it is true
    or the monotonic time ``end`` has come (None: no end); ``poll()`` before each slice, so the main
    thread acts on a Ctrl-C within a slice, whichever thread the kernel gave it to (see ``_Sigint``)."""
    while True:
        poll()
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            return wait(0)
        if wait(_SIGNAL_SLICE if left is None else min(left, _SIGNAL_SLICE)):
            return True


def _request_cancel(engine: OrchestrationEngine, run_id: str) -> bool:
    """Cancel the run without waiting for it to settle; False if it had ended on its own meanwhile."""
    try:
        engine.workflow_manager.request_cancel(run_id)
    except OrchestrationError:
        return False
    return True


def _cancel_here(engine: OrchestrationEngine, run_id: str, poll: Callable[[], None]) -> RunRecord:
    """Cancel the run and wait (in slices, as ``cancel_run`` would, up to ``CANCEL_WAIT``) for it to
    settle; its record then."""
    from codomyrmex_orchestration.core.workflows import CANCEL_WAIT

    manager = engine.workflow_manager
    if _request_cancel(engine, run_id):
        settled = threading.Event()
        manager.on_settled(run_id, lambda _record: settled.set())
        _in_slices(settled.wait, time.monotonic() + CANCEL_WAIT, poll)
    return manager.get_run(run_id)


class _Sigint:
    """Ctrl-C (SIGINT) during ``run``/``resume``: the first cancels the run cleanly (the wait then
    returns the CANCELLED record), the second quits at once (KeyboardInterrupt; the engine's shutdown
    records the run as it stands).

    Once armed, the handler only counts, and the main thread acts on the count between its waits
    (:meth:`poll`), never blocking longer than ``_SIGNAL_SLICE`` at a time. CPython runs a handler on the
    main thread only, between any two of its steps, once that thread runs: the kernel gives a process's
    SIGINT to any thread that does not block it (one forking a shell.run command, or after SIGCONT
    whichever runs first), and the main thread, blocked until the run ended, left it unanswered; a
    handler that acted itself ran inside the engine's code, and its second Ctrl-C's KeyboardInterrupt
    cut short a cancel under way (the run's end was then never stored). It stays installed until the
    engine has shut down: a Ctrl-C after the run (or a quit) is counted, and never cuts the shutdown
    that stores the run short. Before :meth:`arm` it raises KeyboardInterrupt, as Python's own does.
    """

    def __init__(self, engine: OrchestrationEngine) -> None:
        self._engine = engine
        self._display: RunDisplay | None = None
        self._run_id: str | None = None
        self._count = 0  # Ctrl-Cs since arm(); the handler's only state
        self._acted = 0  # the Ctrl-Cs poll() acted on: 1 cancelled the run, 2 quit

    @property
    def interrupted(self) -> bool:
        """A Ctrl-C came while a run was shown."""
        return self._count > 0

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._display is None:
            raise KeyboardInterrupt
        self._count += 1

    def arm(self, display: RunDisplay) -> None:
        """A run is about to start, shown by ``display``: count Ctrl-Cs from now on."""
        self._display = display

    def started(self, run_id: str) -> None:
        self._run_id = run_id

    def poll(self) -> None:
        """Act on the Ctrl-Cs counted so far (on the main thread, between waits, holding no lock of the
        engine's): cancel the run at the first, quit at the second (raises KeyboardInterrupt)."""
        if self._run_id is None or self._display is None:
            return  # not started yet: the first poll after started() acts
        if self._count and not self._acted:
            self._acted = 1
            self._display.note(f"interrupted: cancelling run {self._run_id} (Ctrl-C again to quit at once)")
            _request_cancel(self._engine, self._run_id)
        if self._count > 1 and self._acted == 1:
            self._acted = 2
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _report(record: RunRecord, *, interrupted: bool, timed_out: bool, resumable: bool) -> None:
    """The run's outcome; ``resumable``: its state outlives this process (a durable state directory),
    so the hint to resume it is true."""
    from codomyrmex_orchestration.core.models import TaskStatus, WorkflowStatus

    took = f" in {record.duration_seconds:.2f}s" if record.duration_seconds is not None else ""
    head = f"run {record.run_id} of {record.workflow_name} {record.status.value}{took}"
    resume_hint = f"resume it with: {PROG} resume {record.run_id}" if resumable else None
    if record.status is WorkflowStatus.COMPLETED:
        print(head)
        last = [s for s in record.steps.values() if s.status is TaskStatus.COMPLETED and s.output is not None]
        if last:
            text = json.dumps(last[-1].output, indent=2, default=str)
            if len(text) > 4000:
                text = text[:4000] + f"\n... ({len(text)} characters; see `{PROG} show --json`)"
            print(f"output of {last[-1].name}:")
            print(text)
        return
    if record.status is WorkflowStatus.CANCELLED:
        why = "interrupted" if interrupted else "timed out" if timed_out else "cancelled"
        done = [s.name for s in record.steps.values() if s.status is TaskStatus.COMPLETED]
        stopped = [
            s.name for s in record.steps.values() if s.status is TaskStatus.CANCELLED and s.attempts > 0
        ]
        not_run = [
            s.name
            for s in record.steps.values()
            if (s.status is TaskStatus.CANCELLED and s.attempts == 0) or not s.status.is_terminal
        ]
        print(f"{head} ({why})")
        print(f"  completed: {', '.join(done) or '(none)'}")
        print(f"  cancelled while running: {', '.join(stopped) or '(none)'}")
        print(f"  not run: {', '.join(not_run) or '(none)'}")
        if resume_hint:
            print(resume_hint)
        return
    print(f"{head}: {record.error or 'see the steps above'}")
    if resume_hint:
        print(resume_hint)


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    params = _parse_params(args.param)
    document = _workflow_object(Path(args.workflow)) if _is_file_argument(args.workflow) else None
    engine = _open_engine(settings)
    sigint = _Sigint(engine)
    with sigint.installed():  # until the engine has shut down (see _Sigint)
        try:
            manager = engine.workflow_manager
            if document is not None:
                name = manager.create_workflow(document, overwrite=True, source="file").name
            else:
                name = args.workflow
            return _run_workflow(engine, settings, args, name, params, sigint)
        finally:
            engine.shutdown()


def _run_workflow(
    engine: OrchestrationEngine,
    settings: Settings,
    args: argparse.Namespace,
    name: str,
    params: dict[str, Any],
    sigint: _Sigint,
) -> int:
    """Run ``name`` to its end (see :func:`_execute`), holding the new run's owner lock from before its
    first record is saved: a server (or any engine recovering the state directory) that opens it at any
    moment of the run finds a live owner, never a RUNNING run that nobody holds."""
    from codomyrmex_orchestration.core._run_owners import RunOwnership
    from codomyrmex_orchestration.core.models import StepResult

    manager = engine.workflow_manager
    steps = {s.name: StepResult(name=s.name) for s in manager.get_workflow(name).steps}
    with contextlib.ExitStack() as owned:

        def claim(run_id: str) -> None:
            owned.enter_context(RunOwnership(settings.state_dir, run_id))

        def start(on_step: StepCallback) -> RunRecord:
            run_id = manager.start_workflow(
                name, params, on_step=on_step, before_record=claim if settings.durable else None
            )
            return manager.get_run(run_id)

        return _execute(engine, settings, args, steps, start, sigint)


def _cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    from codomyrmex_orchestration.core.models import StepResult, TaskStatus

    # The owner locks first, then the engine and the record: of two resumes of one run (or of a sub-run
    # and of its top-level run, which takes it over in place), the one that takes the lock resumes and
    # the other is refused before it starts anything (not even an engine), whatever the records say yet.
    with _claim(settings, args.run_id) as claim:
        engine = _open_engine(settings)
        sigint = _Sigint(engine)
        with sigint.installed():  # until the engine has shut down (see _Sigint)
            try:
                manager = engine.workflow_manager
                previous = manager.get_run(args.run_id)
                if not args.force:
                    _refuse_unowned(settings, manager, previous, claim)
                steps = {
                    n: s if s.status is TaskStatus.COMPLETED else StepResult(name=n)
                    for n, s in previous.steps.items()
                }

                def start(on_step: StepCallback) -> RunRecord:
                    record = engine.resume_run(args.run_id, wait=False, on_step=on_step)
                    if claim is not None:
                        claim.run.started()
                    return record

                return _execute(engine, settings, args, steps, start, sigint)
            finally:
                engine.shutdown()


@dataclass
class _Claimed:
    """What ``resume`` holds: the run's own lock and, for a sub-run, its top-level run's (``top``)."""

    run: Claim
    top: str
    top_claim: Claim | None

    @property
    def stale(self) -> bool:
        """A CLI process that is gone left the run (or its top-level run) running."""
        return self.run.stale or (self.top_claim is not None and self.top_claim.stale)


@contextlib.contextmanager
def _claim(settings: Settings, run_id: str) -> Iterator[_Claimed | None]:
    """Hold ``run_id``'s owner lock (``core._run_owners.Claim``) or refuse: a live process holds it. A
    sub-run's top-level run's lock is taken first and held too: resuming that run takes the sub-run over
    in place, so while one process resumes either, the other's resume is refused.

    Until ``started()``, letting go leaves a dead owner's lock file as it was found, so a run that is
    not resumed after all still reads as one whose CLI process is gone (the top-level run's always is).
    ``None`` without a state dir.
    """
    from codomyrmex_orchestration.core._run_owners import OwnedElsewhere, with_top

    if not settings.durable:
        yield None
        return
    top = _top_run(settings, run_id)
    with contextlib.ExitStack() as held:
        try:
            claim, top_claim = held.enter_context(with_top(settings.state_dir, run_id, top))
        except OwnedElsewhere as exc:
            if exc.run_id != run_id:
                raise _Failed(
                    f"run {run_id} is a sub-run of run {top}, which process {_pid(exc.pid)} is running; "
                    f"cancel that run first: {PROG} cancel {top}"
                ) from None
            raise _Failed(
                f"run {run_id} is running in process {_pid(exc.pid)} (it, or one of its sub-runs); "
                f"cancel it first: {PROG} cancel {run_id}"
            ) from None
        yield _Claimed(claim, top, top_claim)


def _pid(pid: int | None) -> str:
    return str(pid) if pid is not None else "(unknown)"


def _top_run(settings: Settings, run_id: str) -> str:
    """The top-level run of ``run_id`` (itself when it is one, or not recorded; see ``top_run_id``)."""
    from codomyrmex_orchestration.core._run_owners import top_run_id

    with _read_store(settings) as store:
        record = store.get_run(run_id) if store is not None else None
        return top_run_id(record, store.get_run) if store is not None and record is not None else run_id


def _refuse_unowned(
    settings: Settings, manager: WorkflowManager, record: RunRecord, claim: _Claimed | None
) -> None:
    """Refuse to resume a run that another kind of process (an MCP server) may be running: the run
    itself, its top-level run (which takes it over in place) or one of its sub-runs (which it would take
    over), marked running or waiting without a CLI process, gone since, having left it so."""
    from codomyrmex_orchestration.core._run_owners import owner_of
    from codomyrmex_orchestration.core._serving_lock import serving_pid

    if claim is not None and claim.stale:
        return
    subject = None
    if not record.status.is_terminal:
        subject = f"run {record.run_id} is marked {record.status.value}"
    elif claim is not None and claim.top != record.run_id:
        top = manager.get_run(claim.top)
        if not top.status.is_terminal:
            subject = (
                f"run {record.run_id} is a sub-run of run {top.run_id}, which is marked {top.status.value}"
            )
    if subject is None:
        for sub in _sub_runs(manager, record.run_id):
            if not sub.status.is_terminal and not owner_of(settings.state_dir, sub.run_id).exists:
                subject = f"run {record.run_id} has a sub-run, {sub.run_id}, marked {sub.status.value},"
                break
    if subject is None:
        return
    server = serving_pid(settings.state_dir)
    who = "an MCP server" if server is None else f"an MCP server, process {server}"
    raise _Failed(
        f"{subject} and no CLI process owns it: another process ({who}) may be running it. "
        "If that process is gone, pass --force to resume it here"
    )


def _sub_runs(manager: WorkflowManager, run_id: str) -> Iterator[RunRecord]:
    """Every run under ``run_id``, any depth."""
    queue, seen = [run_id], {run_id}
    while queue:
        for sub in manager.store.sub_runs(queue.pop()):
            if sub.run_id not in seen:
                seen.add(sub.run_id)
                queue.append(sub.run_id)
                yield sub


# ---------------------------------------------------------------------- validate and graph


def _problems(manager: WorkflowManager, document: Any) -> tuple[str | None, list[str]]:
    """(workflow name if known, every problem) for one workflow object, as the manager sees them."""
    if not isinstance(document, dict):
        return None, ["expected a JSON object with 'name' and 'steps'"]
    name = document.get("name") if isinstance(document.get("name"), str) else None
    try:
        manager.validate_workflow(document)
    except DAGValidationError as exc:
        return name, list(exc.problems)
    except InvalidInputError as exc:
        return name, [str(exc)]
    return name, []


def _cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    bad_files = 0
    from codomyrmex_orchestration.core._secrets import SecretSource

    with _definitions(settings, registered=False) as manager:
        manager.secrets = SecretSource(
            settings.secrets_file
        )  # names the secrets set nowhere, as serve sees them
        for file in args.files:
            try:
                document = _load_document(Path(file))
            except InvalidInputError as exc:
                bad_files += 1
                print(f"{file}: {exc.reason}")
                continue
            file_bad = False
            for item in document if isinstance(document, list) else [document]:
                name, problems = _problems(manager, item)
                label = f"{file}: {name}" if name else file
                for problem in problems:
                    print(f"{label}: {problem}")
                if problems:
                    file_bad = True
                else:
                    checked = manager.validate_workflow(item)
                    levels = len(checked.execution_levels)
                    missing = ", ".join(checked.missing_secrets)
                    unset = f"; secrets set nowhere: {missing}" if missing else ""
                    print(f"{label}: ok ({checked.steps_count} steps, {levels} levels{unset})")
            bad_files += file_bad
    if bad_files:
        print(f"{bad_files} of {len(args.files)} files have problems", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _cmd_graph(args: argparse.Namespace, settings: Settings) -> int:
    from codomyrmex_orchestration.core.dag import WorkflowDAG

    from_file = _is_file_argument(args.workflow)
    document = _workflow_object(Path(args.workflow)) if from_file else None
    with _definitions(settings, registered=not from_file) as manager:
        if document is not None:
            try:
                workflow = manager.create_workflow(document, overwrite=True, source="file")
            except InvalidInputError as exc:
                raise InvalidInputError(
                    args.workflow, f"not a valid workflow ({exc}); run `{PROG} validate` for every problem"
                ) from None
        else:
            workflow = manager.get_workflow(args.workflow)
        dag = WorkflowDAG.from_spec(workflow, manager.registry)
    print((dag.to_mermaid() if args.format == "mermaid" else dag.to_dot()).rstrip("\n"))
    return EXIT_OK


# ---------------------------------------------------------------------- runs, show, cancel


def _cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    from codomyrmex_orchestration._cli_display import print_table
    from codomyrmex_orchestration.core.models import WorkflowStatus

    status = WorkflowStatus(args.status) if args.status else None
    with _read_store(settings) as store:
        # The table shows each run's own row and its steps counted by status: no step row is decoded,
        # whatever its maps' size (--json prints whole records).
        records = (
            store.list_runs(workflow_name=args.workflow, status=status, limit=args.limit, steps=args.json)
            if store is not None
            else []
        )
        if args.json:
            _dump([r.model_dump(mode="json") for r in records])
            return EXIT_OK
        if not records:
            recorded = sum(store.count_runs().values()) if store is not None else 0
            if recorded and (status is not None or args.workflow is not None):
                print(f"no runs match these filters ({recorded} runs recorded in {settings.state_dir})")
            else:
                print(f"no runs recorded in {settings.state_dir}")
            return EXIT_OK
        rows = []
        # Done as the live display counts it: finished whatever the outcome (`show` says which).
        tallies = store.step_tallies([r.run_id for r in records]) if store is not None else {}
        for r in records:
            finished, total = tallies.get(r.run_id, (0, 0))
            rows.append(
                [
                    r.run_id,
                    r.workflow_name,
                    _owner_label(settings, r),
                    f"{finished}/{total}",
                    r.created_at.astimezone().isoformat(sep=" ", timespec="seconds"),  # local, offset named
                    f"{r.duration_seconds:.2f}s" if r.duration_seconds is not None else "-",
                ]
            )
        print_table(
            _stdout_console(),
            ["RUN ID", "WORKFLOW", "STATUS", "DONE", "CREATED", "DURATION"],
            rows,
            styles={2: _STATUS_STYLES},
        )
    return EXIT_OK


_STATUS_STYLES = {
    "completed": "green",
    "failed": "bold red",
    "cancelled": "magenta",
    "interrupted": "yellow",
    "timed_out": "bold red",
    "skipped": "cyan",
    "running": "yellow",
}


def _get_run(settings: Settings, run_id: str) -> RunRecord:
    with _read_store(settings) as store:
        record = store.get_run(run_id) if store is not None else None
    if record is None:
        raise RunNotFoundError(run_id)
    return record


def _cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from codomyrmex_orchestration._cli_display import print_table, step_detail

    record = _get_run(settings, args.run_id)
    if args.open:
        from codomyrmex_orchestration.server._ui import served_ui

        ui = served_ui(settings.state_dir)
        if ui is None:
            _error(
                f"no server with a run view is running on {settings.state_dir}: start one with "
                "`codomyrmex-orchestration serve --transport streamable-http` (or make run)"
            )
            return EXIT_FAILED
        print(f"{ui}#/runs/{record.run_id}")
        return EXIT_OK
    if args.json:
        _dump(record.model_dump(mode="json"))
        return EXIT_OK
    print(f"run       {record.run_id}")
    print(f"workflow  {record.workflow_name}")
    print(f"status    {_owner_label(settings, record)}")
    print(f"created   {record.created_at.astimezone().isoformat(timespec='seconds')}")
    if record.duration_seconds is not None:
        print(f"duration  {record.duration_seconds:.2f}s")
    if record.parameters:
        print(f"params    {json.dumps(record.parameters, default=str)}")
    if record.error:
        print(f"error     {record.error}")
    rows = [
        [
            s.name,
            s.status.value,
            str(s.attempts),
            f"{s.duration_seconds:.2f}s" if s.duration_seconds is not None else "-",
            step_detail(s, 80),
        ]
        for s in record.steps.values()
    ]
    print_table(
        _stdout_console(),
        ["STEP", "STATUS", "ATTEMPTS", "DURATION", "DETAIL"],
        rows,
        styles={1: _STATUS_STYLES},
    )
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from codomyrmex_orchestration.core._run_owners import wait_released
    from codomyrmex_orchestration.core.models import WorkflowStatus

    record = _get_run(settings, args.run_id)
    if record.status.is_terminal:
        raise _Failed(f"run {args.run_id} already ended ({record.status.value}); nothing to cancel")
    top, owner = _run_owner(settings, record)
    if top != args.run_id and owner.exists:
        if owner.alive:  # SIGINT would cancel the whole top-level run: say so rather than do it
            raise _Failed(
                f"run {args.run_id} is a sub-run of run {top}, which process {owner.pid} is running; "
                f"cancelling that run cancels it: {PROG} cancel {top}"
            )
        raise _Failed(
            f"run {args.run_id} is a sub-run of run {top}, started by a CLI process that is gone; it is not "
            f"running. Resuming that run resumes it: {PROG} resume {top}"
        )
    if record.status is WorkflowStatus.WAITING_FOR_INPUT and not owner.alive:
        return _cancel_waiting(settings, args.run_id)  # left waiting by a `run` that exited 3
    if not owner.alive:
        if owner.exists:
            raise _Failed(
                f"run {args.run_id} was started by a CLI process that is gone; it is not running. "
                f"Resume it with: {PROG} resume {args.run_id}"
            )
        raise _Failed(
            f"run {args.run_id} is running in another process (not a CLI `run`, e.g. the MCP server); "
            "cancel it there (the server's cancel tool)"
        )
    if owner.pid is None:
        raise _Failed(f"run {args.run_id} is owned by a live CLI process whose pid is unreadable")
    os.kill(owner.pid, signal.SIGINT)
    print(f"asked process {owner.pid} to cancel run {args.run_id}")
    if not wait_released(settings.state_dir, args.run_id, args.wait):
        raise _Failed(f"process {owner.pid} still runs {args.run_id} after {args.wait:g}s")
    final = _get_run(settings, args.run_id)
    print(f"run {args.run_id}: {final.status.value}")
    return EXIT_OK if final.status.value == "cancelled" else EXIT_FAILED


def _cancel_waiting(settings: Settings, run_id: str) -> int:
    """Cancel a run that waits for an answer and that no process runs (a `run` left it, exiting 3), as
    ``cancel_workflow_run`` would: here, holding the state directory's server lock, unless a server holds
    it (that server continues such runs: cancel it there)."""
    from codomyrmex_orchestration.compose import build_engine
    from codomyrmex_orchestration.core._serving_lock import ServingLock
    from codomyrmex_orchestration.core.models import WorkflowStatus
    from codomyrmex_orchestration.errors import StateStoreError

    serving = ServingLock(settings.state_dir)
    try:
        serving.__enter__()
    except StateStoreError:
        raise _Failed(
            f"run {run_id} waits for an answer in the server of this state directory; cancel it there "
            "(the server's cancel_workflow_run tool)"
        ) from None
    try:
        with _claim(settings, run_id):
            engine = build_engine(settings, recover=True)  # recovery continues the waiting runs
            try:
                final = engine.workflow_manager.cancel_run(run_id)
            finally:
                engine.shutdown()
    finally:
        serving.__exit__()
    print(f"run {run_id}: {final.status.value}")
    return EXIT_OK if final.status is WorkflowStatus.CANCELLED else EXIT_FAILED


# ---------------------------------------------------------------------- status and health


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() or abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def _serving_verdict(settings: Settings) -> dict[str, Any] | None:
    """The health verdict the server serving ``settings.state_dir`` published in its ``server.json``
    (``status`` ``starting`` until it has one), or ``None`` when no server serves the directory."""
    from codomyrmex_orchestration.core._serving_lock import serving_pid
    from codomyrmex_orchestration.server._server_record import read_record

    pid = serving_pid(settings.state_dir)
    if pid is None:
        return None
    record = read_record(settings.state_dir)
    health = record.get("health") if record is not None and record.get("pid") == pid else None
    if not isinstance(health, dict):
        return {"pid": pid, "status": "starting", "issues": []}
    return {"pid": pid, **health}


def _serving_line(verdict: dict[str, Any] | None) -> str:
    if verdict is None:
        return "no server serves this state directory (the verdict above is this process's own)"
    issues = "; ".join(str(i) for i in verdict.get("issues") or [])
    return f"{verdict['status']} (the server, pid {verdict['pid']}){': ' + issues if issues else ''}"


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from codomyrmex_orchestration._cli_display import print_table

    engine = _open_engine(settings)
    try:
        report = engine.get_system_status()
    finally:
        engine.shutdown()
    serving = _serving_verdict(settings)
    if args.json:
        _dump({**report.model_dump(mode="json"), "serving_process": serving})
        return EXIT_OK
    console = _stdout_console()
    workflows = report.workflows
    print(f"overall     {report.overall_status}")
    print(f"server      {_serving_line(serving)}")
    print(f"state dir   {report.state_dir}")
    print(
        f"workflows   {workflows.registered} registered, {len(workflows.load_errors)} config files rejected"
    )
    print(f"runs        {_fmt(report.runs)}")
    print(f"queue       {_fmt(report.queue)}")
    rows = [
        [
            rid,
            _fmt(u.get("capacity")),
            _fmt(u.get("allocated")),
            _fmt(u.get("available")),
            f"{100 * float(u.get('utilization') or 0):.0f}%",
            str(u.get("status", "-")),
        ]
        for rid, u in sorted(report.resources.items())
    ]
    print_table(console, ["RESOURCE", "CAPACITY", "ALLOCATED", "AVAILABLE", "USED", "STATUS"], rows)
    for error in workflows.load_errors:
        print(f"rejected {error['path']}: {error['reason']}")
    return EXIT_OK


def _cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    from codomyrmex_orchestration._cli_display import print_table

    engine = _open_engine(settings)
    try:
        report = engine.health_check()
    finally:
        engine.shutdown()
    serving = _serving_verdict(settings)
    if args.json:
        _dump({**report.model_dump(mode="json"), "serving_process": serving})
    else:
        print(f"overall {report.overall_status}")
        print(f"server  {_serving_line(serving)}")
        rows = [
            [
                name,
                c.status,
                "yes" if c.critical else "no",
                str(c.error_count),
                str(c.details.get("reason") or c.last_error or ""),
            ]
            for name, c in report.components.items()
        ]
        print_table(
            _stdout_console(),
            ["COMPONENT", "STATUS", "CRITICAL", "ERRORS", "REASON"],
            rows,
            styles={1: {"healthy": "green", "degraded": "yellow", "unhealthy": "bold red"}},
        )
    unhealthy = "unhealthy" in (report.overall_status, (serving or {}).get("status"))
    return EXIT_FAILED if unhealthy else EXIT_OK


# ---------------------------------------------------------------------- main

_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "run": _cmd_run,
    "validate": _cmd_validate,
    "graph": _cmd_graph,
    "runs": _cmd_runs,
    "show": _cmd_show,
    "resume": _cmd_resume,
    "cancel": _cmd_cancel,
    "status": _cmd_status,
    "health": _cmd_health,
    "serve": _cmd_serve,
    "paths": cmd_paths,
}


def _error(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    import_structlog_plain()  # first: before anything imports structlog with rich (see its docstring)
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(words[0] if words and words[0] in _PARSERS else None)
    args = parser.parse_args(words)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        settings = _settings(args)
    except OrchestrationError as exc:
        _error(str(exc))
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format)
    try:
        return _COMMANDS[args.command](args, settings)
    except (InvalidInputError, NotFoundError, StateStoreError) as exc:
        # A state directory that cannot be created, read or written is bad configuration, as for serve.
        if args.debug:
            raise
        _error(_by_flag(exc, args))
        return EXIT_USAGE
    except (OrchestrationError, _Failed) as exc:
        if args.debug:
            raise
        _error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as cat does, and keep the interpreter's
        # final flush of stdout from failing again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        if args.debug:
            raise
        _error(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for the traceback")
        return EXIT_FAILED
