"""``make bench``: every benchmark in one go; figures to stdout and to ``bench/results/latest.json``.

Benchmarks (issue 7): 1+2 step overhead in memory and durable (bench_overhead), 3 validation
(bench_validation), 4 MCP round trip over stdio and streamable HTTP against a bare SDK echo server
(bench_mcp_roundtrip),
5 concurrent clients over streamable HTTP (bench_concurrency), 6 memory after 100,000 runs
(bench_memory), 7 the Dask backend against raw Client.submit (bench_dask, when dask is installed), plus the
scheduler and store micro-benchmarks, the cold start and a 100,000-item map step in memory (issue 23:
bench_cold_start, bench_map_memory). 4-7 and those two run in their own processes. None of this is
pass/fail: the targets are evaluated and printed, the exit code is 0 either way.

    .venv/bin/python bench/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_concurrency
import bench_overhead
import bench_scheduler
import bench_store
import bench_validation
from _common import machine

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latest.json"


def _script(name: str, *args: str, timeout: float = 300) -> str:
    """Run ``bench/<name>`` in a fresh process and return its stdout."""
    out = subprocess.run(
        [sys.executable, str(HERE / name), *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=HERE,
        timeout=timeout,
    )
    return out.stdout


def _json_script(name: str, *args: str) -> dict[str, Any]:
    return dict(json.loads(_script(name, *args, "--json").strip().splitlines()[-1]))


_ROUNDTRIP_ROW = re.compile(
    r"^(stdio|http)\s+(list_workflows|execute_task)\s+mean\s+(\d+) µs.*ratio\s+([\d.]+)"
    r"\s+\(rounds ([\d.]+)-([\d.]+)\)(?:\s+x shaped\s+([\d.]+))?$",
    re.MULTILINE,
)


def _roundtrip(calls: int, rounds: int) -> dict[str, Any]:
    text = _script("bench_mcp_roundtrip.py", "--calls", str(calls), "--rounds", str(rounds))
    cases = {
        f"{transport} {tool}": {
            "mean_us": int(mean),
            "ratio_to_bare_sdk": float(ratio),
            "ratio_range_over_rounds": [float(low), float(high)],
            # against the bare SDK tool returning a result of the same shape and schema (execute_task)
            **({"ratio_to_bare_shaped": float(shaped)} if shaped else {}),
        }
        for transport, tool, mean, ratio, low, high, shaped in _ROUNDTRIP_ROW.findall(text)
    }
    return {"cases": cases, "output": text.strip()}


def _dask(steps: int, rounds: int) -> dict[str, Any]:
    if importlib.util.find_spec("distributed") is None:
        return {"skipped": "dask[distributed] is not installed"}
    text = _script("bench_dask.py", "--steps", str(steps), "--rounds", str(rounds), "--json", timeout=900)
    return dict(json.loads(text.strip().splitlines()[-1]))


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 7 with the figure that decides it."""
    found: list[dict[str, Any]] = []
    overhead = results["overhead"]
    for shape, f in overhead["shapes"].items():
        found.append(
            {
                "target": f"in-memory step overhead <= 2x raw ThreadPoolExecutor ({shape})",
                "figure": f"{f['memory_us_per_step']} µs/step = {f['memory_vs_raw_pool']}x"
                f" ({f['memory_switches_per_step']} thread switches/step)",
                "met": f["memory_vs_raw_pool"] <= 2.0,
            }
        )
    for shape, f in overhead["shapes"].items():
        found.append(
            {
                "target": f"durable step overhead <= 100 µs/step ({shape})",
                "figure": f"{f['durable_us_per_step']} µs/step",
                "met": f["durable_us_per_step"] <= 100.0,
            }
        )
    h = results["store_history"]
    found.append(
        {
            "target": "durable single-step run, store filling to 50k runs: last batch <= 1.2x the first",
            "figure": f"{h['durable']['first_batch_us']} -> {h['durable']['last_batch_us']} µs/run median "
            f"= {h['durable']['last_vs_first']}x (memory {h['memory']['last_batch_us']} µs, durable "
            f"{h['durable_vs_memory_last_batch']}x it)",
            "met": h["durable"]["last_vs_first"] <= 1.2,
        }
    )
    b = results["store_big_history"]
    found.append(
        {
            "target": f"{b['runs']} stored runs: start-up <= 1.5x empty, list_runs p50 <= 10 ms, "
            "get_run p50 <= 5 ms",
            "figure": f"start-up {b['startup_ratio']}x, list_runs {b['list_runs_p50_ms']} ms, "
            f"get_run {b['get_run_p50_ms']} ms",
            "met": b["startup_ratio"] <= 1.5 and b["list_runs_p50_ms"] <= 10 and b["get_run_p50_ms"] <= 5,
        }
    )
    v = results["validation"]
    found.append(
        {
            "target": "100k-step validation < 1 s and <= 1.5x graphlib",
            "figure": f"{v['ours_seconds']} s wall ({v['ours_cpu_seconds']} s cpu), "
            f"{v['ratio_to_graphlib']}x graphlib",
            "met": v["ours_seconds"] < 1.0 and v["ratio_to_graphlib"] <= 1.5,
        }
    )
    cases = results["mcp_roundtrip"]["cases"]
    for case in ("stdio list_workflows", "stdio execute_task", "http list_workflows", "http execute_task"):
        c = cases.get(case)
        found.append(
            {
                "target": f"MCP round trip <= 1.3x the bare SDK echo tool ({case})",
                "figure": (
                    f"{c['mean_us']} µs/call = {c['ratio_to_bare_sdk']}x (rounds "
                    f"{c['ratio_range_over_rounds'][0]}-{c['ratio_range_over_rounds'][1]}x)"
                    + (
                        f"; {c['ratio_to_bare_shaped']}x a bare SDK tool with its result shape and schema"
                        if "ratio_to_bare_shaped" in c
                        else ""
                    )
                    if c
                    else "not measured"
                ),
                "met": c is not None and c["ratio_to_bare_sdk"] <= 1.3,
            }
        )
    cold = results.get("cold_start")
    if cold:
        found.append(
            {
                "target": "cold start over stdio (spawn -> tools/list) <= 1.2x the bare SDK server",
                "figure": f"{cold['ours_median_ms']} ms vs {cold['bare_sdk_median_ms']} ms "
                f"= {cold['ratio']}x (median of {cold['rounds']} rounds; per round "
                f"{cold['round_ratio_range'][0]}-{cold['round_ratio_range'][1]}x)",
                "met": cold["ratio"] <= 1.2,
            }
        )
    big_map = results.get("map_memory")
    if big_map:
        kib = big_map["peak_bytes_per_item"] / 1024
        found.append(
            {
                "target": f"map step of {big_map['items']:,} core.echo items in memory: <= 2 KiB peak RSS "
                "per item above idle, <= 2x the raw ThreadPoolExecutor per item",
                "figure": f"{kib:.2f} KiB/item; {big_map['us_per_item']} µs/item = {big_map['vs_raw_pool']}x "
                f"(raw pool {big_map['raw_pool_us_per_item']} µs)",
                "met": kib <= 2.0 and big_map["vs_raw_pool"] <= 2.0,
            }
        )
    dask = results.get("dask", {})
    if "overhead" in dask:
        o, c = dask["overhead"], dask["cpu"]
        found.append(
            {
                "target": "Dask backend no-op step <= 1.3x a raw Client.submit on the same cluster",
                "figure": f"{o['dask_backend_us_per_step']} vs {o['raw_submit_us_per_task']} µs "
                f"= {o['ratio']}x (median of {o['rounds']} rounds; per round {o['round_ratio_range'][0]}-"
                f"{o['round_ratio_range'][1]}x)",
                "met": o["ratio"] <= 1.3,
            }
        )
        found.append(
            {
                "target": "8 CPU-bound steps on a 2-process LocalCluster >= 1.7x faster than local threads",
                "figure": f"{c['local_threads_seconds']} s vs {c['dask_2_processes_seconds']} s = "
                f"{c['speedup']}x (per round {c['round_speedup_range'][0]}-{c['round_speedup_range'][1]}x)",
                "met": c["speedup"] >= 1.7,
            }
        )
    top = max(results["concurrency"]["levels"], key=lambda lv: lv["clients"])
    found.append(
        {
            "target": f"{top['clients']} concurrent HTTP clients: 0 errors",
            "figure": f"{top['errors']} errors in {top['calls']} calls, p99 {top['p99_ms']} ms",
            "met": top["errors"] == 0,
        }
    )
    m = results["memory"]
    bounded = m["growth_second_half_mib"] <= 0.05 * m["final_rss_mib"]
    found.append(
        {
            "target": "memory after 100k runs bounded by retention",
            "figure": f"{m['final_rss_mib']} MiB, {m['growth_second_half_mib']:+} MiB over the second half",
            "met": bounded,
        }
    )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one round (a smoke run)")
    args = parser.parse_args()
    quick = args.quick
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": quick,
    }

    def section(key: str, report: Any, figures: dict[str, Any]) -> None:
        results[key] = figures
        print(report(figures), flush=True)
        print(flush=True)

    section(
        "overhead",
        bench_overhead.report,
        bench_overhead.run(steps=1_000 if quick else 10_000, repeat=1 if quick else 5),
    )
    section(
        "validation",
        bench_validation.report,
        bench_validation.run(steps=10_000 if quick else 100_000, repeat=1 if quick else 3),
    )
    section(
        "memory",
        bench_memory_report,
        _json_script("bench_memory.py", "--runs", "5000" if quick else "100000"),
    )
    section(
        "map_memory",
        bench_map_memory_report,
        _json_script(
            "bench_map_memory.py",
            "--items",
            "10000" if quick else "100000",
            "--rounds",
            "1" if quick else "3",
        ),
    )
    section(
        "scheduler",
        bench_scheduler.report,
        bench_scheduler.run(tasks=1_000 if quick else 10_000, repeat=1 if quick else 3),
    )
    section("store", bench_store.report, bench_store.run(transitions=2_000 if quick else 20_000))
    section("store_history", bench_store.history_report, bench_store.history(5_000 if quick else 50_000))
    section(
        "store_big_history",
        bench_store.big_history_report,
        bench_store.big_history(20_000 if quick else 200_000),
    )
    section(
        "mcp_roundtrip",
        lambda f: (
            "MCP round trip (stdio and HTTP, bench_mcp_roundtrip.py):\n  " + f["output"].replace("\n", "\n  ")
        ),
        _roundtrip(calls=20 if quick else 50, rounds=3 if quick else 20),
    )
    section(
        "cold_start",
        bench_cold_start_report,
        _json_script("bench_cold_start.py", "--rounds", "3" if quick else "9"),
    )
    section(
        "concurrency",
        bench_concurrency.report,
        _json_script("bench_concurrency.py", "--calls", "3" if quick else "20"),
    )
    section("dask", bench_dask_report, _dask(300 if quick else 1_000, 2 if quick else 9))

    results["targets"] = targets(results)
    results["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    print("Targets (issue 7):")
    for t in results["targets"]:
        print(f"  [{'met' if t['met'] else 'MISSED':>6}] {t['target']}: {t['figure']}")
    # A smoke run must not overwrite the figures docs/PERFORMANCE.md quotes.
    out = RESULTS.with_name("quick.json") if quick else RESULTS
    print(f"\nmake bench took {results['elapsed_seconds']} s; figures in {out.relative_to(HERE.parent)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out)


def bench_cold_start_report(figures: dict[str, Any]) -> str:
    import bench_cold_start

    return bench_cold_start.report(figures)


def bench_map_memory_report(figures: dict[str, Any]) -> str:
    import bench_map_memory

    return bench_map_memory.report(figures)


def bench_dask_report(figures: dict[str, Any]) -> str:
    if "skipped" in figures:
        return f"Dask backend: skipped ({figures['skipped']})"
    import bench_dask

    return bench_dask.report(figures)


def bench_memory_report(figures: dict[str, Any]) -> str:
    import bench_memory

    return bench_memory.report(figures)


if __name__ == "__main__":
    main()
