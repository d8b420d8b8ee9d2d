"""Instructions per workflow step, counted by valgrind: a figure that does not move with machine load.

Wall-clock step overhead on a shared 2-vCPU VM swings by 2x from one run to the next (the raw
ThreadPoolExecutor floor alone measured 15 to 41 µs/task on the same day), which hides a 10-20%
change. This counts the instructions a workflow run executes (callgrind), once for one run and once
for three runs of the same workflow in one process, and reports the difference per step, so start-up
and imports cancel out. Repeated runs agree to within 1%. Shapes and stores as in bench_overhead; the
reference is a raw ThreadPoolExecutor no-op task counted the same way. Not part of ``make bench``
(valgrind is slow: about 2 minutes); run with ``make bench-instructions``. Needs ``valgrind``.

    .venv/bin/python bench/bench_instructions.py [--steps 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CASES = [
    ("memory", "independent"),
    ("memory", "grid"),
    ("durable", "independent"),
    ("durable", "chain"),
    ("durable", "grid"),
]


def _noop() -> None:
    return None


def _child(kind: str, shape: str, steps: int, runs: int) -> None:
    """What valgrind runs: ``runs`` runs of one workflow (or batches of raw pool no-ops)."""
    if kind == "raw":
        with ThreadPoolExecutor(max_workers=4) as pool:
            pool.submit(_noop).result()
            for _ in range(runs):
                wait([pool.submit(_noop) for _ in range(steps)])
        return
    sys.path.insert(0, str(HERE))
    from bench_overhead import SHAPES, _Manager

    from codomyrmex_orchestration.core.store import SqliteStore

    with tempfile.TemporaryDirectory(prefix="bench-ir-") as tmp:
        store = SqliteStore(Path(tmp) / "state.db") if kind == "durable" else None
        manager = _Manager({shape: SHAPES[shape](steps)}, store)
        for _ in range(runs):
            manager.run(shape)
        manager.close()


def _count(kind: str, shape: str, steps: int, runs: int) -> int:
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            kind,
            shape,
            str(steps),
            str(runs),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {out.stderr[-500:]}")
    return int(found.group(1))


def per_step(kind: str, shape: str, steps: int) -> float:
    return (_count(kind, shape, steps, 3) - _count(kind, shape, steps, 1)) / (2 * steps)


def run(steps: int) -> dict[str, Any]:
    raw = per_step("raw", "-", steps)
    figures: dict[str, Any] = {"steps": steps, "raw_pool_instructions_per_task": round(raw), "cases": {}}
    for kind, shape in CASES:
        ours = per_step(kind, shape, steps)
        figures["cases"][f"{kind}/{shape}"] = {
            "instructions_per_step": round(ours),
            "vs_raw_pool": round(ours / raw, 2),
        }
    return figures


def report(figures: dict[str, Any]) -> str:
    lines = [
        f"Instructions per step (callgrind, {figures['steps']}-step workflows, 3 runs minus 1 run)",
        f"  raw ThreadPoolExecutor no-op task: {figures['raw_pool_instructions_per_task']:,}",
    ]
    for case, f in figures["cases"].items():
        lines.append(f"  {case:<22} {f['instructions_per_step']:>9,}   x raw {f['vs_raw_pool']:.2f}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, shape, steps, runs = sys.argv[2:6]
        _child(kind, shape, int(steps), int(runs))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line too")
    ns = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        raise SystemExit(2)
    figures = run(ns.steps)
    print(report(figures))
    if ns.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
