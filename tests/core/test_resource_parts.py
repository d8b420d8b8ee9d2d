"""The parts behind ResourceManager, each on its own: machine probes, config parsing, and the ledger."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from codomyrmex_orchestration.core._numbers import check_seconds
from codomyrmex_orchestration.core._resource_config import apply_config, parse_amount
from codomyrmex_orchestration.core._resource_ledger import ResourceLedger
from codomyrmex_orchestration.core._resource_probe import free_disk_mib, machine_resources, memory_mib
from codomyrmex_orchestration.core._resource_types import MAX_TTL_SECONDS, Resource, ResourceType
from codomyrmex_orchestration.core.timers import TimerService
from codomyrmex_orchestration.errors import InvalidInputError, LimitExceededError

WAIT = 5.0


# --------------------------------------------------------------------------- probes


def test_memory_is_read_from_a_meminfo_file_in_kib(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemFree:   1000 kB\nMemTotal:  2097152 kB\n", encoding="ascii")
    assert memory_mib(meminfo) == 2048


def test_memory_falls_back_to_sysconf_when_meminfo_is_missing_or_garbled(tmp_path: Path) -> None:
    expected = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    assert memory_mib(tmp_path / "absent") == expected
    garbled = tmp_path / "garbled"
    garbled.write_text("MemTotal: lots\n", encoding="ascii")
    assert memory_mib(garbled) == expected


def test_free_disk_of_a_folder_not_yet_made_is_that_of_its_nearest_existing_ancestor(tmp_path: Path) -> None:
    free = free_disk_mib(tmp_path / "not" / "yet" / "made")
    assert free is not None
    assert abs(free - shutil.disk_usage(tmp_path).free // (1024 * 1024)) < 1024


def test_the_machine_defaults_cover_every_type_but_custom_and_follow_the_arguments(tmp_path: Path) -> None:
    resources = {r.id: r for r in machine_resources(tmp_path, 3, 40.0)}
    assert {r.type for r in resources.values()} == set(ResourceType) - {ResourceType.CUSTOM}
    assert resources["thread"].capacity == 3 and resources["network"].capacity == 40.0
    assert resources["compute"].burst_limit == resources["compute"].capacity  # CPU may be oversubscribed
    assert resources["lock"].max_allocation == 1


# --------------------------------------------------------------------------- config and units


def test_config_errors_name_their_origin_and_the_accepted_settings(tmp_path: Path) -> None:
    base = {r.id: r for r in machine_resources(tmp_path, 2, 100.0)}
    with pytest.raises(InvalidInputError) as info:
        apply_config(base, {"resources": {"gpu": {"capacity": 1, "unit": ""}}}, origin="my.json")
    assert info.value.field == "my.json:resources.gpu.unit"
    with pytest.raises(InvalidInputError, match="accepted: name, type, capacity"):
        apply_config(base, {"resources": {"compute": {"cores": 4}}}, origin="")
    applied = apply_config(base, {"resources": {"lock": None, "gpu": {"capacity": "2"}}}, origin="")
    assert "lock" not in applied and applied["gpu"].type is ResourceType.CUSTOM
    assert base["lock"].capacity == 1  # the input mapping is left as it was


def test_a_configured_memory_or_storage_resource_reports_the_mib_its_amounts_are_in(tmp_path: Path) -> None:
    base = {r.id: r for r in machine_resources(tmp_path, 2, 100.0)}
    applied = apply_config(
        base,
        {
            "resources": {
                "vram": {"type": "memory", "capacity": "16GB"},
                "scratch": {"type": "storage", "capacity": 10, "unit": "MiB"},
            }
        },
        origin="",
    )
    assert (applied["vram"].unit, applied["vram"].capacity) == ("MiB", 16384)
    assert applied["scratch"].unit == "MiB"
    with pytest.raises(InvalidInputError) as info:
        apply_config(
            base, {"resources": {"vram": {"type": "memory", "capacity": 16, "unit": "GB"}}}, origin=""
        )
    assert info.value.field == "resources.vram.unit"
    assert "MiB" in info.value.reason


def test_amounts_respect_units_and_allocation_bounds() -> None:
    memory = Resource(id="mem", name="m", type=ResourceType.MEMORY, capacity=4096, max_allocation=1024)
    assert parse_amount("1GB", memory, field="f") == 1024
    with pytest.raises(LimitExceededError):
        parse_amount("2GB", memory, field="f")
    gpu = Resource(id="gpu", name="g", type=ResourceType.CUSTOM, capacity=2, min_allocation=0.5)
    with pytest.raises(InvalidInputError, match="below the minimum"):
        parse_amount(0.25, gpu, field="f")
    with pytest.raises(InvalidInputError, match="not a number"):
        parse_amount("1GB", gpu, field="f")
    lock = Resource(id="lock", name="l", type=ResourceType.LOCK, capacity=1, max_allocation=1)
    assert parse_amount(1, lock, field="f") == 1
    with pytest.raises(InvalidInputError, match=r"^f: 'lock' \(lock\) is held in whole units: use exactly 1"):
        parse_amount(0.5, lock, field="f")
    threads = Resource(id="thread", name="t", type=ResourceType.THREAD, capacity=6)
    assert parse_amount("2", threads, field="f") == 2
    with pytest.raises(InvalidInputError, match=r"use a whole number from 1 to 6, got 2\.5$"):
        parse_amount(2.5, threads, field="f")
    assert check_seconds(None, "ttl", allow_zero=False) is None
    assert check_seconds(0, "timeout", allow_zero=True) == 0
    with pytest.raises(InvalidInputError, match="> 0 seconds"):
        check_seconds(0, "ttl", allow_zero=False)


def test_numbers_beyond_a_float_are_refused_naming_the_field_and_the_range() -> None:
    cores = Resource(
        id="compute", name="c", type=ResourceType.COMPUTE, capacity=2, burst_limit=2, unit="cores"
    )
    with pytest.raises(InvalidInputError) as info:
        parse_amount(10**309, cores, field="requirements.compute")
    assert str(info.value) == (
        "requirements.compute: an integer of 310 digits is too large; "
        "use a number of cores greater than 0 and at most 4 (capacity + burst)"
    )
    memory = Resource(id="memory", name="m", type=ResourceType.MEMORY, capacity=4096, unit="MiB")
    for size in ("1e400GB", "1e309", 10**400):
        with pytest.raises(
            InvalidInputError, match=r"^f: .* is (not a finite size|too large); use a number"
        ) as info:
            parse_amount(size, memory, field="f")
        assert "a number of MiB greater than 0 and at most 4096 (capacity + burst)" in str(info.value)
    with pytest.raises(InvalidInputError, match=r"^ttl: must be at most 31536000 seconds \(365 days\)"):
        check_seconds(3e11, "ttl", allow_zero=False, at_most=MAX_TTL_SECONDS)
    assert check_seconds(MAX_TTL_SECONDS, "ttl", allow_zero=False, at_most=MAX_TTL_SECONDS) == MAX_TTL_SECONDS
    with pytest.raises(InvalidInputError, match=r"^resources\.compute\.burst_max_seconds: .* 31536000$"):
        apply_config({"compute": cores}, {"resources": {"compute": {"burst_max_seconds": 1e308}}}, origin="")


# --------------------------------------------------------------------------- ledger


def _gpu_ledger(timers: TimerService) -> ResourceLedger:
    gpu = Resource(
        id="gpu", name="g", type=ResourceType.CUSTOM, capacity=1, burst_limit=1, burst_max_seconds=60
    )
    return ResourceLedger([gpu], timers)


def test_the_ledger_arms_one_timer_per_expiring_allocation_and_cancels_it_on_release() -> None:
    timers = TimerService(name="ledger-timers")
    try:
        ledger = _gpu_ledger(timers)
        plain = ledger.acquire("r", {"gpu": 1}, None, 0.0)
        burst = ledger.acquire("r", {"gpu": 1}, None, 0.0)
        assert (plain[0].expires_at, burst[0].burst) == (None, True)
        assert timers.pending == 1
        assert ledger.release([burst[0].allocation_id]) == 1
        assert timers.pending == 0
        assert ledger.invariants() == []
    finally:
        timers.close()


def test_a_ledger_whose_timer_service_was_closed_still_grants_and_reports_the_missing_expiry() -> None:
    timers = TimerService(name="closed-timers")
    timers.close()
    ledger = _gpu_ledger(timers)
    ledger.acquire("r", {"gpu": 1}, None, 0.0)
    with capture_logs() as logs:
        [burst] = ledger.acquire("r", {"gpu": 1}, None, 0.0)
    assert [e["event"] for e in logs] == ["resource expiry not armed: the timer service is closed"]
    assert ledger.invariants() == [f"gpu: allocation {burst.allocation_id} expires but has no expiry timer"]
    ledger.close()
    assert ledger.invariants() == []  # once closed, nothing is expected to expire


def test_a_waiter_in_the_ledger_is_woken_by_a_timer_expiry() -> None:
    timers = TimerService(name="ledger-timers")
    try:
        ledger = _gpu_ledger(timers)
        ledger.acquire("a", {"gpu": 2}, 0.05, 0.0)
        woke = threading.Event()
        ledger.listeners.add_release(woke.set)
        [granted] = ledger.acquire("b", {"gpu": 1}, None, WAIT)
        assert woke.is_set() and granted.requester_id == "b"
    finally:
        timers.close()
