"""ResourceManager: machine defaults, config, atomic allocation, burst, TTL expiry, admission, threads."""

from __future__ import annotations

import json
import os
import random
import resource as rlimit
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from codomyrmex_orchestration.core.models import TaskPriority, TaskStatus
from codomyrmex_orchestration.core.resources import (
    Allocation,
    Resource,
    ResourceHandle,
    ResourceManager,
    ResourceStatus,
    ResourceType,
    parse_size_mib,
)
from codomyrmex_orchestration.core.scheduler import TaskOrchestrator
from codomyrmex_orchestration.core.timers import TimerService
from codomyrmex_orchestration.errors import (
    AlreadyExistsError,
    InsufficientResourcesError,
    InvalidInputError,
    InvalidStateError,
    LimitExceededError,
    ResourceNotFoundError,
)

WAIT = 5.0  # upper bound of every wait on another thread; a healthy run takes milliseconds


@pytest.fixture
def manager(state_dir: Path) -> Iterator[ResourceManager]:
    rm = ResourceManager(state_dir=state_dir, worker_threads=4)
    yield rm
    rm.shutdown()


def make(config: dict[str, Any], state_dir: Path | None = None) -> ResourceManager:
    return ResourceManager(state_dir=state_dir, worker_threads=4, config=config)


