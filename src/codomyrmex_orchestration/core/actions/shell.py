"""The ``shell`` module: ``shell.run`` starts a command in its own process group and kills the whole
group when the step is cancelled, reaches its deadline or exceeds its own ``timeout``. The leader dies
with the engine (Linux parent-death signal) and the group is recorded under ``ctx.extras["procs_dir"]``
while it runs, so a restarted engine kills what a crash left behind (``core._procs``)."""

from __future__ import annotations

import os
import select
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import IO, Any

from codomyrmex_orchestration._redact import redact_text
from codomyrmex_orchestration.core._procs import PROCS_KEY, parent_death_signal, record_group
from codomyrmex_orchestration.core.actions._params import (
    CappedBuffer,
    ParameterReaders,
    get_bool,
    get_max_output_bytes,
    get_number,
    get_str,
    get_str_map,
    output_cap,
)
from codomyrmex_orchestration.core.actions._registry import ActionContext, ActionDefinition, ActionRegistry
from codomyrmex_orchestration.errors import (
    InvalidInputError,
    StepCancelledError,
    StepFailedError,
    StepTimeoutError,
)

__all__ = ["KILL_GRACE_SECONDS", "PARAMETERS", "register", "run"]

#: Seconds between SIGTERM to the process group and SIGKILL.
KILL_GRACE_SECONDS = 0.5
#: Longest the loop sleeps before looking at the cancellation event and the deadlines again.
_SLICE = 0.05
_READ_CHUNK = 65536
#: After the child exits, how long its pipes may stay open before we stop reading them.
_DRAIN_SECONDS = 1.0
_STDERR_TAIL = 2000
_SH = "/bin/sh"
#: Makes each command's leader die with the thread (and so the engine) that started it (Linux).
_PDEATHSIG = parent_death_signal()

PARAMETERS = {
    "command": "argv list of strings (run directly), or a string: split with shlex, or run by /bin/sh -c "
    "when shell is true (required)",
    "shell": "boolean, run the string command with /bin/sh -c (default false)",
    "cwd": "working directory (default: the server's)",
    "env": "object of variables merged over the server's environment (null removes a variable)",
    "env_clear": "boolean, start from an empty environment instead of the server's (default false)",
    "input": "text written to the command's stdin (default: no stdin)",
    "check": "boolean, fail the step when the exit code is not 0 (default true)",
    "timeout": "seconds before the command's process group is killed (default: the step's timeout)",
    "max_output_bytes": "integer, bytes of stdout and of stderr kept (default 1048576)",
}
_ACTION = "shell.run"


def _argv(params: Mapping[str, Any]) -> list[str]:
    command = params.get("command")
    use_shell = get_bool(params, "shell", False, _ACTION)
    if isinstance(command, str):
        if not command.strip():
            raise InvalidInputError("parameters.command", "shell.run needs a non-empty command")
        if use_shell:
            return [_SH, "-c", command]
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise InvalidInputError(
                "parameters.command", f"cannot split the command string ({exc}); pass an argv list"
            ) from None
        return argv
    if isinstance(command, list) and command and all(isinstance(a, str) for a in command):
        if use_shell:
            raise InvalidInputError(
                "parameters.shell", "shell: true needs 'command' as one string, not an argv list"
            )
        return list(command)
    raise InvalidInputError(
        "parameters.command",
        "shell.run needs 'command': a non-empty list of strings (argv) or a string",
    )


def _env_changes(params: Mapping[str, Any]) -> tuple[dict[str, str], set[str]]:
    """The variables ``env`` sets, and those it removes (null values)."""
    raw = params.get("env")
    removals: set[str] = set()
    if isinstance(raw, Mapping):
        removals = {k for k, v in raw.items() if v is None}
        raw = {k: v for k, v in raw.items() if v is not None}
    return get_str_map({"env": raw}, "env", _ACTION), removals


def _environment(env_clear: bool, changes: tuple[dict[str, str], set[str]]) -> dict[str, str]:
    overrides, removals = changes
    env = {} if env_clear else dict(os.environ)
    env.update(overrides)
    for key in removals:
        env.pop(key, None)
    return env


def _input(params: Mapping[str, Any]) -> str | None:
    stdin_text = params.get("input")
    if stdin_text is not None and not isinstance(stdin_text, str):
        raise InvalidInputError("parameters.input", "shell.run needs 'input' to be a string")
    return stdin_text


