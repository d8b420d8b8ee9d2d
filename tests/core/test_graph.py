"""DependencyGraph: graphlib's protocol, outcomes left to the owner, and nodes added while it runs."""

from __future__ import annotations

import graphlib
import itertools
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from codomyrmex_orchestration.core.graph import DependencyGraph
from codomyrmex_orchestration.errors import CycleDetectedError, InvalidInputError, InvalidStateError


def drain(graph: DependencyGraph[str]) -> list[str]:
    """Run the graph to the end one wave at a time; the order nodes were handed out."""
    order: list[str] = []
    while graph.is_active():
        ready = graph.get_ready()
        assert ready, "an active graph with nothing ready and nothing handed out is stuck"
        order.extend(ready)
        graph.done(*ready)
    return order


def test_a_diamond_comes_out_in_dependency_waves() -> None:
    graph = DependencyGraph[str]()
    graph.add("d", ["b", "c"])  # forward references are fine before prepare()
    graph.add("b", ["a"])
    graph.add("c", ["a"])
    graph.add("a")
    graph.prepare()
    assert graph.get_ready() == ["a"]
    graph.done("a")
    assert sorted(graph.get_ready()) == ["b", "c"]
    graph.done("b")
    assert graph.get_ready() == []
    graph.done("c")
    assert graph.get_ready() == ["d"]
    assert graph.is_active()
    graph.done("d")
    assert not graph.is_active()


def test_a_cycle_is_reported_with_its_path_in_the_direction_work_flows() -> None:
    graph = DependencyGraph[str]()
    graph.add("a", ["c"])
    graph.add("b", ["a"])
    graph.add("c", ["b"])
    graph.add("x")
    with pytest.raises(CycleDetectedError) as info:
        graph.prepare()
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["a", "b", "c"]
    for before, after in itertools.pairwise(cycle):
        assert before in graph.dependencies(after), f"{after} does not depend on {before}"


def test_an_unknown_dependency_names_the_node_and_the_dependency() -> None:
    graph = DependencyGraph[str]()
    graph.add("a", ["ghost"])
    with pytest.raises(InvalidInputError, match="'a' depends on 'ghost'"):
        graph.prepare()


def test_nodes_added_while_the_graph_runs_are_scheduled_in_dependency_order_with_the_others() -> None:
    graph = DependencyGraph[str]()
    graph.add("list")
    graph.add("report", ["list"])
    graph.prepare()
    assert graph.get_ready() == ["list"]
    # "list" is running: add three items that depend on it, and a join after them, as a map step will
    for i in range(3):
        graph.add(f"item{i}", ["list"])
    graph.add("join", ["item0", "item1", "item2"])
    assert graph.get_ready() == []  # nothing may start before "list" is done
    graph.done("list")
    assert sorted(graph.get_ready()) == ["item0", "item1", "item2", "report"]
    graph.done("item0", "item1", "report")
    assert graph.get_ready() == []
    graph.done("item2")
    assert graph.get_ready() == ["join"]
    # a node added after its dependency is done is ready at once
    graph.add("late", ["item0"])
    assert graph.get_ready() == ["late"]
    graph.done("join", "late")
    assert not graph.is_active()


def test_after_prepare_a_new_node_may_only_depend_on_existing_nodes() -> None:
    graph = DependencyGraph[str]()
    graph.add("a")
    graph.prepare()
    with pytest.raises(InvalidInputError, match="'b' depends on 'later'"):
        graph.add("b", ["later"])
    assert "b" not in graph
    with pytest.raises(InvalidInputError, match="already in the graph"):
        graph.add("a")


def test_done_refuses_a_node_that_was_not_handed_out() -> None:
    graph = DependencyGraph[str]()
    graph.add("a")
    graph.add("b", ["a"])
    graph.prepare()
    with pytest.raises(InvalidStateError, match="waiting"):
        graph.done("b")
    with pytest.raises(InvalidStateError, match="ready"):
        graph.done("a")  # ready, but not handed out yet
    graph.get_ready()
    graph.done("a")
    with pytest.raises(InvalidStateError, match="done"):
        graph.done("a")


def test_get_ready_before_prepare_is_an_error() -> None:
    graph = DependencyGraph[str]()
    graph.add("a")
    with pytest.raises(InvalidStateError, match="prepare"):
        graph.get_ready()


def test_a_discarded_node_is_forgotten_and_only_done_nodes_can_be() -> None:
    graph = DependencyGraph[str]()
    graph.add("a")
    graph.add("b", ["a"])
    graph.prepare()
    with pytest.raises(InvalidStateError):
        graph.discard("a")
    graph.done(*graph.get_ready())
    graph.discard("a")
    assert "a" not in graph and len(graph) == 1
    with pytest.raises(InvalidInputError):
        graph.add("c", ["a"])
    assert graph.get_ready() == ["b"]