class EventLog:
    """A listener recording (event, payload) pairs, with an Event per event name."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.seen: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        with self._lock:
            self.events.append((event, payload))
            self.seen.setdefault(event, threading.Event()).set()

    def wait_for(self, event: str) -> bool:
        with self._lock:
            flag = self.seen.setdefault(event, threading.Event())
        return flag.wait(WAIT)

    def named(self, event: str) -> list[dict[str, Any]]:
        with self._lock:
            return [p for e, p in self.events if e == event]


# --------------------------------------------------------------------------- types and defaults


def test_there_are_eleven_resource_types_and_seven_statuses_with_lower_case_values() -> None:
    assert [t.value for t in ResourceType] == [
        "compute",
        "memory",
        "storage",
        "network",
        "api_quota",
        "database",
        "custom",
        "file_handle",
        "thread",
        "process",
        "lock",
    ]
    assert {s.value for s in ResourceStatus} == {
        "available",
        "allocated",
        "busy",
        "maintenance",
        "offline",
        "depleted",
        "unknown",
    }


def test_default_capacities_are_read_from_this_machine(state_dir: Path) -> None:
    with ResourceManager(state_dir=state_dir, worker_threads=7) as rm:
        assert rm.get_resource("compute").capacity == os.cpu_count()
        with open("/proc/meminfo", encoding="ascii") as fh:
            mem_kib = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
        assert rm.get_resource("memory").capacity == mem_kib // 1024
        assert rm.get_resource("memory").unit == "MiB"
        free_mib = shutil.disk_usage(state_dir).free // (1024 * 1024)
        # other processes write to this disk meanwhile: allow 1 GiB of drift
        assert abs(rm.get_resource("storage").capacity - free_mib) < 1024
        assert rm.get_resource("thread").capacity == 7
        assert rm.get_resource("network").capacity == 1000
        assert rm.get_resource("network").unit == "Mbit/s"
        soft, _hard = rlimit.getrlimit(rlimit.RLIMIT_NOFILE)
        if soft != rlimit.RLIM_INFINITY:
            assert rm.get_resource("file_handle").capacity == soft
        assert rm.get_resource("lock").capacity == 1
        ids = {r.id for r in rm.list_resources()}
        assert ids == {
            "compute",
            "memory",
            "storage",
            "network",
            "thread",
            "process",
            "file_handle",
            "api_quota",
            "database",
            "lock",
        }
        assert all(r.capacity_known for r in rm.list_resources())
        assert rm.status_of("compute") is ResourceStatus.AVAILABLE


def test_network_figure_and_capacities_can_be_overridden_by_argument_and_config(tmp_path: Path) -> None:
    path = tmp_path / "resources.json"
    path.write_text(
        json.dumps(
            {
                "network_mbps": 250,
                "resources": {
                    "compute": {"capacity": 8, "burst_limit": 0},
                    "memory": {"capacity": "4GB", "max_allocation": "1GiB"},
                    "gpu": {"type": "custom", "capacity": 2, "unit": "gpus", "name": "GPUs"},
                    "api_quota": None,
                },
            }
        )
    )
    with ResourceManager(config_path=path, config={"resources": {"gpu": {"capacity": 3}}}) as rm:
        assert rm.get_resource("network").capacity == 250
        compute = rm.get_resource("cpu")
        assert (compute.capacity, compute.burst_limit, compute.derived_from) == (8, 0, "config")
        assert rm.get_resource("memory").capacity == 4096
        assert rm.get_resource("memory").max_allocation == 1024
        gpu = rm.get_resource("gpu")
        assert (gpu.type, gpu.capacity, gpu.unit) == (ResourceType.CUSTOM, 3, "gpus")
        assert [r.id for r in rm.list_resources(ResourceType.CUSTOM)] == ["gpu"]
        assert rm.allocate("custom", "r", 2).resource_id == "gpu"  # a type naming one resource
        with pytest.raises(ResourceNotFoundError):
            rm.get_resource("api_quota")
    with ResourceManager(network_mbps=40) as rm:
        assert rm.get_resource("network").capacity == 40


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"resourcez": {}}, "resourcez"),
        ({"resources": []}, "resources"),
        ({"resources": {"compute": {"capacity": -1}}}, "resources.compute.capacity"),
        ({"resources": {"compute": {"capacity": "lots"}}}, "resources.compute.capacity"),
        ({"resources": {"memory": {"capacity": "12 parsecs"}}}, "resources.memory.capacity"),
        ({"resources": {"compute": {"burst_limit": float("nan")}}}, "resources.compute.burst_limit"),
        ({"resources": {"compute": {"colour": "red"}}}, "resources.compute.colour"),
        ({"resources": {"gpu": {"type": "quantum", "capacity": 1}}}, "resources.gpu.type"),
        ({"resources": {"gpu": {"type": "custom"}}}, "resources.gpu.capacity"),
        ({"resources": {"gpu": {"capacity": 1, "min_allocation": 2, "max_allocation": 1}}}, "resources.gpu"),
        ({"resources": {"bad name!": {"capacity": 1}}}, "resources.bad name!.id"),
        ({"network_mbps": 0}, "network_mbps"),
    ],
)
def test_a_bad_config_is_refused_naming_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        make(config)
    assert info.value.field == field


def test_a_config_file_that_is_not_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resources.json"
    path.write_text("{not json")
    with pytest.raises(InvalidInputError) as info:
        ResourceManager(config_path=path)
    assert info.value.field == str(path)
    assert "line 1" in str(info.value)
    with pytest.raises(InvalidInputError, match="cannot read"):
        ResourceManager(config_path=tmp_path / "missing.json")


def test_paths_are_taken_as_strings_too_and_anything_else_is_refused_naming_the_argument(
    tmp_path: Path,
) -> None:
    """ResourceManager(state_dir="/tmp") raised AttributeError ('str' object has no attribute 'resolve')."""
    path = tmp_path / "resources.json"
    path.write_text(json.dumps({"resources": {"gpu": {"type": "custom", "capacity": 2}}}))
    with ResourceManager(state_dir=str(tmp_path), config_path=str(path)) as rm:
        assert rm.get_resource("storage").capacity > 0 and rm.get_resource("gpu").capacity == 2
    for field in ("state_dir", "config_path"):
        with pytest.raises(
            InvalidInputError, match=rf"^{field}: must be a path \(str or pathlib.Path\) or None, got 3$"
        ):
            ResourceManager(**{field: 3})


# --------------------------------------------------------------------------- amounts and keys


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("512MB", 512),
        ("2GB", 2048),
        ("1.5GiB", 1536),
        ("1024 kb", 1),
        ("256", 256),
        (64, 64),
        ("1TB", 1 << 20),
    ],
)
def test_memory_sizes_are_parsed_into_mib(text: object, mib: float) -> None:
    assert parse_size_mib(text) == mib


def test_memory_and_storage_accept_size_strings_and_other_resources_do_not(manager: ResourceManager) -> None:
    memory, storage = manager.allocate_resources("r", {"memory": "512MB", "disk": "1.5GiB"})
    assert (memory.amount, storage.amount) == (512, 1536)
    assert manager.get_usage("memory")["allocated"] == 512
    with pytest.raises(InvalidInputError) as info:
        manager.allocate_resources("r", {"compute": "2GB"})
    assert info.value.field == "requirements.compute"
    with pytest.raises(InvalidInputError, match="not a size"):
        manager.allocate("memory", "r", "12 parsecs")


@pytest.mark.parametrize("amount", [0, -1, float("nan"), float("inf"), True, "abc", None, "-5"])
def test_non_positive_or_non_numeric_amounts_are_refused(manager: ResourceManager, amount: object) -> None:
    with pytest.raises(InvalidInputError) as info:
        manager.allocate_resources("r", {"cpu": amount})
    assert info.value.field == "requirements.cpu"
    assert manager.get_usage("compute")["allocated"] == 0


def test_the_lock_is_exclusive_and_counted_resources_take_whole_amounts(manager: ResourceManager) -> None:
    # Two holders of half the "global mutex" each would both be inside it: a lock is taken whole.
    for doors in (
        lambda: manager.allocate_resources("a", {"lock": 0.5}),
        lambda: manager.try_acquire("step", {"lock": 0.5}),
        lambda: manager.check_satisfiable({"lock": 0.5}),
    ):
        with pytest.raises(InvalidInputError, match="exactly 1") as info:
            doors()
        assert info.value.field == "requirements.lock"
    held = manager.allocate("lock", "a", 1)
    with pytest.raises(InsufficientResourcesError):
        manager.allocate("lock", "b", 1)
    manager.release(held.allocation_id)
    for rid in ("thread", "process", "file_handle"):
        with pytest.raises(InvalidInputError, match="whole number from 1 to") as info:
            manager.allocate_resources("r", {rid: 1.5})
        assert info.value.field == f"requirements.{rid}"
        manager.allocate_resources("r", {rid: 2})
    manager.allocate_resources("r", {"compute": 0.5, "database": 0.5})  # not counted in whole units
    assert manager.get_usage("lock")["allocated"] == 0


def test_amounts_and_ttls_too_large_for_a_float_or_a_date_are_refused_naming_the_field(
    manager: ResourceManager,
) -> None:
    for requirements in ({"compute": 10**309}, {"memory": "1e400GB"}):
        key = next(iter(requirements))
        with pytest.raises(InvalidInputError) as info:
            manager.allocate_resources("r", requirements)
        assert info.value.field == f"requirements.{key}"
        with pytest.raises(InvalidInputError):
            manager.try_acquire("step", requirements)
    for ttl in (3e11, 1e308):  # past the year 9999: no expiry date could be computed
        with pytest.raises(InvalidInputError, match="at most 31536000 seconds") as info:
            manager.allocate_resources("r", {"database": 1}, ttl=ttl)
        assert info.value.field == "ttl"
    assert manager.get_total_usage()["allocations"] == 0
    year = manager.allocate_resources("r", {"database": 1}, ttl=365 * 24 * 3600)
    assert year[0].expires_at is not None


def test_an_unknown_key_lists_the_known_ids_and_aliases(manager: ResourceManager) -> None:
    with pytest.raises(ResourceNotFoundError) as info:
        manager.allocate_resources("r", {"compute": 1, "gpu": 1})
    message = str(info.value)
    for known in ("compute", "cpu", "memory", "storage", "disk", "network", "lock", "file_handle"):
        assert known in message
    assert info.value.key == "gpu"
    assert manager.get_usage("compute")["allocated"] == 0


def test_the_same_resource_named_twice_is_refused(manager: ResourceManager) -> None:
    with pytest.raises(InvalidInputError, match="already requested"):
        manager.allocate_resources("r", {"cpu": 1, "compute": 1})


def test_a_type_name_shared_by_several_resources_is_ambiguous() -> None:
    with make({"resources": {"a": {"capacity": 1}, "b": {"capacity": 1}}}) as rm:
        with pytest.raises(InvalidInputError, match="a, b"):
            rm.allocate("custom", "r", 1)


def test_per_allocation_bounds_are_enforced() -> None:
    with make({"resources": {"gpu": {"capacity": 8, "min_allocation": 2, "max_allocation": 4}}}) as rm:
        with pytest.raises(InvalidInputError, match="below the minimum"):
            rm.allocate("gpu", "r", 1)
        with pytest.raises(LimitExceededError) as info:
            rm.allocate("gpu", "r", 5)
        assert info.value.limit == 4
        assert rm.allocate("gpu", "r", 4).amount == 4


def test_bad_ttl_timeout_and_requester_are_refused(manager: ResourceManager) -> None:
    with pytest.raises(InvalidInputError, match="ttl"):
        manager.allocate("cpu", "r", 1, ttl=0)
    with pytest.raises(InvalidInputError, match="timeout"):
        manager.allocate("cpu", "r", 1, timeout=-1)
    with pytest.raises(InvalidInputError, match="requester_id"):
        manager.allocate("cpu", "", 1)


# --------------------------------------------------------------------------- allocation, burst, status


def test_allocation_is_refused_with_what_was_requested_and_what_is_available() -> None:
    with make({"resources": {"gpu": {"capacity": 4}}}) as rm:
        rm.allocate("gpu", "a", 3)
        with pytest.raises(InsufficientResourcesError) as info:
            rm.allocate("gpu", "b", 2)
        assert info.value.requested == {"gpu": 2}
        assert info.value.available == {"gpu": 1}
        assert rm.get_usage("gpu")["allocated"] == 3


def test_amounts_above_capacity_use_burst_and_are_flagged() -> None:
    with make({"resources": {"gpu": {"capacity": 4, "burst_limit": 2}}}) as rm:
        plain = rm.allocate("gpu", "a", 3)
        burst = rm.allocate("gpu", "b", 2)
        assert not plain.burst
        assert burst.burst
        assert burst.burst_amount == 1
        assert burst.expires_at is not None  # burst is lent for a bounded time
        usage = rm.get_usage("gpu")
        assert usage["burst_in_use"] == 1
        assert usage["available"] == 0
        assert usage["available_with_burst"] == 1
        assert usage["utilization"] == pytest.approx(5 / 4)
        assert {a["allocation_id"] for a in usage["allocations"]} == {
            plain.allocation_id,
            burst.allocation_id,
        }
        with pytest.raises(InsufficientResourcesError):
            rm.allocate("gpu", "c", 2)


def test_a_requirement_beyond_capacity_plus_burst_fails_at_once_even_with_a_timeout() -> None:
    with make({"resources": {"gpu": {"capacity": 4, "burst_limit": 2}}}) as rm:
        started = time.monotonic()
        with pytest.raises(InsufficientResourcesError, match="never") as info:
            rm.allocate("gpu", "r", 7, timeout=30)
        assert time.monotonic() - started < 5
        assert info.value.available == {"gpu": 6}
        with pytest.raises(InsufficientResourcesError, match="never"):
            rm.check_satisfiable({"gpu": 7})
        rm.check_satisfiable({"gpu": 6})


def test_status_follows_the_allocations() -> None:
    with make({"resources": {"gpu": {"capacity": 4, "burst_limit": 2}}}) as rm:
        assert rm.status_of("gpu") is ResourceStatus.AVAILABLE
        a = rm.allocate("gpu", "r", 2)
        assert rm.status_of("gpu") is ResourceStatus.ALLOCATED
        b = rm.allocate("gpu", "r", 2)
        assert rm.status_of("gpu") is ResourceStatus.BUSY
        c = rm.allocate("gpu", "r", 1)
        assert rm.status_of("gpu") is ResourceStatus.DEPLETED
        assert rm.get_usage("gpu")["status"] == "depleted"
        for allocation in (c, b):
            assert rm.release(allocation.allocation_id)
        assert rm.status_of("gpu") is ResourceStatus.ALLOCATED
        assert rm.release(a.allocation_id)
        assert not rm.release(a.allocation_id)
        assert rm.status_of("gpu") is ResourceStatus.AVAILABLE


def test_a_resource_with_no_burst_is_depleted_when_full(manager: ResourceManager) -> None:
    manager.allocate("lock", "r", 1)
    assert manager.status_of("lock") is ResourceStatus.DEPLETED


def test_operator_status_stops_new_allocations_and_clearing_it_wakes_a_waiter(
    manager: ResourceManager,
) -> None:
    manager.set_status("database", "maintenance")
    assert manager.status_of("database") is ResourceStatus.MAINTENANCE
    with pytest.raises(InsufficientResourcesError, match="maintenance"):
        manager.allocate("database", "r", 1)
    manager.set_status("database", ResourceStatus.OFFLINE)
    assert manager.get_usage("database")["status"] == "offline"
    assert manager.try_acquire("r", {"database": 1}) is None

    log = EventLog()
    manager.add_listener(log)
    got: list[Allocation] = []
    waiter = threading.Thread(target=lambda: got.append(manager.allocate("database", "w", 1, timeout=WAIT)))
    waiter.start()
    assert log.wait_for("resource.exhausted")  # the waiter was refused and is now waiting
    manager.set_status("database", None)
    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert got[0].resource_id == "database"
    assert manager.status_of("database") is ResourceStatus.ALLOCATED
    with pytest.raises(InvalidInputError, match="cannot be set"):
        manager.set_status("database", "busy")


def test_a_resource_whose_capacity_could_not_be_read_is_unknown(manager: ResourceManager) -> None:
    manager.add_resource(
        Resource(id="probe", name="Probe", type=ResourceType.CUSTOM, capacity=1, capacity_known=False)
    )
    assert manager.status_of("probe") is ResourceStatus.UNKNOWN
    assert manager.get_total_usage()["by_status"]["unknown"] == 1
    with pytest.raises(AlreadyExistsError):
        manager.add_resource(Resource(id="probe", name="Probe", type=ResourceType.CUSTOM, capacity=1))


def test_all_or_nothing_leaves_nothing_held_when_one_resource_is_short(manager: ResourceManager) -> None:
    log = EventLog()
    manager.add_listener(log)
    manager.allocate("lock", "holder", 1)
    before = manager.get_total_usage()
    with pytest.raises(InsufficientResourcesError) as info:
        manager.allocate_resources("r", {"memory": "64MB", "compute": 1, "lock": 1})
    assert info.value.requested == {"lock": 1}
    after = manager.get_total_usage()
    assert after == before
    assert manager.get_allocations("r") == []
    assert [p["requester_id"] for p in log.named("resource.allocated")] == ["holder"]
    assert [p["resource_id"] for p in log.named("resource.exhausted")] == ["lock"]


def test_deallocate_releases_everything_a_requester_holds(manager: ResourceManager) -> None:
    manager.allocate_resources("session-1", {"cpu": 1, "memory": "1GB"})
    manager.allocate("network", "session-1", 10)
    kept = manager.allocate("network", "session-2", 10)
    assert len(manager.get_allocations("session-1")) == 3
    assert manager.deallocate_resources("session-1") == 3
    assert manager.deallocate_resources("session-1") == 0
    assert manager.get_allocations() == [kept]
    summary = manager.get_total_usage()
    assert (summary["allocations"], summary["requesters"]) == (1, 1)
    assert summary["resources"]["network"]["allocated"] == 10


def test_usage_figures_do_not_drift_and_list_a_bounded_few_of_many_allocations(
    manager: ResourceManager,
) -> None:
    big = manager.allocate("api_quota", "whale", 5)
    small = [manager.allocate("api_quota", f"u{i % 10}", 0.01) for i in range(2000)]
    usage = manager.get_usage("api_quota")
    assert (usage["allocated"], usage["available"]) == (25.0, 75.0)  # not 25.000000000000327
    assert usage["utilization"] == 0.25
    assert usage["allocation_count"] == 2001
    listed = [a["allocation_id"] for a in usage["allocations"]]
    assert len(listed) == 10 and usage["allocations_omitted"] == 1991
    assert big.allocation_id in listed  # the largest
    assert small[-1].allocation_id in listed  # and the newest
    assert "get_allocations" in usage["allocations_note"]
    assert len(manager.get_usage("api_quota", limit=None)["allocations"]) == 2001
    assert manager.get_total_usage()["resources"]["api_quota"]["allocated"] == 25.0
    assert manager.deallocate_resources("u1") == 200
    assert manager.get_usage("api_quota")["allocated"] == 23.0
    assert manager.get_usage("compute")["allocations_omitted"] == 0


# --------------------------------------------------------------------------- time: ttl, burst bound, waits


def test_an_allocation_with_a_ttl_is_released_automatically(manager: ResourceManager) -> None:
    freed = threading.Event()
    manager.add_release_listener(freed.set)
    log = EventLog()
    manager.add_listener(log)
    allocation = manager.allocate("lock", "r", 1, ttl=0.05)
    assert allocation.expires_at is not None
    assert freed.wait(WAIT)  # nobody calls the manager meanwhile: the expiry thread did it
    released = log.named("resource.released")
    assert [(p["allocation_id"], p["reason"]) for p in released] == [(allocation.allocation_id, "expired")]
    assert manager.get_usage("lock")["allocated"] == 0
    assert not manager.release(allocation.allocation_id)
    manager.allocate("lock", "other", 1)


def test_a_burst_allocation_is_reclaimed_after_burst_max_seconds() -> None:
    with make({"resources": {"gpu": {"capacity": 1, "burst_limit": 1, "burst_max_seconds": 0.05}}}) as rm:
        log = EventLog()
        rm.add_listener(log)
        plain = rm.allocate("gpu", "r", 1)
        burst = rm.allocate("gpu", "r", 1)
        assert burst.burst and not plain.burst
        assert log.wait_for("resource.released")
        assert [(p["allocation_id"], p["reason"]) for p in log.named("resource.released")] == [
            (burst.allocation_id, "burst_expired")
        ]
        assert [a.allocation_id for a in rm.get_allocations()] == [plain.allocation_id]


def test_a_waiting_allocation_succeeds_when_another_thread_releases(manager: ResourceManager) -> None:
    held = manager.allocate("lock", "first", 1)
    log = EventLog()
    manager.add_listener(log)
    got: list[Allocation] = []
    waiter = threading.Thread(target=lambda: got.append(manager.allocate("lock", "second", 1, timeout=WAIT)))
    waiter.start()
    assert log.wait_for("resource.exhausted")
    assert log.named("resource.exhausted")[0]["waiting_seconds"] > 0
    manager.release(held.allocation_id)
    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert got[0].requester_id == "second"
    assert [p["requester_id"] for p in log.named("resource.allocated")] == ["second"]


def test_a_waiting_allocation_gives_up_after_its_timeout(manager: ResourceManager) -> None:
    manager.allocate("lock", "first", 1)
    started = time.monotonic()
    with pytest.raises(InsufficientResourcesError, match=r"waited 0\.05 s"):
        manager.allocate("lock", "second", 1, timeout=0.05)
    assert time.monotonic() - started >= 0.05


def test_a_waiter_is_served_by_an_expiry(manager: ResourceManager) -> None:
    manager.allocate("lock", "first", 1, ttl=0.05)
    assert manager.allocate("lock", "second", 1, timeout=WAIT).requester_id == "second"


def test_shutdown_closes_the_managers_own_expiry_thread_and_held_allocations_stay(state_dir: Path) -> None:
    rm = ResourceManager(state_dir=state_dir)
    held = rm.allocate("lock", "r", 1, ttl=30)
    reapers = [t for t in threading.enumerate() if t.name == "resource-expiry"]
    assert reapers
    rm.shutdown()
    assert not any(t.is_alive() for t in reapers)
    assert rm.get_allocations() == [held]  # nothing expires any more; a release still works
    assert rm.release(held.allocation_id)
    with pytest.raises(InvalidStateError, match="after shutdown"):  # refused, no expiry thread again
        rm.allocate("lock", "r2", 1, ttl=0.01)
    assert rm.check_invariants() == []
    assert not any(t.is_alive() for t in threading.enumerate() if t.name == "resource-expiry")


def test_shutdown_wakes_a_caller_waiting_for_capacity_and_refuses_later_allocations(state_dir: Path) -> None:
    """A waiter used to sleep its whole timeout through shutdown (8 s in the report), and allocate went
    on granting afterwards."""
    rm = ResourceManager(state_dir=state_dir)
    rm.allocate("lock", "holder", 1)
    log = EventLog()
    rm.add_listener(log)
    outcome: list[BaseException] = []

    def wait_for_the_lock() -> None:
        try:
            rm.allocate("lock", "waiter", 1, timeout=60)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_for_the_lock)
    waiter.start()
    assert log.wait_for("resource.exhausted")  # it is waiting now
    rm.shutdown()
    waiter.join(WAIT)
    assert not waiter.is_alive(), "shutdown did not wake the waiter"
    assert isinstance(outcome[0], InvalidStateError)
    assert "'lock'" in str(outcome[0]) and "'waiter'" in str(outcome[0])
    with pytest.raises(InvalidStateError, match="shut down"):
        rm.allocate_resources("late", {"cpu": 1})
    assert [a.requester_id for a in rm.get_allocations()] == ["holder"]


def test_a_shared_timer_service_runs_the_expiries_and_is_never_closed_by_the_manager(state_dir: Path) -> None:
    timers = TimerService(name="shared-timers")
    try:
        rm = ResourceManager(
            state_dir=state_dir,
            config={"resources": {"gpu": {"capacity": 1, "burst_limit": 1, "burst_max_seconds": 0.05}}},
            timers=timers,
        )
        expired_on: list[str] = []
        done = threading.Event()

        def note(event: str, payload: dict[str, Any]) -> None:
            if event == "resource.released":
                expired_on.append(f"{payload['reason']} on {threading.current_thread().name}")
                done.set()

        rm.add_listener(note)
        rm.allocate("gpu", "r", 1)
        rm.allocate("gpu", "r", 1)  # burst: reclaimed after 0.05 s
        rm.allocate("lock", "r", 1, ttl=60)  # a pending timer when the manager shuts down
        assert done.wait(WAIT)
        assert expired_on == ["burst_expired on shared-timers"]
        assert not any(t.name == "resource-expiry" for t in threading.enumerate())
        assert timers.pending == 1
        rm.shutdown()
        assert timers.pending == 0  # its expiries are cancelled ...
        assert not timers.closed  # ... but the service goes on serving its other owners
        still_served = threading.Event()
        timers.call_later(0.0, still_served.set)
        assert still_served.wait(WAIT)
    finally:
        timers.close()


def test_listeners_may_remove_themselves_and_others_while_an_event_is_delivered(
    manager: ResourceManager,
) -> None:
    calls: list[str] = []

    def first(event: str, payload: dict[str, Any]) -> None:
        calls.append(f"first {event}")
        manager.remove_listener(first)
        manager.remove_listener(second)

    def second(event: str, payload: dict[str, Any]) -> None:
        calls.append(f"second {event}")

    def third(event: str, payload: dict[str, Any]) -> None:
        calls.append(f"third {event}")

    def release_once() -> None:
        calls.append("release")
        manager.remove_release_listener(release_once)

    for fn in (first, second, third):
        manager.add_listener(fn)
    manager.add_release_listener(release_once)
    with capture_logs() as logs:
        allocation = manager.allocate("cpu", "r", 1)
        manager.release(allocation.allocation_id)
        manager.release(manager.allocate("cpu", "r", 1).allocation_id)
    # the delivery under way finishes with the list it began with; later ones see the removals
    assert calls == [
        "first resource.allocated",
        "second resource.allocated",
        "third resource.allocated",
        "third resource.released",
        "release",
        "third resource.allocated",
        "third resource.released",
    ]
    assert logs == []


# --------------------------------------------------------------------------- scheduler admission


def test_try_acquire_is_all_or_nothing_and_release_listeners_hear_of_freed_capacity(
    manager: ResourceManager,
) -> None:
    calls: list[int] = []
    manager.add_release_listener(lambda: calls.append(1))
    handle = manager.try_acquire("step-1", {"lock": 1, "cpu": 1})
    assert isinstance(handle, ResourceHandle)
    assert len(handle.allocation_ids) == 2
    assert manager.try_acquire("step-2", {"memory": "1MB", "lock": 1}) is None
    assert manager.get_allocations("step-2") == []
    manager.release_handle(handle)
    manager.release_handle(handle)  # idempotent
    assert calls == [1]
    second = manager.try_acquire("step-2", {"memory": "1MB", "lock": 1})
    assert second is not None
    with pytest.raises(InsufficientResourcesError, match="never"):
        manager.try_acquire("step-3", {"database": 11})
    with pytest.raises(InvalidInputError):
        manager.release_handle("not a handle")


def test_a_running_task_keeps_its_burst_admission_until_it_ends() -> None:
    # burst_max_seconds bounds what allocate() lends; a task admitted on burst holds it while it runs.
    config = {"resources": {"gpu": {"capacity": 2, "burst_limit": 3, "burst_max_seconds": 0.05}}}
    with make(config) as rm, TaskOrchestrator(2, resource_manager=rm, name="burst") as orch:
        log = EventLog()
        rm.add_listener(log)
        started, release = threading.Event(), threading.Event()

        def hold(ctx: Any) -> str:
            started.set()
            release.wait(WAIT)
            return "held"

        first = orch.submit(hold, name="first", resources={"gpu": 3})  # 1 of its 3 is burst
        assert started.wait(WAIT)
        [admitted] = rm.get_allocations(first)
        assert admitted.burst and admitted.expires_at is None
        # A burst allocation made after the task's admission: once its (later) burst bound has passed,
        # the task's would have passed too had it one.
        probe = rm.allocate("gpu", "probe", 1)
        assert probe.burst and probe.expires_at is not None
        assert log.wait_for("resource.released")
        assert [p["allocation_id"] for p in log.named("resource.released")] == [probe.allocation_id]
        assert rm.get_usage("gpu")["allocated"] == 3
        second = orch.submit(lambda ctx: "second", name="second", resources={"gpu": 3})  # 6 > 2 + 3
        other = orch.submit(lambda ctx: "other", name="other", priority=TaskPriority.LOW)
        assert orch.wait(other, WAIT).status is TaskStatus.COMPLETED  # the dispatcher passed "second"
        assert orch.get_task(second).status is TaskStatus.READY
        release.set()
        assert orch.wait(first, WAIT).status is TaskStatus.COMPLETED
        assert orch.wait(second, WAIT).status is TaskStatus.COMPLETED
        assert rm.get_usage("gpu")["allocated"] == 0
        assert rm.check_invariants() == []


@pytest.mark.parametrize("given_up", [TaskStatus.TIMED_OUT, TaskStatus.CANCELLED])
def test_a_task_given_up_on_keeps_the_lock_until_its_call_returns(
    state_dir: Path, given_up: TaskStatus
) -> None:
    # Its record is final at once, but a call that ignores its cancel event is still inside the mutex:
    # the next holder must not enter before it leaves.
    with (
        ResourceManager(state_dir=state_dir, worker_threads=4) as rm,
        TaskOrchestrator(4, resource_manager=rm, name="mutex") as orch,
    ):
        inside, leave = threading.Event(), threading.Event()
        order: list[str] = []

        def first(ctx: Any) -> None:
            inside.set()
            leave.wait(WAIT)  # a blocking call that cannot be interrupted
            order.append("first leaves")

        timeout = 0.05 if given_up is TaskStatus.TIMED_OUT else None
        holder = orch.submit(first, name="first", resources={"lock": 1}, timeout=timeout)
        assert inside.wait(WAIT)
        waiter = orch.submit(lambda ctx: order.append("second enters"), name="second", resources={"lock": 1})
        if given_up is TaskStatus.CANCELLED:
            assert orch.cancel_task(holder)
        assert orch.wait(holder, WAIT).status is given_up
        [held] = rm.get_allocations(holder)
        assert held.resource_id == "lock" and rm.get_usage("lock")["allocated"] == 1
        assert orch.get_task(waiter).status is TaskStatus.READY
        health = orch.health()
        assert (health["abandoned"], health["abandoned_holding_resources"]) == (1, 1)
        leave.set()
        assert orch.wait(waiter, WAIT).status is TaskStatus.COMPLETED
        assert order == ["first leaves", "second enters"]
        assert rm.get_allocations(holder) == [] and rm.get_usage("lock")["allocated"] == 0
        assert orch.health()["abandoned_holding_resources"] == 0


def test_try_acquire_reports_a_requesters_shortage_once(manager: ResourceManager) -> None:
    log = EventLog()
    manager.add_listener(log)
    manager.allocate("lock", "holder", 1)
    for _ in range(3):
        assert manager.try_acquire("step", {"lock": 1}) is None
    assert len(log.named("resource.exhausted")) == 1


# --------------------------------------------------------------------------- listeners


def test_failing_listeners_are_logged_and_never_break_allocation(manager: ResourceManager) -> None:
    def explode(event: str, payload: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    def explode_too() -> None:
        raise RuntimeError("release listener bug")

    log = EventLog()
    manager.add_listener(explode)
    manager.add_listener(log)
    manager.add_release_listener(explode_too)
    with capture_logs() as logs:
        allocation = manager.allocate("cpu", "r", 1)
        assert manager.release(allocation.allocation_id)
    assert [e for e, _p in log.events] == ["resource.allocated", "resource.released"]
    messages = [entry["event"] for entry in logs]
    assert messages.count("resource event listener failed") == 2
    assert messages.count("resource release listener failed") == 1
    manager.remove_listener(explode)
    manager.remove_release_listener(explode_too)
    with capture_logs() as logs:
        manager.release(manager.allocate("cpu", "r", 1).allocation_id)
    assert logs == []


# --------------------------------------------------------------------------- threads


def test_fifty_threads_allocating_and_releasing_never_exceed_capacity_plus_burst() -> None:
    capacity, burst = 10.0, 5.0
    rm = make({"resources": {"pool": {"capacity": capacity, "burst_limit": burst, "burst_max_seconds": 60}}})
    threads_n, rounds = 50, 1_000
    start = threading.Barrier(threads_n + 2)  # workers, observer, this thread
    done = threading.Event()
    guard = threading.Lock()
    outside_in_use = 0.0  # what the workers know they hold: never above what the manager counts
    peak = 0.0
    grants = [0] * threads_n
    bursts = [0] * threads_n
    failures: list[str] = []

    def worker(index: int) -> None:
        nonlocal outside_in_use, peak
        rng = random.Random(index)
        start.wait(WAIT)
        for _ in range(rounds):
            amount = rng.choice((1, 1, 2, 3))
            handle: ResourceHandle | Allocation | None
            if index % 2:  # half through the scheduler's door, half through allocate/release
                handle = rm.try_acquire(f"w{index}", {"pool": amount})
            else:
                try:
                    handle = rm.allocate("pool", f"w{index}", amount)
                except InsufficientResourcesError:
                    handle = None
            if handle is None:
                continue
            grants[index] += 1
            if isinstance(handle, Allocation) and handle.burst:
                bursts[index] += 1
            with guard:
                outside_in_use += amount
                peak = max(peak, outside_in_use)
                if outside_in_use > capacity + burst:
                    failures.append(f"held {outside_in_use} > {capacity + burst}")
            with guard:
                outside_in_use -= amount
            if isinstance(handle, Allocation):
                rm.release(handle.allocation_id)
            else:
                rm.release_handle(handle)

    def observer() -> None:
        start.wait(WAIT)
        while not done.is_set():
            problems = rm.check_invariants()
            usage = rm.get_usage("pool")
            if usage["allocated"] > capacity + burst or problems:
                failures.append(f"observer: {usage['allocated']} {problems}")

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    watcher = threading.Thread(target=observer)
    for t in (*workers, watcher):
        t.start()
    try:
        start.wait(WAIT)
        for t in workers:
            t.join(60)
    finally:
        done.set()
        watcher.join(WAIT)
    rm.shutdown()
    assert not any(t.is_alive() for t in (*workers, watcher))
    assert failures == []
    assert sum(grants) > threads_n * rounds // 4  # the pool was really shared, not mostly refused
    assert sum(bursts) > 0  # burst capacity was really lent
    assert 0 < peak <= capacity + burst
    assert rm.check_invariants() == []
    assert rm.get_usage("pool")["allocated"] == 0
    assert rm.get_total_usage()["allocations"] == 0
