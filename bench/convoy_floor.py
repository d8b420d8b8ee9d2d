"""Diagnostic (not part of ``make bench``): the leanest DAG runner the house rules allow, and when its
workers fall into a lock convoy.

Workers share one plain ``threading.Lock`` (and a ``Condition`` on it) guarding dependency counters and
a ready deque, as our scheduler does. A worker runs a step, then, in one acquisition, records it, queues
the dependents it made ready and takes its next step: no handshakes, no yielding, no hand-offs on a
chain. A step records nothing else: no priorities, timeouts, retries, events, records or results
pipeline. Each step spins a pure-Python loop ``--outside`` iterations outside the lock (standing for the
action and everything a step does unlocked) and ``--inside`` iterations inside it (standing for the
bookkeeping under the lock). Shapes as in ``bench_overhead``; the raw ``ThreadPoolExecutor`` floor is
measured in the same process. For each setting it prints µs per step and thread switches per step
(``getrusage``, about 2 in a convoy, near 0 without), best of ``--repeat`` runs, collector off.

    .venv/bin/python bench/convoy_floor.py [--workers 4] [--outside 0,600] [--inside 0,50,300]

docs/PERFORMANCE.md ("Seventh session") has what it showed on the dev machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import threading
import time
import timeit
from collections import deque

from bench_overhead import SHAPES, Shape, raw_pool


def spin(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i
    return total


class MinimalRunner:
    """Dependency counters and a ready deque under one lock; ``workers`` daemon threads."""

    def __init__(self, workers: int, outside: int, inside: int) -> None:
        self.outside, self.inside = outside, inside
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.ready: deque[str] = deque()
        self.idle = 0
        self.remaining = 0
        self.finished = threading.Event()
        self.children: dict[str, list[str]] = {}
        self.waiting_on: dict[str, int] = {}
        self.results: dict[str, int] = {}
        for _ in range(workers):
            threading.Thread(target=self._work, daemon=True).start()

    def run(self, shape: Shape) -> float:
        """Seconds to run every step of ``shape``."""
        children: dict[str, list[str]] = {step: [] for step in shape}
        for step, deps in shape.items():
            for dep in deps:
                children[dep].append(step)
        started = time.perf_counter()
        with self.lock:
            self.children, self.results = children, {}
            self.waiting_on = {step: len(deps) for step, deps in shape.items()}
            self.remaining = len(shape)
            self.finished = finished = threading.Event()
            self.ready.extend(step for step, deps in shape.items() if not deps)
            self.cond.notify(min(self.idle, len(self.ready)))
        finished.wait()
        return time.perf_counter() - started

    def _work(self) -> None:
        step: str | None = None
        result = 0
        while True:
            with self.lock:
                if step is not None:
                    self.results[step] = result
                    for child in self.children[step]:
                        self.waiting_on[child] -= 1
                        if self.waiting_on[child] == 0:
                            self.ready.append(child)
                    self.remaining -= 1
                    if self.remaining == 0:
                        self.finished.set()
                while not self.ready:
                    self.idle += 1
                    self.cond.wait()
                    self.idle -= 1
                step = self.ready.popleft()
                if self.ready and self.idle:
                    self.cond.notify()  # more is ready than this worker takes: wake one more
                spin(self.inside)
            result = spin(self.outside)


def _switches() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def measure(workers: int, outside: int, inside: int, steps: int, repeat: int) -> dict[str, object]:
    shapes = {label: make(steps) for label, make in SHAPES.items()}
    runner = MinimalRunner(workers, outside, inside)
    figures: dict[str, object] = {
        "workers": workers,
        "outside": outside,
        "inside": inside,
        "raw_pool_us": round(min(raw_pool(steps) for _ in range(repeat)) / steps * 1e6, 2),
    }
    for label, shape in shapes.items():
        runner.run(shape)  # warm-up
        best = (float("inf"), 0)
        for _ in range(repeat):
            before = _switches()
            seconds = runner.run(shape)
            best = min(best, (seconds, _switches() - before))
        figures[label] = {
            "us_per_step": round(best[0] / len(shape) * 1e6, 2),
            "switches_per_step": round(best[1] / len(shape), 2),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--outside", default="0,600", help="iterations outside the lock, a list")
    parser.add_argument("--inside", default="0,50,300", help="iterations inside the lock, a list")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    gc.disable()
    per_100 = min(timeit.repeat(lambda: spin(100), number=10_000, repeat=5)) / 10_000 * 1e6
    print(f"spin(100) takes {per_100:.2f} µs on this machine")
    for outside in (int(x) for x in args.outside.split(",")):
        for inside in (int(x) for x in args.inside.split(",")):
            figures = measure(args.workers, outside, inside, args.steps, args.repeat)
            if args.json:
                print(json.dumps(figures))
                continue
            shapes = "  ".join(
                f"{label} {f['us_per_step']:6.2f} µs {f['switches_per_step']:4.2f} sw"
                for label, f in figures.items()
                if isinstance(f, dict)
            )
            print(
                f"workers {args.workers}  outside {outside:4d}  inside {inside:4d}  "
                f"raw pool {figures['raw_pool_us']:6.2f} µs  {shapes}"
            )


if __name__ == "__main__":
    main()
