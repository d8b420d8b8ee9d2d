"""Benchmark: one map step of 100,000 items (``core.echo`` per item, ``max_parallel`` 64) with a durable
SQLite store, then the run read back from the store (item rows folded into their map step).

It shows a map of the size ``CODOMYRMEX_MAX_MAP_ITEMS`` allows is feasible; it is not part of
``run_all.py``.

    .venv/bin/python bench/bench_map.py [--items 100000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from _common import timed

from codomyrmex_orchestration.core.engine import OrchestrationEngine


def run(items: int = 100_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        engine = OrchestrationEngine(
            state_dir=tmp, config_dir=None, projects_dir=Path(tmp, "p"), templates_dir=None, max_workers=4
        )
        try:
            engine.workflow_manager.create_workflow(
                {
                    "name": "big_map",
                    "steps": [
                        {
                            "name": "list",
                            "module": "core",
                            "action": "set",
                            "parameters": {"items": list(range(items))},
                        },
                        {
                            "name": "each",
                            "module": "core",
                            "action": "echo",
                            "for_each": "{{steps.list.output.items}}",
                            "max_parallel": 64,
                            "parameters": {"message": "{{item}}"},
                        },
                    ],
                }
            )
            records: list[Any] = []
            run_seconds = timed(lambda: records.append(engine.execute_workflow("big_map", timeout=3600)))
            record = records[0]
            assert len(record.steps["each"].output) == items, record.error
            read_seconds = timed(lambda: engine.workflow_manager.store.get_run(record.run_id))
            db_bytes = Path(tmp, "state.db").stat().st_size
        finally:
            engine.shutdown()
    return {
        "items": items,
        "run_seconds": round(run_seconds, 3),
        "us_per_item": round(run_seconds / items * 1e6, 1),
        "read_back_seconds": round(read_seconds, 3),
        "state_db_mb": round(db_bytes / 1e6, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    print(run(parser.parse_args().items))
