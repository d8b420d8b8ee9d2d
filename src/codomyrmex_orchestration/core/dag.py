"""WorkflowDAG: a workflow's steps as a networkx graph — validation, cycles, levels, Mermaid and DOT.

Edges run from a step to the steps that depend on it. Besides the declared ``dependencies``, a step
that references another step's output or status (in its parameters or ``run_if``) gets that step as
an inferred upstream. Nothing here recurses over the graph, so very long chains are fine.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from itertools import islice, pairwise
from typing import TYPE_CHECKING, Any

import networkx as nx
from pydantic import ValidationError

from codomyrmex_orchestration._suggest import closest, did_you_mean
from codomyrmex_orchestration.core._workflow_map import FOR_EACH_LABEL, map_problems
from codomyrmex_orchestration.core.models import StepSpec, WorkflowSpec
from codomyrmex_orchestration.core.templating import ITEM_ROOTS, Reference, parse_condition, scan_references
from codomyrmex_orchestration.errors import (
    ActionRefusedError,
    CycleDetectedError,
    DAGValidationError,
    InvalidInputError,
    TemplateError,
    UnknownActionError,
)

if TYPE_CHECKING:
    from codomyrmex_orchestration.core.actions import ActionRegistry

__all__ = ["ENDLESS", "MAX_REPORTED_PROBLEMS", "WorkflowDAG", "sub_workflow_of", "unknown_parameters"]

#: problems() lists at most this many problems, then one line saying how many more there are.
MAX_REPORTED_PROBLEMS = 200
#: A cycle's problem names at most this many of its template references.
_SHOWN_REFERENCES = 5


#: Why a workflow that runs itself with nothing to stop it is refused (said after the step that does).
ENDLESS = (
    "every run would start sub-runs of it down to the nesting limit (CODOMYRMEX_MAX_SUBWORKFLOW_DEPTH) "
    "and fail there; run another workflow, or give the step a run_if that ends the recursion"
)


def sub_workflow_of(step: StepSpec) -> str | None:
    """The workflow a ``workflow.run`` step always runs: its literal ``workflow`` parameter, when the step
    has no ``run_if`` that could stop it (None: another action, a template, or a guarded step)."""
    if (step.module, step.action) != ("workflow", "run") or step.run_if is not None:
        return None
    target = step.parameters.get("workflow")
    return target if isinstance(target, str) and "{{" not in target else None


def _names(names: Collection[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in islice(names, limit))
    if len(names) > limit:
        shown += f", ... ({len(names)} in all)"
    return shown or "(none)"


def _action_hint(module: str, action: str, known: Sequence[str]) -> str:
    """The closest action: within the module when it exists (``core.ecko`` -> ``core.echo``, never
    ``core.explode`` -> ``core.echo`` for sharing ``core.``), else among all qualified names."""
    in_module = [name.split(".", 1)[1] for name in known if name.startswith(module + ".")]
    if not in_module:
        return did_you_mean(f"{module}.{action}", known)
    match = closest(action, in_module)
    return f" (did you mean '{module}.{match}'?)" if match is not None else ""


def unknown_parameters(action: str, unknown: Sequence[str], accepted: Mapping[str, str]) -> str:
    """What a call of ``action`` (``module.action``) is told about the parameter names ``unknown`` it
    does not declare: each with a suggestion, then the names it accepts. For workflow steps and single
    tasks alike."""
    what = ", ".join(f"{u!r}{did_you_mean(u, accepted)}" for u in unknown)
    return (
        f"{action} does not accept parameter{'s' if len(unknown) > 1 else ''} {what}; "
        f"accepted parameters: {', '.join(sorted(accepted))}"
    )


def _who(names: Sequence[str]) -> str:
    return f"step {names[0]!r}" if len(names) == 1 else f"steps {_names(names, 5)}"


class WorkflowDAG:
    """The dependency graph of a workflow's steps.

    Building never raises for what the steps say: every problem is collected and reported by
    :meth:`problems` and :meth:`validate`, a malformed step too (named by its position, ``steps.3``).
    Edges of valid dependencies are kept even when other parts are invalid.

    Args:
        steps: the workflow's steps, in declaration order: ``StepSpec`` objects or mappings of their
            fields.
        registry: when given, every step's ``module.action`` must be registered and allowed.
        workflow_name: used in error messages, and to find ``workflow.run`` steps running it.
        unparsed: names of steps that did not parse (reported by the parser): using one is no problem.

    Raises:
        InvalidInputError: ``steps`` is not a sequence (``None``, a string, a mapping...).

    Attributes:
        steps: step name -> spec (the first one, if a name is duplicated).
        inferred_dependencies: step -> upstream steps found only through template references
            (parameters or ``run_if``), in order of first appearance.
    """

    def __init__(
        self,
        steps: Sequence[StepSpec | Mapping[str, Any]],
        *,
        registry: ActionRegistry | None = None,
        workflow_name: str | None = None,
        unparsed: Collection[str] = (),
    ) -> None:
        self.workflow_name = workflow_name
        self.steps: dict[str, StepSpec] = {}
        self.inferred_dependencies: dict[str, list[str]] = {}
        self._graph: nx.DiGraph | None = None
        self._problems: list[str] = []
        self._cycles: list[list[str]] | None = None
        self._levels: list[list[str]] | None = None

        positions: dict[str, int] = {}
        for position, item in enumerate(_sequence(steps), start=1):
            step = item if isinstance(item, StepSpec) else _coerce(position, item, self._problems)
            if step is None:
                continue
            if step.name in self.steps:
                self._problems.append(
                    f"duplicate step name {step.name!r} (steps #{positions[step.name]} and #{position}); "
                    "step names must be unique"
                )
                continue
            self.steps[step.name] = step
            positions[step.name] = position
        self._unparsed = frozenset(unparsed) - self.steps.keys()
        if not self.steps and not self._problems and not unparsed:  # (malformed steps are named already)
            self._problems.append("a workflow needs at least one step")
        # Plain adjacency lists carry building, validation and levels (the hot path: networkx's
        # add_edges_from alone takes over a second for 300,000 edges); the networkx graph is built on
        # first use by the queries that need it (ancestors, descendants, cycle paths, `graph`).
        # No upstream lists: the in-degree is all Kahn needs, and dependencies_of() derives a step's
        # upstreams from its spec. 100,000 lists fewer to outlive the build is what keeps a
        # 100,000-step validation clear of a full GC pass (a quarter of its time, profiled).
        self._succ: dict[str, list[str]] = {name: [] for name in self.steps}
        self._indegree: dict[str, int] = dict.fromkeys(self.steps, 0)

        known = self.steps.keys()
        succ, indegree = self._succ, self._indegree
        inferred_edges: list[tuple[str, str]] = []
        for name, step in self.steps.items():
            declared: set[str] = set()
            for dep in step.dependencies:
                if dep == name:
                    self._problems.append(f"step {name!r} depends on itself")
                elif dep in self._unparsed:
                    continue
                elif dep not in known:
                    self._problems.append(
                        f"step {name!r} depends on unknown step {dep!r}{did_you_mean(dep, known)}; "
                        f"known steps: {_names(known)}"
                    )
                elif dep not in declared:
                    declared.add(dep)
                    succ[dep].append(name)
            indegree[name] = len(declared)
            if step.for_each is not None or step.max_parallel is not None:
                self._problems.extend(map_problems(name, step))
            if not step.parameters and step.run_if is None and step.for_each is None:
                continue  # nothing to scan for references (most steps of big generated workflows)
            inferred = self._template_upstreams(name, step, known)
            extra = [up for up in inferred if up not in declared]
            if extra:
                self.inferred_dependencies[name] = extra
                inferred_edges.extend((up, name) for up in extra)
        # Inferred edges go after every declared one, as they always have (edges() lists them so).
        for up, down in inferred_edges:
            succ[up].append(down)
            indegree[down] += 1
        self._inferred_edges = set(inferred_edges)

        if registry is not None:
            self._check_actions(registry)
        self._problems.extend(_self_runs(self.steps, workflow_name) if workflow_name is not None else ())

    @property
    def graph(self) -> nx.DiGraph:
        """The steps as a ``networkx.DiGraph`` (upstream -> downstream, declared and inferred edges)."""
        if self._graph is None:
            graph = nx.DiGraph()
            graph.add_nodes_from(self.steps)
            graph.add_edges_from((up, down) for up, downs in self._succ.items() for down in downs)
            self._graph = graph
        return self._graph

    def edges(self) -> list[tuple[str, str, bool]]:
        """Every edge as ``(upstream, downstream, inferred)``, in step order."""
        inferred = self._inferred_edges
        return [(up, down, (up, down) in inferred) for up, downs in self._succ.items() for down in downs]

    @classmethod
    def from_spec(cls, spec: WorkflowSpec, registry: ActionRegistry | None = None) -> WorkflowDAG:
        """The DAG of ``spec``'s steps."""
        return cls(spec.steps, registry=registry, workflow_name=spec.name)

    # ------------------------------------------------------------------ building

    def _template_upstreams(self, name: str, step: StepSpec, known: AbstractSet[str]) -> list[str]:
        """Steps referenced by ``step``'s parameters and run_if; records bad references as problems."""
        # The names of steps that did not parse still read as step references (``{{a.output}}``).
        known = dict.fromkeys([*known, *sorted(self._unparsed)]).keys() if self._unparsed else known
        refs, errors = scan_references(step.parameters, known)
        self._problems.extend(f"step {name!r} parameters: {exc.reason}" for exc in errors)
        if step.for_each is not None:
            found, errors = scan_references(step.for_each, known)
            self._problems.extend(f"step {name!r} for_each: {exc.reason}" for exc in errors)
            if any(r.root in ITEM_ROOTS for r in found):
                self._problems.append(f"step {name!r} for_each: the list cannot depend on its own item")
            self._refuse_secrets(name, "for_each", found, "its items decide what runs")
            refs.extend(found)
        if step.run_if is not None:
            try:
                found = parse_condition(step.run_if, known).references
            except TemplateError as exc:
                self._problems.append(f"step {name!r} run_if: {exc.reason}")
            else:
                self._refuse_secrets(name, "run_if", found, "whether the step runs")
                refs.extend(found)
        upstreams: list[str] = []
        for ref in refs:
            if ref.root in ITEM_ROOTS and step.for_each is None:
                self._problems.append(
                    f"step {name!r} uses '{{{{{ref.raw}}}}}', which exists only in a step with for_each"
                )
            if ref.step is None or ref.step in self._unparsed:
                continue
            if ref.step not in known:
                self._problems.append(
                    f"step {name!r} references unknown step {ref.step!r} in '{{{{{ref.raw}}}}}'"
                    f"{did_you_mean(ref.step, known)}; known steps: {_names(known)}"
                )
            elif ref.step == name:
                self._problems.append(
                    f"step {name!r} references its own {ref.attr} in '{{{{{ref.raw}}}}}'; "
                    "a step can only use results of other steps"
                )
            elif ref.step not in upstreams:
                upstreams.append(ref.step)
        return upstreams

    def _refuse_secrets(self, name: str, where: str, refs: list[Reference], decides: str) -> None:
        """Secrets are for parameters alone: what a condition or a list decides is visible in the run,
        so reading a secret there would disclose it (compared with one guessed prefix after another)."""
        for ref in refs:
            if ref.root == "secrets":
                self._problems.append(
                    f"step {name!r} {where}: cannot read a secret ('{{{{{ref.raw}}}}}'): {decides} is "
                    "visible in the run, so it would disclose the value; use secrets only in parameters"
                )

    def _check_actions(self, registry: ActionRegistry) -> None:
        # One problem per distinct module.action (naming its steps), not one per step: a workflow of
        # 10,000 steps with one misspelt action should not produce 10,000 copies of the catalogue.
        users: dict[tuple[str, str], list[str]] = {}
        for name, step in self.steps.items():
            users.setdefault((step.module, step.action), []).append(name)
        for (module, action), names in users.items():
            try:
                definition = registry.get(module, action)
            except UnknownActionError as exc:
                qualified = f"{module}.{action}"
                # The suggestion goes right after the misspelt name, before the catalogue of actions.
                hint = _action_hint(module, action, registry.known())
                message = str(exc).replace(qualified, qualified + hint, 1) if hint else str(exc)
                self._problems.append(f"{_who(names)}: {message}")
                continue
            except ActionRefusedError as exc:
                self._problems.append(f"{_who(names)}: {exc}")
                continue
            misspelt = self._check_parameters(f"{module}.{action}", names, definition.parameters)
            if definition.check is not None:
                for name in names:
                    if name in misspelt:  # its problem names the fix already; the rest may follow from it
                        continue
                    found = definition.check(self.steps[name].parameters)
                    self._problems.extend(f"step {name!r}: {problem}" for problem in found)

    def _check_parameters(self, action: str, names: list[str], accepted: Mapping[str, str]) -> set[str]:
        """Parameter names the action does not declare, caught before anything runs. An action that
        declares none, or ``"*"`` (any), is not checked. One problem per distinct set of unknown names.
        Returns the steps that have one."""
        if not accepted or "*" in accepted:
            return set()
        by_unknown: dict[tuple[str, ...], list[str]] = {}
        for name in names:
            unknown = tuple(sorted(set(self.steps[name].parameters) - accepted.keys()))
            if unknown:
                by_unknown.setdefault(unknown, []).append(name)
        for unknown, users in by_unknown.items():
            self._problems.append(f"{_who(users)}: {unknown_parameters(action, unknown, accepted)}")
        return {name for users in by_unknown.values() for name in users}

    # ------------------------------------------------------------------ validation

    def _kahn(self) -> tuple[list[list[str]], set[str]]:
        """Kahn levels over the graph, and the nodes left over (those on or behind a cycle)."""
        indegree = dict(self._indegree)
        level = sorted(node for node, deg in indegree.items() if deg == 0)
        levels: list[list[str]] = []
        succ = self._succ
        while level:
            levels.append(level)
            following: list[str] = []
            for node in level:
                for child in succ[node]:
                    indegree[child] -= 1
                    if indegree[child] == 0:
                        following.append(child)
            level = sorted(following)
        placed = sum(len(lv) for lv in levels)
        leftover = {node for node, deg in indegree.items() if deg > 0} if placed < len(indegree) else set()
        return levels, leftover

    def _analyse(self) -> None:
        if self._cycles is not None:
            return
        levels, leftover = self._kahn()
        cycles: list[list[str]] = []
        if leftover:
            order = {name: i for i, name in enumerate(self.steps)}
            # Every cycle lies inside one strongly connected component: report one cycle per component,
            # through its first declared step. (On the adjacency lists: building a networkx graph of the
            # leftover and finding a cycle on a subgraph view of it took 25 s for a 100,000-step ring.)
            firsts = sorted(
                (min(component, key=order.__getitem__), component)
                for component in _strong_components(leftover, self._succ)
            )
            cycles = [_shortest_cycle(first, component, self._succ) for first, component in firsts]
        self._cycles = cycles
        self._levels = levels if not cycles else None

    def _cycle_problem(self, cycle: list[str]) -> str:
        via = [f"{b!r} references {a!r}" for a, b in pairwise(cycle) if (a, b) in self._inferred_edges]
        text = f"dependency cycle: {CycleDetectedError.path_text(cycle)} (each step must run before the next)"
        if via:
            more = f", ... ({len(via)} in all)" if len(via) > _SHOWN_REFERENCES else ""
            text += f"; inferred from templates: {', '.join(via[:_SHOWN_REFERENCES])}{more}"
        return text

    def problems(self) -> list[str]:
        """Every problem found (empty when the workflow is valid). Never raises.

        Lists at most :data:`MAX_REPORTED_PROBLEMS` problems; a last line then says how many more
        there are.
        """
        self._analyse()
        assert self._cycles is not None
        found = [self._cycle_problem(c) for c in self._cycles] + self._problems
        if len(found) > MAX_REPORTED_PROBLEMS:
            extra = len(found) - MAX_REPORTED_PROBLEMS
            found = [*found[:MAX_REPORTED_PROBLEMS], f"... and {extra} more problems"]
        return found

    def validate(self) -> None:
        """Raise if the workflow is invalid.

        Raises:
            CycleDetectedError: the graph has a cycle (``.cycle`` is the first one found, first step
                repeated at the end); its ``.problems`` lists every other problem too.
            DAGValidationError: any other problem; ``.problems`` lists them all.
        """
        found = self.problems()
        if not found:
            return
        assert self._cycles is not None
        if self._cycles:
            raise CycleDetectedError(self._cycles[0], problems=found, workflow=self.workflow_name)
        raise DAGValidationError(found, workflow=self.workflow_name)

    @property
    def cycles(self) -> list[list[str]]:
        """One cycle per strongly connected component that has one (each closed: first == last)."""
        self._analyse()
        assert self._cycles is not None
        return [list(c) for c in self._cycles]

    # ------------------------------------------------------------------ queries

    def _require(self, name: str) -> None:
        if name not in self.steps:
            raise InvalidInputError("step", f"unknown step {name!r}; known steps: {_names(self.steps)}")

    def dependencies_of(self, name: str) -> set[str]:
        """Direct upstreams of ``name``: declared (and known) plus inferred from templates."""
        self._require(name)
        declared = {dep for dep in self.steps[name].dependencies if dep != name and dep in self.steps}
        return declared | set(self.inferred_dependencies.get(name, ()))

    def dependents_of(self, name: str) -> set[str]:
        """Direct downstreams of ``name``."""
        self._require(name)
        return set(self._succ[name])

    def execution_levels(self) -> list[list[str]]:
        """Kahn levels: every step of a level depends only on steps of earlier levels.

        Names are sorted within a level. Unknown dependencies are ignored here (see :meth:`validate`).

        Raises:
            CycleDetectedError: the graph has a cycle, so no order exists.
        """
        self._analyse()
        if self._levels is None:
            self.validate()  # raises CycleDetectedError
        assert self._levels is not None
        return [list(level) for level in self._levels]

    def topological_order(self) -> list[str]:
        """Every step after all of its upstreams (level by level). Raises CycleDetectedError."""
        return [name for level in self.execution_levels() for name in level]

    def upstream(self, name: str) -> set[str]:
        """All ancestors of ``name`` (steps that must finish before it)."""
        self._require(name)
        return set(nx.ancestors(self.graph, name))

    def downstream(self, name: str) -> set[str]:
        """All descendants of ``name`` (steps that wait for it, directly or not)."""
        self._require(name)
        return set(nx.descendants(self.graph, name))

    # ------------------------------------------------------------------ rendering

    def _ids(self) -> dict[str, str]:
        return {name: f"n{i}" for i, name in enumerate(self.steps)}

    def _label(self, name: str, item_counts: Mapping[str, int] | None) -> list[str]:
        """A node's lines: the step name, its ``module.action``, and for a map step its item count
        (known in a run) or "for each" (a definition)."""
        step = self.steps[name]
        lines = [name, f"{step.module}.{step.action}"]
        if step.for_each is not None:
            count = item_counts.get(name) if item_counts is not None else None
            lines.append(FOR_EACH_LABEL if count is None else f"{FOR_EACH_LABEL}: {count} items")
        return lines

    def to_mermaid(self, item_counts: Mapping[str, int] | None = None) -> str:
        """A Mermaid flowchart (``graph TD``): one line per step and per edge.

        Node ids are ``n0``, ``n1``, ... so any step name is safe; labels show the step name and its
        ``module.action``, and a map step is one node with its item count. Edges inferred from
        templates are dotted.

        Args:
            item_counts: map step -> its number of items, when known (a run's graph).
        """
        ids = self._ids()
        lines = ["graph TD"]
        for name in self.steps:
            label = "<br/>".join(_mermaid_text(line) for line in self._label(name, item_counts))
            lines.append(f'    {ids[name]}["{label}"]')
        for up, down, inferred in self.edges():
            arrow = "-.->" if inferred else "-->"
            lines.append(f"    {ids[up]} {arrow} {ids[down]}")
        return "\n".join(lines) + "\n"

    def to_dot(self, item_counts: Mapping[str, int] | None = None) -> str:
        """A Graphviz DOT digraph; edges inferred from templates are dashed; a map step is one node
        with its item count (``item_counts``, as for :meth:`to_mermaid`)."""
        title = _dot_quote(self.workflow_name or "workflow")
        lines = [f"digraph {title} {{", "    rankdir=TB;", "    node [shape=box];"]
        for name in self.steps:
            label = _dot_quote("\n".join(self._label(name, item_counts)))
            lines.append(f"    {_dot_quote(name)} [label={label}];")
        for up, down, inferred in self.edges():
            style = " [style=dashed]" if inferred else ""
            lines.append(f"    {_dot_quote(up)} -> {_dot_quote(down)}{style};")
        lines.append("}")
        return "\n".join(lines) + "\n"


