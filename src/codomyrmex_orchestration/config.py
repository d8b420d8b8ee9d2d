"""Settings: one frozen pydantic model with named defaults, read from ``CODOMYRMEX_*`` variables."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from codomyrmex_orchestration.errors import InvalidInputError

Executor = Literal["local", "dask"]

__all__ = [
    "DEFAULT_CONFIG_DIR",
    "DEFAULT_HOST",
    "DEFAULT_HTTP_MAX_CONNECTIONS",
    "DEFAULT_HTTP_REQUEST_TIMEOUT",
    "DEFAULT_MAX_MAP_ITEMS",
    "DEFAULT_MAX_OPEN_SESSIONS",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEFAULT_MAX_PARAMETERS_BYTES",
    "DEFAULT_MAX_QUEUED_TASKS",
    "DEFAULT_MAX_RESOLVED_SIZE",
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_MAX_STEPS",
    "DEFAULT_MAX_SUBWORKFLOW_DEPTH",
    "DEFAULT_MAX_SUBWORKFLOW_RUNS",
    "DEFAULT_MAX_WORKERS",
    "DEFAULT_MAX_WORKFLOWS",
    "DEFAULT_MCP_SERVERS_FILE",
    "DEFAULT_PORT",
    "DEFAULT_PROJECTS_DIR",
    "DEFAULT_SECRETS_FILE",
    "DEFAULT_SESSION_IDLE_TIMEOUT",
    "DEFAULT_STATE_DIR",
    "DEFAULT_STATE_MAX_BYTES",
    "DEFAULT_STDIO_MAX_LINE_BYTES",
    "DEFAULT_TEMPLATES_DIR",
    "ENV_PREFIX",
    "Settings",
    "default_data_dir",
    "per_user_dir",
]

ENV_PREFIX = "CODOMYRMEX_"
APP_NAME = "codomyrmex-orchestration"
# The layout inside the data directory (and the core classes' defaults, relative to their caller's folder).
DEFAULT_STATE_DIR = Path(".workflows")
DEFAULT_CONFIG_DIR = Path("config/workflows/production")
DEFAULT_PROJECTS_DIR = Path("projects")
DEFAULT_TEMPLATES_DIR = Path("config/templates")
DEFAULT_MCP_SERVERS_FILE = Path("config/mcp_servers.json")
DEFAULT_SECRETS_FILE = Path("config/secrets.json")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)
DEFAULT_MAX_STEPS = 10_000
#: Most items one map step (a step with ``for_each``) may run.
DEFAULT_MAX_MAP_ITEMS = 100_000
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
#: Most characters a step's references may put into its parameters (``templating.MAX_RESOLVED_SIZE``).
DEFAULT_MAX_RESOLVED_SIZE = 16 * 1024 * 1024
DEFAULT_STATE_MAX_BYTES = 1024**3
DEFAULT_MAX_PARAMETERS_BYTES = 1024 * 1024
DEFAULT_MAX_SUBWORKFLOW_DEPTH = 8
DEFAULT_MAX_SUBWORKFLOW_RUNS = 1000
DEFAULT_STDIO_MAX_LINE_BYTES = 32 * 1024 * 1024
DEFAULT_SESSION_IDLE_TIMEOUT = 300.0
DEFAULT_MAX_SESSIONS = 1000
#: Seconds an HTTP client has to send a request whole once it connects or starts one.
DEFAULT_HTTP_REQUEST_TIMEOUT = 10.0
#: HTTP connections open at once (over twice the default session cap: a session may hold a stream).
DEFAULT_HTTP_MAX_CONNECTIONS = 2048
DEFAULT_MAX_QUEUED_TASKS = 10_000
#: Most workflows registered at once (create_workflow refuses a new name past it).
DEFAULT_MAX_WORKFLOWS = 1000
#: Most sessions (create_session) open at once.
DEFAULT_MAX_OPEN_SESSIONS = 1000

Transport = Literal["stdio", "sse", "streamable-http"]
LogFormat = Literal["console", "json"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]

#: Settings fields that default to a place inside ``data_dir`` (the layout above).
_LAYOUT = {
    "state_dir": DEFAULT_STATE_DIR,
    "config_dir": DEFAULT_CONFIG_DIR,
    "projects_dir": DEFAULT_PROJECTS_DIR,
    "templates_dir": DEFAULT_TEMPLATES_DIR,
    "mcp_servers_file": DEFAULT_MCP_SERVERS_FILE,
    "secrets_file": DEFAULT_SECRETS_FILE,
}

_TRUE = {"1", "true", "yes", "on"}


def default_data_dir() -> Path:
    """The per-user data directory (``~/.local/share/codomyrmex-orchestration`` on Linux, the platform's
    equivalent elsewhere): a desktop client may start the server in any folder, often ``/``.

    Raises:
        InvalidInputError: it has no home to go in (named as ``CODOMYRMEX_DATA_DIR``, which places it).
    """
    path = per_user_dir("data")
    if path is None:
        raise InvalidInputError(
            ENV_PREFIX + "DATA_DIR",
            f"not set, and the per-user data directory cannot be placed: HOME is unset or relative and user "
            f"{os.getuid()} has no home directory; set {ENV_PREFIX}DATA_DIR (or HOME) to an absolute path",
        )
    return path


def per_user_dir(kind: Literal["data", "cache"]) -> Path | None:
    """The package's per-user data or cache directory (platformdirs), or None when there is no absolute
    home to put it in. A relative ``XDG_DATA_HOME``/``XDG_CACHE_HOME`` is ignored, as the XDG spec says:
    platformdirs 4.10 and before honour it, putting state under the working folder."""
    find = platformdirs.user_data_path if kind == "data" else platformdirs.user_cache_path
    try:
        path = find(APP_NAME, appauthor=False)
        if not path.is_absolute():  # only a relative XDG variable gets here (older platformdirs)
            path = Path(os.path.expanduser("~/.local/share" if kind == "data" else "~/.cache")) / APP_NAME
    except RuntimeError:  # newer platformdirs: no absolute home
        return None
    return path if path.is_absolute() else None  # older platformdirs leave the ~ when there is no home


_FALSE = {"0", "false", "no", "off"}

#: A Dask scheduler's address as ``distributed`` parses it: an optional scheme, a host, a port.
_DASK_ADDRESS = re.compile(
    r"(?:(?:tcp|tls|ws|wss|ucx)://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})/?"
)


class Settings(BaseModel):
    """Everything configurable, with defaults. CLI flags override environment variables.

    Every field ``x`` is read from ``CODOMYRMEX_X`` by :meth:`from_env` (e.g. ``state_dir`` from
    ``CODOMYRMEX_STATE_DIR``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Where state, workflows, projects, templates and secrets live unless their own setting is given:
    #: ``data_dir/.workflows``, ``data_dir/config/workflows/production``, ``data_dir/projects``,
    #: ``data_dir/config/templates``, ``data_dir/config/secrets.json``. Default: :func:`default_data_dir`,
    #: never the working directory.
    data_dir: Path = Field(default_factory=default_data_dir)
    # The six path defaults below are replaced by paths inside data_dir (see _place_in_data_dir).
    state_dir: Path = DEFAULT_STATE_DIR
    config_dir: Path = DEFAULT_CONFIG_DIR
    projects_dir: Path = DEFAULT_PROJECTS_DIR
    templates_dir: Path = DEFAULT_TEMPLATES_DIR
    #: The MCP servers ``mcp.call`` steps may call, in the ``mcpServers`` shape clients use
    #: (default ``data_dir/config/mcp_servers.json``; read when the engine starts).
    mcp_servers_file: Path = DEFAULT_MCP_SERVERS_FILE
    #: Workflow secrets for ``{{secrets.NAME}}`` (after ``CODOMYRMEX_SECRET_NAME``): a JSON object of
    #: strings, refused unless only its owner may read it (mode 0600). It need not exist.
    secrets_file: Path = DEFAULT_SECRETS_FILE
    log_level: LogLevel = "info"
    log_format: LogFormat = "console"
    #: shell.run / python.call allowed. ``None``: allowed on stdio and for the CLI, refused on
    #: network transports (the server decides from the transport).
    allow_shell: bool | None = None
    max_workers: int = Field(default=DEFAULT_MAX_WORKERS, ge=1, le=1024)
    #: Tasks and steps accepted but not started yet (queued, waiting on dependencies or a retry); past it
    #: new work is refused, naming this setting. Clients take turns within a priority level.
    max_queued_tasks: int = Field(default=DEFAULT_MAX_QUEUED_TASKS, ge=1)
    #: One client's share of ``max_queued_tasks`` (a client: an MCP connection, or on 2026-07-28 a
    #: clientInfo name and version; or the session a call names). Unset: three quarters of the cap, so a
    #: lone client gets most of it and another still finds room; while several clients have tasks
    #: waiting, the cap divided among them if that is less. Past it the client's new work is refused,
    #: naming this setting; a run already accepted is never refused.
    max_queued_per_client: int | None = Field(default=None, ge=1)
    max_steps: int = Field(default=DEFAULT_MAX_STEPS, ge=1)
    #: Workflows registered at once (every source); past it a new name is refused, naming this setting.
    max_workflows: int = Field(default=DEFAULT_MAX_WORKFLOWS, ge=1)
    #: Sessions opened with create_session and open at once; past it a new one is refused, naming this
    #: setting (streamable-HTTP sessions are ``max_sessions``).
    max_open_sessions: int = Field(default=DEFAULT_MAX_OPEN_SESSIONS, ge=1)
    #: Most items one map step (``for_each``) may have: a longer literal list is refused as the workflow is
    #: validated, a longer resolved one fails the step; both name this setting.
    max_map_items: int = Field(default=DEFAULT_MAX_MAP_ITEMS, ge=1)
    max_output_bytes: int = Field(default=DEFAULT_MAX_OUTPUT_BYTES, ge=1024)
    #: The template expansion budget: most characters a step's ``{{...}}`` references may put into its
    #: parameters (embedded text, and the JSON size of each value passed whole); more fails the step.
    max_resolved_size: int = Field(default=DEFAULT_MAX_RESOLVED_SIZE, ge=1024)
    max_subworkflow_depth: int = Field(default=DEFAULT_MAX_SUBWORKFLOW_DEPTH, ge=0)
    #: Most sub-workflow runs under one top-level run (all nesting levels together).
    max_subworkflow_runs: int = Field(default=DEFAULT_MAX_SUBWORKFLOW_RUNS, ge=0)
    #: Write a step's full output to ``state_dir/outputs/<run_id>/<step>.json`` when it is truncated
    #: for exceeding ``max_output_bytes`` (durable mode only).
    spill_outputs: bool = True
    transport: Transport = "stdio"
    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    auth_token: SecretStr | None = None
    #: file holding the bearer token (used when ``auth_token`` is unset); keeps it out of the environment.
    auth_token_file: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    #: Seconds a streamable-HTTP session may stay idle (no request in flight) before it is closed.
    session_idle_timeout: float = Field(
        default=DEFAULT_SESSION_IDLE_TIMEOUT, gt=0, le=86_400, allow_inf_nan=False
    )
    #: Streamable-HTTP sessions open at once; at the cap the longest-idle one is closed for a new client.
    max_sessions: int = Field(default=DEFAULT_MAX_SESSIONS, ge=1)
    #: Seconds an HTTP client has, once it connects (or sends the first byte of a request on a kept-alive
    #: connection), to send the request's head; a body may pause as long between two reads. Slower
    #: connections are closed (408 when part of a request came).
    http_request_timeout: float = Field(
        default=DEFAULT_HTTP_REQUEST_TIMEOUT, gt=0, le=3600, allow_inf_nan=False
    )
    #: HTTP connections open at once; a newcomer past it closes the one waiting longest for its request
    #: (or is refused when every other is being served).
    http_max_connections: int = Field(default=DEFAULT_HTTP_MAX_CONNECTIONS, ge=1)
    #: Module prefixes ``python.call`` may import from (e.g. ``json``, ``mypkg.tasks``); empty: any.
    python_call_allow: tuple[str, ...] = ()
    #: Longest line (one JSON-RPC message) read on stdio; a longer one is refused and discarded.
    stdio_max_line_bytes: int = Field(default=DEFAULT_STDIO_MAX_LINE_BYTES, ge=1024)
    #: Host names and IP networks (CIDR) ``http.request`` may reach although they are internal, where
    #: internal addresses are blocked (network transports without code execution), e.g. ``10.0.0.0/8``.
    http_allow: tuple[str, ...] = ()
    durable: bool = True
    #: Most finished runs (with their steps) and events the state store keeps; the oldest go first.
    retention_runs: int = Field(default=10_000, ge=1)
    retention_events: int = Field(default=100_000, ge=1)
    #: The byte budget of the state directory (stored runs, steps, spill files, workflow definitions,
    #: sessions): past it the oldest finished runs and closed sessions are evicted, and new runs,
    #: workflows and sessions are refused while it cannot be met.
    state_max_bytes: int = Field(default=DEFAULT_STATE_MAX_BYTES, ge=1)
    #: The most bytes of JSON a run's parameters may take (a workflow's default parameters too, checked as
    #: the workflow is validated).
    max_parameters_bytes: int = Field(default=DEFAULT_MAX_PARAMETERS_BYTES, ge=1)
    #: Where ready steps run: ``local`` (the scheduler's worker threads) or ``dask`` (needs the extra
    #: ``codomyrmex-orchestration[dask]``). See docs/ENGINE.md, "Scale-out with Dask".
    executor: Executor = "local"
    #: ``tcp://host:8786`` of a running Dask scheduler; ``None`` starts a LocalCluster on this machine.
    dask_scheduler: str | None = None
    #: Workers of the LocalCluster started when ``dask_scheduler`` is unset (``None``: Dask's default).
    dask_n_workers: int | None = Field(default=None, ge=1)
    #: Whether that LocalCluster's workers are processes (True) or threads of this process.
    dask_processes: bool = True
    #: Resources each LocalCluster worker declares, as ``NAME=amount`` (e.g. ``GPU=1``).
    dask_worker_resources: tuple[str, ...] = ()
    #: Our resource name -> Dask resource name, as ``ours=Theirs`` (e.g. ``gpu=GPU``): a step's
    #: requirement on a mapped resource also restricts it to Dask workers that declare it.
    dask_resource_map: tuple[str, ...] = ()
    #: ``distributed.scheduler.worker-saturation`` for the LocalCluster (``None``: Dask's default 1.1;
    #: ``inf`` sends every ready step to a worker at once, best for many small steps).
    dask_worker_saturation: float | None = Field(default=None, gt=0)
    #: Load the sample workflows shipped with the package (``fan_out_join``, ``service_report``); a
    #: workflow of the same name in ``config_dir`` or registered through the tools wins.
    load_samples: bool = True

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: Any) -> Any:
        # CODOMYRMEX_LOG_LEVEL=WARNING as well as warning: logging's own names are in capitals.
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("dask_scheduler")
    @classmethod
    def _a_scheduler_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _DASK_ADDRESS.fullmatch(value.strip())
        if match is None or int(match.group(1)) > 65535:
            raise PydanticCustomError(
                "dask_address",
                "{value} is not the address of a Dask scheduler: expected tcp://host:port "
                "(e.g. tcp://127.0.0.1:8786), or leave it unset to start a cluster on this machine",
                {"value": repr(value)},
            )
        return value.strip()

    @field_validator("dask_worker_saturation", mode="before")
    @classmethod
    def _saturation_not_nan(cls, value: Any) -> Any:
        if isinstance(value, str | float) and str(value).strip().lower() == "nan":
            raise PydanticCustomError("nan", "must be a number above 0 (inf: no limit), not NaN")
        return value

    @field_validator("dask_worker_resources", "dask_resource_map")
    @classmethod
    def _name_value_pairs(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        for entry in value:
            name, sep, amount = entry.partition("=")
            if not sep or not name.strip() or not amount.strip():
                raise PydanticCustomError(
                    "pairs",
                    "expected name=value entries separated by commas, got {entry}",
                    {"entry": repr(entry)},
                )
            if info.field_name == "dask_worker_resources" and not _is_number(amount):
                raise PydanticCustomError(
                    "pairs", "{entry}: the amount must be a number (e.g. GPU=1)", {"entry": repr(entry)}
                )
        return value

    @model_validator(mode="before")
    @classmethod
    def _place_in_data_dir(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        placed = dict(values)
        # An empty path is unset, as an empty variable is (see from_env): never the working directory.
        if placed.get("data_dir") in (None, ""):
            placed["data_dir"] = default_data_dir()
        data_dir = Path(placed["data_dir"])
        for name, relative in _LAYOUT.items():
            if placed.get(name) in (None, ""):
                placed[name] = data_dir / relative
        return placed

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], *, flags: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Build settings from ``CODOMYRMEX_*`` variables in ``environ``; ``overrides`` win.

        A variable set to an empty value counts as unset: the setting keeps its default. ``flags``
        names the command-line flag that gave an override (``{"port": "--port"}``): an error in its
        value names the flag and the variable (``--port (CODOMYRMEX_PORT): ...``), not the variable
        alone, which the user may never have set.

        Raises:
            InvalidInputError: a variable has a value the field does not accept (named).
        """
        values: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if not raw:  # unset, or set to "" (as a client's JSON config often leaves it)
                continue
            annotation = str(info.annotation)
            if "bool" in annotation:
                low = raw.strip().lower()
                if low in _TRUE:
                    values[name] = True
                elif low in _FALSE:
                    values[name] = False
                else:
                    raise InvalidInputError(
                        ENV_PREFIX + name.upper(), f"{raw!r} is not a boolean (use 1/0, true/false, yes/no)"
                    )
            elif "tuple" in annotation:
                values[name] = tuple(h.strip() for h in raw.split(",") if h.strip())
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "data_dir" not in values:  # here, not in the field's factory, so its error is not re-worded
            values["data_dir"] = default_data_dir()
        try:
            return cls(**values)
        except ValidationError as exc:
            # Named as the variable a user sets, and as the flag when one gave the value.
            given = {name: flag for name, flag in (flags or {}).items() if overrides.get(name) is not None}
            raise InvalidInputError.from_validation(_AsVariables(exc, given)) from None

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.db"

    def paths(self) -> dict[str, Path]:
        """Where everything lives: the data directory, state (and its database), workflows, projects,
        templates and the shipped samples."""
        from codomyrmex_orchestration.samples import SAMPLES_DIR

        return {
            "data_dir": self.data_dir,
            "state_dir": self.state_dir,
            "state_db": self.state_db,
            "config_dir": self.config_dir,
            "projects_dir": self.projects_dir,
            "templates_dir": self.templates_dir,
            "mcp_servers_file": self.mcp_servers_file,
            "secrets_file": self.secrets_file,
            "samples_dir": SAMPLES_DIR,
        }


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _AsVariables:
    """A settings ``ValidationError`` whose problems are located at the variables a user sets
    (``CODOMYRMEX_MAX_WORKERS``) rather than the fields, or at the flag that gave the value and its
    variable (``--port (CODOMYRMEX_PORT)``), for the one validation-error formatter."""

    def __init__(self, exc: ValidationError, flags: Mapping[str, str]) -> None:
        self._exc = exc
        self._flags = flags

    def _name(self, field: str) -> str:
        variable = ENV_PREFIX + field.upper()
        flag = self._flags.get(field)
        return f"{flag} ({variable})" if flag else variable

    def errors(self) -> list[dict[str, Any]]:
        return [
            {**err, "loc": (self._name(str(err["loc"][0])), *err["loc"][1:])} if err["loc"] else dict(err)
            for err in self._exc.errors()
        ]
