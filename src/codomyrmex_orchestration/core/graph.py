"""The one dependency engine: which nodes may start, for single tasks and workflow steps alike.

:class:`DependencyGraph` follows CPython's ``graphlib.TopologicalSorter`` protocol (``prepare()``,
``get_ready()``, ``done()``) and adds one thing graphlib cannot do: nodes may be added while the graph
runs. A node added after ``prepare()`` may depend only on nodes that already exist, so it can never close
a cycle; map steps use this to add a node per item as its slot opens, and the scheduler to add each
submitted task.

The graph tracks readiness only. What a finished node's *outcome* was (completed, failed, skipped) is
its owner's business: when a node comes out of ``get_ready()`` the owner looks at its dependencies'
outcomes, runs or skips it, and calls ``done()`` once it is settled. That keeps one set of dependency
counters in the process instead of one per caller.

Not thread-safe: the owner guards a graph with its own lock (the scheduler's, a run's).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar

from codomyrmex_orchestration.errors import CycleDetectedError, InvalidInputError, InvalidStateError

__all__ = ["DependencyGraph"]

K = TypeVar("K", bound=Hashable)

# A node's state, one int per node (``DependencyGraph._state``): a waiting node holds how many of its
# dependencies are not done (>= 1); the others hold one of these, in the order a node reaches them.
_READY = -1  # every dependency is done; not handed out yet
_HANDED = -2  # returned by get_ready(); its owner is running or deciding it
_DONE = -3

_STATE_NAMES = {_READY: "ready", _HANDED: "handed out", _DONE: "done"}


class _Links(Generic[K]):
    """A node's edges. A frozen template's are shared by its copies, which take copies of them all
    before changing any (see :meth:`DependencyGraph.copy` and ``_own_links``)."""

    __slots__ = ("dependencies", "dependents")

    def __init__(
        self, dependencies: tuple[K, ...], dependents: list[K] | tuple[K, ...] | None = None
    ) -> None:
        self.dependencies = dependencies
        # None: most nodes of a wide graph have no dependents, so no empty list each.
        self.dependents = dependents


class DependencyGraph(Generic[K]):
    """Nodes, their dependencies, and which of them may start now.

    Typical use::

        graph = DependencyGraph[str]()
        graph.add("build")
        graph.add("test", depends_on=["build"])
        graph.prepare()
        while graph.is_active():
            for node in graph.get_ready():
                ...                      # start it; later, from whoever finishes it:
                graph.done(node)

    A node is two entries: its edges (``_links``) and its state, one int (``_state``). A run's graph is
    a copy of its definition's frozen template that shares the edges and copies only the ints: one dict
    per run, not an object per step.
    """

    __slots__ = ("_frozen", "_handed", "_links", "_prepared", "_ready", "_shared", "_state", "_unfinished")

    def __init__(self) -> None:
        self._frozen = False  # a template: copied, never run (see freeze)
        self._links: dict[K, _Links[K]] = {}
        self._state: dict[K, int] = {}  # every node of _links, in the same order
        self._shared = False  # _links and its entries are a template's (see copy)
        self._ready: list[K] = []
        self._prepared = False
        self._unfinished = 0  # nodes not done
        self._handed = 0  # nodes handed out and not done

    # ------------------------------------------------------------------ building

    def add(self, node: K, depends_on: Iterable[K] = ()) -> None:
        """Add ``node``, which may start once every node in ``depends_on`` is done.

        Before :meth:`prepare` dependencies may name nodes added later; after it, each must exist
        already (a dependency that is done counts as satisfied at once).

        Raises:
            InvalidInputError: ``node`` exists already, or (after ``prepare()``) a dependency is unknown.
        """
        state = self._state
        if self._frozen:
            raise InvalidStateError("dependency graph", "add", "a frozen template", "add to a copy")
        if node in state:
            raise InvalidInputError("node", f"{node!r} is already in the graph")
        deps: tuple[K, ...] = ()
        if depends_on:  # most nodes of a wide graph have none: skip the dedup
            deps = tuple(dict.fromkeys(depends_on))
            if self._prepared:
                for dep in deps:
                    if dep not in state:
                        raise _unknown_dependency(node, dep)
        if self._shared:  # the first node added to a copy: its edges become its own
            self._own_links()
        self._links[node] = _Links(deps)
        state[node] = 0
        self._unfinished += 1
        if self._prepared:
            self._link(node, deps)

    def prepare(self) -> None:
        """Check the graph and make the first nodes ready. Call once, before :meth:`get_ready`.

        Raises:
            InvalidInputError: a dependency names no node.
            CycleDetectedError: the graph has a cycle (``.cycle`` is the path, first node repeated).
            InvalidStateError: prepare() was called already.
        """
        if self._prepared:
            raise InvalidStateError("dependency graph", "prepare", "prepared already", "call prepare() once")
        for node, entry in self._links.items():
            for dep in entry.dependencies:
                if dep not in self._links:
                    raise _unknown_dependency(node, dep)
        cycle = self._find_cycle()
        if cycle:
            raise CycleDetectedError([str(n) for n in cycle])
        self._prepared = True
        for node, entry in self._links.items():
            self._link(node, entry.dependencies)

    def freeze(self) -> None:
        """Make this prepared graph a template that is only copied (a workflow plan's: each run copies it
        instead of building and checking the same graph again). Call before sharing it between threads.

        Raises:
            InvalidStateError: it is not prepared, or some node was handed out already.
        """
        if not self._prepared or self._handed or self._unfinished != len(self._state):
            raise InvalidStateError("dependency graph", "freeze", "running", "freeze a prepared graph")
        for entry in self._links.values():  # shared by the copies, which never change them
            if type(entry.dependents) is list:
                entry.dependents = tuple(entry.dependents)
        self._frozen = True

    def copy(self) -> DependencyGraph[K]:
        """A new graph as this frozen template stands (see :meth:`freeze`); safe from any thread. It
        shares the template's edges until a node is added to it.

        Raises:
            InvalidStateError: the graph is not frozen.
        """
        if not self._frozen:
            raise InvalidStateError("dependency graph", "copy", "not frozen", "call freeze() first")
        graph: DependencyGraph[K] = DependencyGraph()
        graph._links = self._links
        graph._shared = True
        graph._state = self._state.copy()
        graph._ready = list(self._ready)
        graph._prepared = True
        graph._unfinished = self._unfinished
        return graph

    def _link(self, node: K, dependencies: tuple[K, ...]) -> None:
        """Register ``node`` with its dependencies and make it ready if none is pending (edges of its
        own graph only: see :meth:`add`)."""
        links, state = self._links, self._state
        pending = 0
        for dep in dependencies:
            parent = links[dep]
            dependents = parent.dependents
            if dependents is None:
                parent.dependents = [node]
            elif type(dependents) is list:
                dependents.append(node)
            else:
                parent.dependents = [*dependents, node]
            if state[dep] != _DONE:
                pending += 1
        if pending:
            state[node] = pending
        else:  # a node is linked once, right after it was added (its state still 0)
            state[node] = _READY
            self._ready.append(node)

    def _find_cycle(self) -> list[K]:
        """One cycle as a path with its first node repeated at the end, or [] (iterative DFS)."""
        links = self._links
        colour: dict[K, int] = {}  # 1: on the current path, 2: finished
        for root in links:
            if root in colour:
                continue
            path: list[K] = [root]
            stack: list[Iterator[K]] = [iter(links[root].dependencies)]
            colour[root] = 1
            while stack:
                nxt = next(stack[-1], None)
                if nxt is None:
                    colour[path.pop()] = 2
                    stack.pop()
                    continue
                seen = colour.get(nxt)
                if seen == 1:
                    start = path.index(nxt)
                    # path follows dependencies; report it in the direction work flows
                    return [*reversed(path[start:]), path[-1]]
                if seen is None:
                    colour[nxt] = 1
                    path.append(nxt)
                    stack.append(iter(links[nxt].dependencies))
        return []

    # ------------------------------------------------------------------ running

    def get_ready(self) -> list[K]:
        """Every node that became ready since the last call, each handed out exactly once.

        Raises:
            InvalidStateError: :meth:`prepare` was not called.
        """
        if not self._prepared or self._frozen:
            why = "a frozen template" if self._frozen else "not prepared"
            raise InvalidStateError("dependency graph", "get_ready", why, "run a copy, prepared")
        ready, self._ready = self._ready, []
        state = self._state
        for node in ready:
            state[node] = _HANDED
        self._handed += len(ready)
        return ready

    def done(self, *nodes: K, forget: bool = False) -> None:
        """Mark handed-out nodes as settled (whatever their outcome); dependents may become ready.
        ``forget``: then forget them too, as :meth:`discard` does.

        Raises:
            InvalidInputError: a node is unknown.
            InvalidStateError: a node was not handed out by :meth:`get_ready`, or is done already.
        """
        state, links = self._state, self._links
        for node in nodes:
            now = state.get(node)
            if now != _HANDED:
                if now is None:
                    raise InvalidInputError("node", f"{node!r} is not in the graph")
                raise InvalidStateError(
                    "node", str(node), _state_name(now), "only a handed-out node can be done"
                )
            state[node] = _DONE
            self._handed -= 1
            self._unfinished -= 1
            for child in links[node].dependents or ():
                left = state[child] - 1  # a dependent still waits: its count is >= 1
                if left:
                    state[child] = left
                else:
                    state[child] = _READY
                    self._ready.append(child)
            if forget:
                self._forget(node)

    def is_active(self) -> bool:
        """True while some node is not done (ready, handed out, or waiting on a dependency)."""
        return self._unfinished > 0

    # ------------------------------------------------------------------ reading and forgetting

    def __contains__(self, node: object) -> bool:
        return node in self._state

    def __len__(self) -> int:
        return len(self._state)

    def __iter__(self) -> Iterator[K]:
        return iter(self._state)

    @property
    def prepared(self) -> bool:
        return self._prepared

    @property
    def handed_out(self) -> int:
        """Nodes returned by get_ready() and not done yet."""
        return self._handed

    def dependencies(self, node: K) -> tuple[K, ...]:
        self._check(node)
        return self._links[node].dependencies

    def dependents(self, node: K) -> tuple[K, ...]:
        self._check(node)
        return tuple(self._links[node].dependents or ())

    def is_done(self, node: K) -> bool:
        return self._check(node) == _DONE

    def state(self, node: K) -> str:
        """``waiting``, ``ready``, ``handed out`` or ``done``."""
        return _state_name(self._check(node))

    def discard(self, node: K) -> None:
        """Forget a done node (task retention). A later :meth:`add` naming it fails like any unknown
        node: an owner that knows the node finished leaves it out of ``depends_on``.

        Raises:
            InvalidStateError: the node is not done (its dependents would never become ready).
        """
        now = self._check(node)
        if now != _DONE:
            raise InvalidStateError("node", str(node), _state_name(now), "only a done node can be discarded")
        self._forget(node)

    def _forget(self, node: K) -> None:
        if self._shared:  # a copy forgets a node of its own only: its template's edges stay whole
            self._own_links()
        del self._state[node]
        del self._links[node]

    def _own_links(self) -> None:
        """Take this copy's edges as its own (the dict and every entry), before its first change: an
        added node appends to its dependencies' entries, which the template and other copies share."""
        self._links = {n: _Links(e.dependencies, e.dependents) for n, e in self._links.items()}
        self._shared = False

    def _check(self, node: K) -> int:
        """The node's state; InvalidInputError if it is not in the graph."""
        try:
            return self._state[node]
        except KeyError:
            raise InvalidInputError("node", f"{node!r} is not in the graph") from None


def _state_name(state: int) -> str:
    return "waiting" if state >= 0 else _STATE_NAMES[state]


def _unknown_dependency(node: object, dep: object) -> InvalidInputError:
    return InvalidInputError("depends_on", f"{node!r} depends on {dep!r}, which is not in the graph")
