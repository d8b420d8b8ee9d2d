"""The definition registry on its own: CRUD, config-dir loading, validation and plan caching."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from codomyrmex_orchestration.core._workflow_registry import DefinitionRegistry, digest_of
from codomyrmex_orchestration.core.actions import ActionRegistry, create_registry
from codomyrmex_orchestration.core.store import MemoryStore, SqliteStore
from codomyrmex_orchestration.errors import (
    AlreadyExistsError,
    DAGValidationError,
    InvalidInputError,
    LimitExceededError,
    WorkflowNotFoundError,
)


@pytest.fixture
def actions() -> ActionRegistry:
    return create_registry(load_plugins=False)


def spec(name: str = "w", message: str = "hi", **extra: Any) -> dict[str, Any]:
    step = {"name": "s", "module": "core", "action": "echo", "parameters": {"message": message}}
    return {"name": name, "steps": [step], **extra}


def test_create_read_list_and_delete_a_definition(actions: ActionRegistry) -> None:
    registry = DefinitionRegistry(registry=actions, store=MemoryStore(), max_steps=10)
    created, new = registry.create(spec())
    assert (
        new and created.version == 1 and created.digest == digest_of(created.spec) and created.source == "api"
    )
    assert registry.entry("w").spec == created.spec
    with pytest.raises(AlreadyExistsError, match="overwrite"):
        registry.create(spec(message="other"))
    assert [i.name for i in registry.infos()] == ["w"]
    assert registry.counts() == (1, {"api": 1})
    assert registry.delete("w") and not registry.delete("w")
    with pytest.raises(WorkflowNotFoundError):
        registry.entry("w")


def test_the_plan_of_a_definition_is_built_once_per_version(actions: ActionRegistry) -> None:
    registry = DefinitionRegistry(registry=actions, store=MemoryStore(), max_steps=10)
    registry.create(spec())
    first = registry.plan("w")
    assert registry.plan("w") is first and first.version == 1
    registry.create(spec(message="changed"), overwrite=True)
    second = registry.plan("w")
    assert second is not first and second.version == 2


def test_bad_definitions_are_refused_with_the_field_named(actions: ActionRegistry) -> None:
    registry = DefinitionRegistry(registry=actions, store=MemoryStore(), max_steps=2)
    with pytest.raises(InvalidInputError, match="steps"):
        registry.coerce({"name": "w", "steps": []})
    with pytest.raises(LimitExceededError):
        registry.coerce({"name": "w", "steps": [spec()["steps"][0]] * 3})
    cyclic = {"name": "c", "steps": [{"name": "a", "module": "core", "action": "set", "dependencies": ["a"]}]}
    with pytest.raises(DAGValidationError):
        registry.create(cyclic)
    assert registry.infos() == []


def test_a_definition_stored_through_the_api_wins_over_the_config_file_and_keeps_its_version(
    actions: ActionRegistry, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "w.json").write_text(json.dumps(spec(message="from config")))
    (config / "other.json").write_text(json.dumps(spec(name="other")))
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        registry = DefinitionRegistry(registry=actions, store=store, max_steps=10)
        registry.create(spec(message="from the api"))
    for _ in range(2):  # two restarts: nothing is renumbered
        with SqliteStore(path) as store:
            registry = DefinitionRegistry(registry=actions, store=store, max_steps=10)
            stored = registry.load_stored()
            assert registry.load_config_dir(config, skip=stored) == ["other"]
            assert registry.entry("w").spec.steps[0].parameters["message"] == "from the api"
            assert (registry.entry("w").version, registry.entry("other").version) == (1, 1)
            assert {i.name: i.source for i in registry.infos()} == {"other": "config", "w": "api"}


def test_new_workflows_past_the_cap_are_refused_naming_the_setting_while_replacing_one_is_not(
    actions: ActionRegistry, tmp_path: Path
) -> None:
    with SqliteStore(tmp_path / "state.db") as store:
        registry = DefinitionRegistry(registry=actions, store=store, max_steps=10, max_workflows=2)
        registry.create(spec("a"))
        registry.create(spec("b"))
        with pytest.raises(LimitExceededError, match="CODOMYRMEX_MAX_WORKFLOWS") as refused:
            registry.create(spec("c"))
        assert refused.value.limit == 2 and refused.value.value == 3
        assert "'c'" in str(refused.value) and "delete_workflow" in str(refused.value)
        assert [i.name for i in registry.infos()] == ["a", "b"]  # nothing evicted to make room
        assert registry.create(spec("b", message="changed"), overwrite=True)[0].version == 2
        assert registry.delete("a")
        registry.create(spec("c"))
        assert sorted(s.name for s, _ in store.load_workflows()) == ["b", "c"]