def test_done_with_forget_releases_the_dependents_and_forgets_the_node_while_the_graph_runs() -> None:
    graph = DependencyGraph[str]()
    graph.add("step")
    graph.prepare()
    assert graph.get_ready() == ["step"]
    graph.add("step[0]")
    graph.add("after", ["step[0]"])
    assert graph.get_ready() == ["step[0]"]
    graph.done("step[0]", forget=True)
    assert "step[0]" not in graph and len(graph) == 2
    assert graph.get_ready() == ["after"]
    with pytest.raises(InvalidInputError):
        graph.done("step[0]")
    graph.done("after", "step")
    assert not graph.is_active()


@pytest.mark.parametrize("seed", range(5))
def test_random_graphs_come_out_in_an_order_graphlib_accepts(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(200)]
    deps = {name: rng.sample(names[:i], k=min(i, rng.randint(0, 4))) for i, name in enumerate(names)}
    graph = DependencyGraph[str]()
    for name in reversed(names):
        graph.add(name, deps[name])
    graph.prepare()
    position = {name: i for i, name in enumerate(drain(graph))}
    assert len(position) == len(names)
    for name, before in deps.items():
        for dep in before:
            assert position[dep] < position[name]
    graphlib.TopologicalSorter(deps).prepare()  # the same graph is acyclic for graphlib too


def test_a_graph_guarded_by_its_owners_lock_runs_every_node_once_across_threads() -> None:
    """The intended use: worker threads take the owner's lock around done()/get_ready()."""
    graph = DependencyGraph[int]()
    width, depth = 20, 20
    for level in range(depth):
        for i in range(width):
            node = level * width + i
            graph.add(node, [(level - 1) * width + j for j in range(width)] if level else [])
    graph.prepare()
    lock = threading.Lock()
    ran: list[int] = []
    finished = threading.Event()

    def run(node: int, pool: ThreadPoolExecutor) -> None:
        with lock:
            ran.append(node)
            graph.done(node)
            ready = graph.get_ready()
            if not graph.is_active():
                finished.set()
        for nxt in ready:
            pool.submit(run, nxt, pool)

    with ThreadPoolExecutor(4) as pool:
        with lock:
            first = graph.get_ready()
        for node in first:
            pool.submit(run, node, pool)
        assert finished.wait(10)
    assert sorted(ran) == list(range(width * depth))
    for node in ran:
        assert all(ran.index(dep) < ran.index(node) for dep in graph.dependencies(node))


def test_copies_of_a_frozen_template_run_apart_and_nodes_added_to_one_stay_in_it() -> None:
    template = DependencyGraph[str]()
    template.add("a")
    template.add("b", ["a"])
    template.add("c", ["a"])
    template.prepare()
    template.freeze()
    first, second = template.copy(), template.copy()
    assert first.get_ready() == ["a"]
    first.done("a")
    first.add("late", ["a", "b"])  # joins a's dependents in this copy only
    assert drain(first)[-1] == "late"
    assert drain(second) == ["a", "b", "c"]  # untouched by the first copy's run and its new node
    third = template.copy()
    assert third.get_ready() == ["a"] and "late" not in third
    third.done("a")
    assert sorted(third.get_ready()) == ["b", "c"]


def test_a_copy_that_forgets_its_done_nodes_leaves_the_template_and_the_other_copies_whole() -> None:
    # A copy shares its template's edges until it changes them; forgetting a node (a map step's
    # items, task retention) must not reach the template or a sibling.
    template = DependencyGraph[str]()
    for node, deps in {"a": [], "b": ["a"], "c": ["b"]}.items():
        template.add(node, deps)
    template.prepare()
    template.freeze()
    first, second = template.copy(), template.copy()
    assert first.get_ready() == ["a"]
    first.done("a", forget=True)
    first.done(*first.get_ready(), forget=True)
    assert list(first) == ["c"] and first.get_ready() == ["c"]
    assert list(template) == ["a", "b", "c"] and template.dependents("a") == ("b",)
    assert drain(second) == ["a", "b", "c"]
    assert (template.state("a"), template.dependencies("c")) == ("ready", ("b",))
    # A node added after a forget joins its dependencies' edges in this copy only.
    first.add("late", ["c"])
    assert template.dependents("c") == () and "late" not in template.copy()
    assert first.dependents("c") == ("late",)
    first.done("c")
    assert first.get_ready() == ["late"]


def test_a_template_is_frozen_only_once_prepared_and_is_never_run_itself() -> None:
    graph = DependencyGraph[str]()
    graph.add("a")
    with pytest.raises(InvalidStateError):
        graph.copy()  # not frozen
    with pytest.raises(InvalidStateError):
        graph.freeze()  # not prepared
    graph.prepare()
    graph.freeze()
    with pytest.raises(InvalidStateError):
        graph.get_ready()
    with pytest.raises(InvalidStateError):
        graph.add("b")