def _self_runs(steps: Mapping[str, StepSpec], workflow: str) -> list[str]:
    """The steps that always run ``workflow``, their own, again."""
    return [
        f"step {name!r} runs workflow {workflow!r}, itself, with no run_if to stop it: {ENDLESS}"
        for name, step in steps.items()
        if sub_workflow_of(step) == workflow
    ]


def _strong_components(nodes: AbstractSet[str], succ: Mapping[str, list[str]]) -> list[set[str]]:
    """The strongly connected components of more than one node among ``nodes`` (edges from ``succ``):
    Tarjan's algorithm, iterative so a long cycle needs no deep recursion; linear in nodes and edges.

    The walk keeps plain lists of names and positions (no tuple or iterator per node): allocating two
    tracked objects per step made the garbage collector's passes a third of a 100,000-step ring's time.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        path, positions = [root], [0]  # the walk: nodes, and how many of each one's children are seen
        while path:
            node = path[-1]
            children = succ[node]
            position = positions[-1]
            while position < len(children):
                child = children[position]
                position += 1
                if child not in nodes:
                    continue
                if child not in index:
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                path.pop()
                positions.pop()
                if path:
                    low[path[-1]] = min(low[path[-1]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
                continue
            positions[-1] = position  # descend into child; this node resumes after it
            index[child] = low[child] = len(index)
            stack.append(child)
            on_stack.add(child)
            path.append(child)
            positions.append(0)
    return found


def _shortest_cycle(start: str, component: AbstractSet[str], succ: Mapping[str, list[str]]) -> list[str]:
    """The shortest cycle through ``start`` inside its strongly connected ``component``, closed (first
    == last): a breadth-first search, linear in the component."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in succ[node]:
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if child in component and child not in parent:
                    parent[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start!r} is on no cycle of its component")  # every member of one is


def _coerce(position: int, item: object, problems: list[str]) -> StepSpec | None:
    """A step given as a mapping, validated; anything malformed is added to ``problems``, named by its
    place (``steps.3``)."""
    where = f"steps.{position - 1}"
    if not isinstance(item, Mapping):
        shown = repr(item) if len(repr(item)) <= 60 else repr(item)[:57] + "..."
        problems.append(
            f"{where}: must be a step (a StepSpec, or an object with name, module and action), "
            f"got {type(item).__name__} {shown}"
        )
        return None
    try:
        return StepSpec.model_validate(item)
    except ValidationError as exc:
        problems.append(str(InvalidInputError.from_validation(exc, where=where)))
        return None


def _sequence(steps: object) -> Sequence[object]:
    if isinstance(steps, str | bytes | Mapping) or not isinstance(steps, Sequence):
        raise InvalidInputError(
            "steps",
            f"must be a list of steps (StepSpec objects or mappings), got {type(steps).__name__}",
        )
    return steps


def _mermaid_text(text: str) -> str:
    """Text safe inside a double-quoted Mermaid label (entity codes for the characters that break it)."""
    text = " ".join(text.splitlines())
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, code)
    return text


def _dot_quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
