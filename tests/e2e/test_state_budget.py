"""The state directory's byte budget against the real server (issue 18, finding 3).

The attack: 40 ``core.echo`` calls of 3.5 MB put 147 MB of spill files in ``state/outputs/`` in 2 s and
nothing ever deleted them. Now every spill asks the store for room first (the oldest task spill files
go), and the write-ahead log's cap is kept aside in the budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.helpers.served import served

BUDGET = 12_000_000
BIG = "x" * 3_500_000


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.timeout(180)
def test_a_client_pushing_big_outputs_keeps_the_state_directory_under_its_budget(tmp_path: Path) -> None:
    # The 3.5 MB messages are over the default 1 MiB a task's parameters may hold: allowed here, as the
    # budget of what their outputs spill is what is tested.
    env = {"CODOMYRMEX_STATE_MAX_BYTES": str(BUDGET), "CODOMYRMEX_MAX_PARAMETERS_BYTES": "4000000"}
    with served(tmp_path, env=env) as server:

        async def push() -> dict[str, Any]:
            peak = 0
            async with Client(server.url) as client:
                for i in range(20):  # 70 MB of outputs against a 12 MB budget
                    result = await client.call_tool(
                        "execute_task",
                        {
                            "name": f"big{i}",
                            "module": "core",
                            "action": "echo",
                            "parameters": {"message": BIG},
                        },
                    )
                    assert not result.is_error, result.content
                    marker = result.structured_content["result"]
                    assert marker["truncated"] and marker["spilled_to"], marker
                    peak = max(peak, _disk_bytes(server.state_dir))
                health = await client.call_tool("get_health_status", {})
                status = await client.call_tool("get_system_status", {})
            return {
                "peak": peak,
                "health": health.structured_content["overall_status"],
                "status": status.structured_content,
            }

        found = anyio.run(push)
    assert found["peak"] <= BUDGET, f"the state directory reached {found['peak']} bytes"
    assert found["health"] == "healthy"
    assert found["status"]["state_max_bytes"] == BUDGET
    assert 0 < found["status"]["state_bytes_used"] <= BUDGET
