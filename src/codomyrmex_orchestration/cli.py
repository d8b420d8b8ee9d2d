"""The command line: argv -> Settings -> logging -> a subcommand.

Exit codes: 0 success, 1 a run or validation failed, 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codomyrmex_orchestration import __version__
from codomyrmex_orchestration.config import Settings
from codomyrmex_orchestration.errors import OrchestrationError
from codomyrmex_orchestration.logs import configure_logging

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"])
    parser.add_argument("--log-format", choices=["console", "json"])
    parser.add_argument("--state-dir", help="state directory (default .workflows)")
    parser.add_argument("--config-dir", help="workflow JSON directory (default config/workflows/production)")
    parser.add_argument("--projects-dir", help="projects root (default projects)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codomyrmex-orchestration",
        description="Run workflows as DAGs of real actions, and serve them to agents over MCP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a workflow (a JSON file or a registered name) and print its result")
    _common(run)
    run.add_argument("workflow", help="path to a workflow JSON file, or the name of a registered workflow")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a run parameter")
    run.add_argument("--json", action="store_true", help="print the run record as JSON")
    run.add_argument("--timeout", type=float, help="stop waiting after this many seconds")

    validate = sub.add_parser("validate", help="validate workflow files; exit 1 on any problem")
    _common(validate)
    validate.add_argument("files", nargs="+")

    graph = sub.add_parser("graph", help="print a workflow's DAG as Mermaid or Graphviz DOT")
    _common(graph)
    graph.add_argument("workflow")
    graph.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")

    _add_serve_parser(sub)
    return parser


def _parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise OrchestrationError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        os.environ,
        log_level=getattr(args, "log_level", None),
        log_format=getattr(args, "log_format", None),
        state_dir=getattr(args, "state_dir", None),
        config_dir=getattr(args, "config_dir", None),
        projects_dir=getattr(args, "projects_dir", None),
        **(_serve_overrides(args) if args.command == "serve" else {}),
    )


def _load_document(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise OrchestrationError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise OrchestrationError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise OrchestrationError(f"{path}: expected a JSON object with 'name' and 'steps'")
    return document


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from codomyrmex_orchestration.core.actions import create_registry
    from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
    from codomyrmex_orchestration.core.workflows import WorkflowManager

    registry = create_registry(allow_code_execution=settings.allow_shell is not False)
    orchestrator = TaskOrchestrator(settings.max_workers, registry=registry)
    try:
        manager = WorkflowManager(
            orchestrator=orchestrator, registry=registry, config_dir=settings.config_dir
        )
        path = Path(args.workflow)
        if path.suffix == ".json" or path.exists():
            name = manager.create_workflow(_load_document(path), overwrite=True, source="file").name
        else:
            name = args.workflow
        record = manager.execute_workflow(name, _parse_params(args.param), timeout=args.timeout)
        if args.json:
            print(json.dumps(record.model_dump(mode="json"), indent=2))
        else:
            print(f"run {record.run_id} of {record.workflow_name}: {record.status.value}")
            for step in record.steps.values():
                took = f"{step.duration_seconds:.3f}s" if step.duration_seconds is not None else "-"
                detail = step.error.message if step.error else (step.skipped_reason or "")
                print(f"  {step.name:<24} {step.status.value:<10} attempts={step.attempts} {took} {detail}")
            final = [s for s in record.steps.values() if s.output is not None]
            if final:
                print("output of the last step:")
                print(json.dumps(final[-1].output, indent=2, default=str))
        return EXIT_OK if record.succeeded else EXIT_FAILED
    finally:
        orchestrator.shutdown(wait=True, cancel_pending=True, timeout=10)


def _cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    from codomyrmex_orchestration.core.actions import create_registry
    from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
    from codomyrmex_orchestration.core.workflows import WorkflowManager

    registry = create_registry()
    orchestrator = TaskOrchestrator(1, registry=registry)
    failed = 0
    try:
        manager = WorkflowManager(orchestrator=orchestrator, registry=registry, config_dir=None)
        for file in args.files:
            try:
                report = manager.validate_workflow(_load_document(Path(file)))
            except OrchestrationError as exc:
                failed += 1
                print(f"{file}: {exc}")
            else:
                levels = len(report.execution_levels)
                print(f"{file}: ok ({report.name}, {report.steps_count} steps, {levels} levels)")
    finally:
        orchestrator.shutdown(wait=True, timeout=10)
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_graph(args: argparse.Namespace, settings: Settings) -> int:
    from codomyrmex_orchestration.core.actions import create_registry
    from codomyrmex_orchestration.core.dag import WorkflowDAG
    from codomyrmex_orchestration.core.models import WorkflowSpec

    path = Path(args.workflow)
    if not path.exists():
        candidate = settings.config_dir / f"{args.workflow}.json"
        path = candidate if candidate.exists() else path
    spec = WorkflowSpec.model_validate(_load_document(path))
    dag = WorkflowDAG.from_spec(spec, create_registry())
    dag.validate()
    print(dag.to_mermaid() if args.format == "mermaid" else dag.to_dot())
    return EXIT_OK


# --------------------------------------------------------------------------- serve


def _add_serve_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve the MCP tools over stdio (default), SSE or streamable HTTP",
        description="Serve the MCP server. Every flag also reads a CODOMYRMEX_* variable "
        "(e.g. --port <- CODOMYRMEX_PORT, --allowed-host <- CODOMYRMEX_ALLOWED_HOSTS); flags win.",
    )
    _common(serve)
    serve.add_argument("--transport", choices=["stdio", "sse", "streamable-http"])
    serve.add_argument("--host", help="bind address (default 127.0.0.1; non-loopback needs a token)")
    serve.add_argument("--port", type=int, help="port (default 8765)")
    serve.add_argument(
        "--allow-shell",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="allow shell.run/python.call (default: allowed on stdio, refused on network transports)",
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

    if settings.transport != "stdio":
        path = "/mcp" if settings.transport == "streamable-http" else "/sse"
        url = f"http://{settings.host}:{settings.port}{path}"
        auth = (
            ' --header "Authorization: Bearer $CODOMYRMEX_AUTH_TOKEN"'
            if settings.auth_token or settings.auth_token_file
            else ""
        )
        transport = "http" if settings.transport == "streamable-http" else "sse"
        print(
            f"codomyrmex-orchestration: serving MCP ({settings.transport}) at {url}\n"
            f"  point a client at it: claude mcp add --transport {transport} orchestration {url}{auth}\n"
            f"  or list its tools: npx @modelcontextprotocol/inspector --cli {url} --transport {transport}"
            " --method tools/list\n"
            f"  health: curl http://{settings.host}:{settings.port}/healthz",
            file=sys.stderr,
        )
    try:
        return serve(settings)
    except OrchestrationError as exc:
        # Configuration refused before serving (e.g. a non-loopback bind without a token).
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


_COMMANDS = {"run": _cmd_run, "validate": _cmd_validate, "graph": _cmd_graph, "serve": _cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        settings = _settings(args)
    except OrchestrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format)
    try:
        return _COMMANDS[args.command](args, settings)
    except OrchestrationError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