#: Every rule of shell.run's parameters, run when the step runs and on literal values at validation.
#: Whether ``cwd`` exists is asked only when the step runs (an earlier step may create it).
_READERS = ParameterReaders(
    _ACTION,
    PARAMETERS,
    argv=(("command", "shell"), _argv),
    cwd=(("cwd",), lambda p: get_str(p, "cwd", _ACTION)),
    env_clear=(("env_clear",), lambda p: get_bool(p, "env_clear", False, _ACTION)),
    env=(("env",), _env_changes),
    input=(("input",), _input),
    check=(("check",), lambda p: get_bool(p, "check", True, _ACTION)),
    timeout=(("timeout",), lambda p: get_number(p, "timeout", None, _ACTION)),
    max_output_bytes=(("max_output_bytes",), lambda p: get_max_output_bytes(p, _ACTION)),
)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        # Nothing left in the group (PermissionError: macOS reports a group of zombies this way).
        pass


def _leader_exited(pid: int) -> bool:
    """True once the child has exited. WNOWAIT leaves it a zombie, so its pid (the process group id)
    cannot be reused before we have signalled the rest of the group."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _describe(argv: list[str]) -> str:
    text = redact_text(shlex.join(argv[2:] if argv[:2] == [_SH, "-c"] else argv))  # before the cut
    return text if len(text) <= 200 else text[:197] + "..."


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def run(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Run a command; see :data:`PARAMETERS`.

    Returns:
        ``{"exit_code": int, "stdout": str, "stderr": str}``.

    Raises:
        InvalidInputError: a parameter is malformed.
        StepFailedError: the command cannot start, or exits non-zero while ``check`` is true.
        StepCancelledError: ``ctx.cancel_event`` was set; the process group was killed.
        StepTimeoutError: ``timeout`` or the step deadline passed; the process group was killed.
    """
    read = _READERS.read(params)
    argv: list[str] = read["argv"]
    cwd: str | None = read["cwd"]
    if cwd is not None and not os.path.isdir(cwd):
        raise InvalidInputError("parameters.cwd", f"{cwd!r} is not an existing directory")
    env = _environment(read["env_clear"], read["env"])
    stdin_text: str | None = read["input"]
    check: bool = read["check"]
    timeout: float | None = read["timeout"]
    cap = output_cap(read["max_output_bytes"], ctx)

    ctx.check_cancelled()
    described = _describe(argv)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_PDEATHSIG,  # only prctl + getppid in the child: no locks taken
        )
    except FileNotFoundError:
        raise StepFailedError(
            ctx.step_name, f"command not found: {argv[0]!r} (not on PATH)", error_type="FileNotFoundError"
        ) from None
    except OSError as exc:
        raise StepFailedError(
            ctx.step_name, f"cannot start {described}: {exc.strerror or exc}", error_type=type(exc).__name__
        ) from None
    ctx.logger.debug("shell.run started", pid=proc.pid, command=described)

    stdout, stderr = CappedBuffer(cap), CappedBuffer(cap)
    # Recorded while it runs: if the engine dies now, the next one kills this group before a resume.
    with record_group(ctx.extras.get(PROCS_KEY), proc.pid, run_id=ctx.run_id, step=ctx.step_name):
        stop = _communicate(proc, stdin_text, stdout, stderr, ctx, started, timeout)
    code = proc.returncode
    ctx.logger.debug("shell.run finished", pid=proc.pid, exit_code=code, stopped=stop)

    if stop == "cancelled":
        raise StepCancelledError(ctx.step_name, f"cancelled while running {described}; process group killed")
    if stop == "timeout":
        raise StepTimeoutError(ctx.step_name, timeout or 0.0)
    if stop == "deadline":
        limit = (ctx.deadline or started) - started
        raise StepTimeoutError(ctx.step_name, round(limit, 3))
    err_text = stderr.text()
    if check and code != 0:
        tail = redact_text(err_text)[-_STDERR_TAIL:].strip()  # redacted before the cut
        raise StepFailedError(
            ctx.step_name,
            f"command {described} {_exit_text(code)}"
            + (f"; stderr ends with: {tail}" if tail else "; stderr was empty")
            + " (set check: false to get the exit code as output instead)",
            error_type="NonZeroExit",
        )
    return {"exit_code": code, "stdout": stdout.text(), "stderr": err_text}


