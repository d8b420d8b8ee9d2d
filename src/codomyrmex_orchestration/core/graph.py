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

# Node states, in the order a node goes through them.
_WAITING = 0  # some dependency is not done
_READY = 1  # every dependency is done; not handed out yet
_HANDED = 2  # returned by get_ready(); its owner is running or deciding it
_DONE = 3

_STATE_NAMES = ("waiting", "ready", "handed out", "done")


class _Node(Generic[K]):
    __slots__ = ("dependencies", "dependents", "state", "unfinished")

    def __init__(self, dependencies: tuple[K, ...]) -> None:
        self.dependencies = dependencies
        # None: most nodes of a wide graph have no dependents, so no empty list each. A tuple is shared
        # with the graph this one was copied from (see DependencyGraph.copy): replaced, never appended to.
        self.dependents: list[K] | tuple[K, ...] | None = None
        self.state = _WAITING
        self.unfinished = 0

    def clone(self) -> _Node[K]:
        node: _Node[K] = _Node.__new__(_Node)
        node.dependencies, node.dependents = self.dependencies, self.dependents
        node.state, node.unfinished = self.state, self.unfinished
        return node


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
    """

    __slots__ = ("_frozen", "_handed", "_nodes", "_prepared", "_ready", "_unfinished")

    def __init__(self) -> None:
        self._frozen = False  # a template: copied, never run (see freeze)
        self._nodes: dict[K, _Node[K]] = {}
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
        nodes = self._nodes
        if self._frozen:
            raise InvalidStateError("dependency graph", "add", "a frozen template", "add to a copy")
        if node in nodes:
            raise InvalidInputError("node", f"{node!r} is already in the graph")
        deps: tuple[K, ...] = ()
        if depends_on:  # most nodes of a wide graph (a map's items) have none: skip the dedup
            deps = tuple(dict.fromkeys(depends_on))
            if self._prepared:
                for dep in deps:
                    if dep not in nodes:
                        raise _unknown_dependency(node, dep)
        entry: _Node[K] = _Node(deps)
        nodes[node] = entry
        self._unfinished += 1
        if self._prepared:
            self._link(node, entry)

    def prepare(self) -> None:
        """Check the graph and make the first nodes ready. Call once, before :meth:`get_ready`.

        Raises:
            InvalidInputError: a dependency names no node.
            CycleDetectedError: the graph has a cycle (``.cycle`` is the path, first node repeated).
            InvalidStateError: prepare() was called already.
        """
        if self._prepared:
            raise InvalidStateError("dependency graph", "prepare", "prepared already", "call prepare() once")
        for node, entry in self._nodes.items():
            for dep in entry.dependencies:
                if dep not in self._nodes:
                    raise _unknown_dependency(node, dep)
        cycle = self._find_cycle()
        if cycle:
            raise CycleDetectedError([str(n) for n in cycle])
        self._prepared = True
        for node, entry in self._nodes.items():
            self._link(node, entry)

    def freeze(self) -> None:
        """Make this prepared graph a template that is only copied (a workflow plan's: each run copies it
        instead of building and checking the same graph again). Call before sharing it between threads.

        Raises:
            InvalidStateError: it is not prepared, or some node was handed out already.
        """
        if not self._prepared or self._handed or self._unfinished != len(self._nodes):
            raise InvalidStateError("dependency graph", "freeze", "running", "freeze a prepared graph")
        for entry in self._nodes.values():  # shared by the copies: a node added to one replaces them
            if type(entry.dependents) is list:
                entry.dependents = tuple(entry.dependents)
        self._frozen = True

    def copy(self) -> DependencyGraph[K]:
        """A new graph as this frozen template stands (see :meth:`freeze`); safe from any thread.

        Raises:
            InvalidStateError: the graph is not frozen.
        """
        if not self._frozen:
            raise InvalidStateError("dependency graph", "copy", "not frozen", "call freeze() first")
        graph: DependencyGraph[K] = DependencyGraph()
        graph._nodes = {node: entry.clone() for node, entry in self._nodes.items()}
        graph._ready = list(self._ready)
        graph._prepared = True
        graph._unfinished = self._unfinished
        return graph

    def _link(self, node: K, entry: _Node[K]) -> None:
        """Register ``node`` with its dependencies and make it ready if none is pending."""
        for dep in entry.dependencies:
            parent = self._nodes[dep]
            dependents = parent.dependents
            if dependents is None:
                parent.dependents = [node]
            elif type(dependents) is list:
                dependents.append(node)
            else:
                parent.dependents = [*dependents, node]
            if parent.state != _DONE:
                entry.unfinished += 1
        if entry.unfinished == 0 and entry.state == _WAITING:
            entry.state = _READY
            self._ready.append(node)

    def _find_cycle(self) -> list[K]:
        """One cycle as a path with its first node repeated at the end, or [] (iterative DFS)."""
        colour: dict[K, int] = {}  # 1: on the current path, 2: finished
        for root in self._nodes:
            if root in colour:
                continue
            path: list[K] = [root]
            stack: list[Iterator[K]] = [iter(self._nodes[root].dependencies)]
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
                    stack.append(iter(self._nodes[nxt].dependencies))
        return []

    # ------------------------------------------------------------------ running

    def get_ready(self) -> list[K]:
        """Every node that became ready since the last call, each handed out exactly once.

        Raises:
            InvalidStateError: :meth:`prepare` was not called.
        """
        if not self._prepared or self._frozen:
            state = "a frozen template" if self._frozen else "not prepared"
            raise InvalidStateError("dependency graph", "get_ready", state, "run a copy, prepared")
        ready, self._ready = self._ready, []
        nodes = self._nodes
        for node in ready:
            nodes[node].state = _HANDED
        self._handed += len(ready)
        return ready

    def done(self, *nodes: K, forget: bool = False) -> None:
        """Mark handed-out nodes as settled (whatever their outcome); dependents may become ready.
        ``forget``: then forget them too, as :meth:`discard` does (a map step's items, once done).

        Raises:
            InvalidInputError: a node is unknown.
            InvalidStateError: a node was not handed out by :meth:`get_ready`, or is done already.
        """
        table = self._nodes
        for node in nodes:
            entry = table.get(node)
            if entry is None:
                raise InvalidInputError("node", f"{node!r} is not in the graph")
            if entry.state != _HANDED:
                raise InvalidStateError(
                    "node", str(node), _STATE_NAMES[entry.state], "only a handed-out node can be done"
                )
            entry.state = _DONE
            self._handed -= 1
            self._unfinished -= 1
            for child in entry.dependents or ():
                waiting = table[child]
                waiting.unfinished -= 1
                if waiting.unfinished == 0 and waiting.state == _WAITING:
                    waiting.state = _READY
                    self._ready.append(child)
            if forget:
                del table[node]

    def is_active(self) -> bool:
        """True while some node is not done (ready, handed out, or waiting on a dependency)."""
        return self._unfinished > 0

    # ------------------------------------------------------------------ reading and forgetting

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[K]:
        return iter(self._nodes)

    @property
    def prepared(self) -> bool:
        return self._prepared

    @property
    def handed_out(self) -> int:
        """Nodes returned by get_ready() and not done yet."""
        return self._handed

    def dependencies(self, node: K) -> tuple[K, ...]:
        return self._entry(node).dependencies

    def dependents(self, node: K) -> tuple[K, ...]:
        return tuple(self._entry(node).dependents or ())

    def is_done(self, node: K) -> bool:
        return self._entry(node).state == _DONE

    def state(self, node: K) -> str:
        """``waiting``, ``ready``, ``handed out`` or ``done``."""
        return _STATE_NAMES[self._entry(node).state]

    def discard(self, node: K) -> None:
        """Forget a done node (task retention). A later :meth:`add` naming it fails like any unknown
        node: an owner that knows the node finished leaves it out of ``depends_on``.

        Raises:
            InvalidStateError: the node is not done (its dependents would never become ready).
        """
        entry = self._entry(node)
        if entry.state != _DONE:
            state = _STATE_NAMES[entry.state]
            raise InvalidStateError("node", str(node), state, "only a done node can be discarded")
        del self._nodes[node]

    def _entry(self, node: K) -> _Node[K]:
        try:
            return self._nodes[node]
        except KeyError:
            raise InvalidInputError("node", f"{node!r} is not in the graph") from None


def _unknown_dependency(node: object, dep: object) -> InvalidInputError:
    return InvalidInputError("depends_on", f"{node!r} depends on {dep!r}, which is not in the graph")