def _communicate(
    proc: subprocess.Popen[bytes],
    stdin_text: str | None,
    stdout: CappedBuffer,
    stderr: CappedBuffer,
    ctx: ActionContext,
    started: float,
    timeout: float | None,
) -> str | None:
    """Feed stdin, drain stdout/stderr and watch for cancellation until the child has exited and its
    pipes are closed. Returns why the group was stopped (``cancelled``/``timeout``/``deadline``) or None.

    One thread and a selector, like ``Popen.communicate``, but with capped buffers and a wake-up every
    ``_SLICE`` seconds to look at the cancellation event. Whatever happens, the group is killed and the
    child reaped before returning.
    """
    pid = pgid = proc.pid
    own_deadline = started + timeout if timeout is not None else None
    step_deadline = ctx.deadline
    stop: str | None = None
    kill_at: float | None = None
    leader_done = False
    drain_until: float | None = None
    sinks: dict[int, CappedBuffer] = {}
    pending = memoryview(stdin_text.encode("utf-8")) if stdin_text is not None else memoryview(b"")
    offset = 0
    with selectors.DefaultSelector() as sel:
        by_fd: dict[int, IO[bytes]] = {}
        for pipe, sink in ((proc.stdout, stdout), (proc.stderr, stderr)):
            assert pipe is not None
            sel.register(pipe, selectors.EVENT_READ)
            sinks[pipe.fileno()] = sink
            by_fd[pipe.fileno()] = pipe
        if proc.stdin is not None:
            by_fd[proc.stdin.fileno()] = proc.stdin
            if len(pending):
                sel.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        try:
            while True:
                now = time.monotonic()
                if stop is None:
                    if ctx.cancel_event.is_set():
                        stop = "cancelled"
                    elif own_deadline is not None and now >= own_deadline:
                        stop = "timeout"
                    elif step_deadline is not None and now >= step_deadline:
                        stop = "deadline"
                    if stop is not None:
                        _signal_group(pgid, signal.SIGTERM)
                        kill_at = now + KILL_GRACE_SECONDS
                if kill_at is not None and now >= kill_at:
                    _signal_group(pgid, signal.SIGKILL)
                    kill_at = None
                if not leader_done and _leader_exited(pid):
                    leader_done = True
                    # The step ends with its leader: stragglers (background jobs, daemons that kept
                    # our pipes open) are killed so nothing outlives the step.
                    _signal_group(pgid, signal.SIGKILL)
                    drain_until = now + _DRAIN_SECONDS
                if drain_until is not None and (not sel.get_map() or now >= drain_until):
                    # Pipes still open after the drain period are held by a process that left our
                    # group (setsid); stop reading rather than wait for it.
                    break
                wait = _SLICE
                for moment in (own_deadline, step_deadline, kill_at, drain_until):
                    if moment is not None:
                        wait = min(wait, max(0.0, moment - now))
                if not sel.get_map():
                    ctx.cancel_event.wait(wait)
                    continue
                for key, _events in sel.select(wait):
                    fd = key.fd
                    stream = by_fd[fd]
                    if stream is proc.stdin:
                        try:
                            offset += os.write(fd, pending[offset : offset + select.PIPE_BUF])
                        except BrokenPipeError:
                            offset = len(pending)
                        if offset >= len(pending):
                            sel.unregister(stream)
                            stream.close()
                        continue
                    data = os.read(fd, _READ_CHUNK)
                    if data:
                        sinks[fd].add(data)
                    else:
                        sel.unregister(stream)
                        stream.close()
        finally:
            if not leader_done:
                _signal_group(pgid, signal.SIGKILL)
            for pipe in by_fd.values():
                if not pipe.closed:
                    pipe.close()
            proc.wait()
            # The leader is reaped; anything still in its group got SIGKILL above.
    return stop


def register(registry: ActionRegistry) -> None:
    """Add ``shell.run`` to ``registry``."""
    registry.register(
        ActionDefinition(
            "shell",
            "run",
            run,
            description="Run a command (argv list, or a string; /bin/sh only with shell: true) in its own "
            "process group; cancellation, the step deadline and timeout kill the whole group.",
            parameters=dict(PARAMETERS),
            output='{"exit_code": int, "stdout": text, "stderr": text} (each capped at max_output_bytes, '
            'truncation marked "…[truncated N bytes]")',
            executes_code=True,
            check=_READERS.check,
        )
    )
