"""The audit's speed and memory on a generated export, against the time to merely parse it.

    python benchmarks/audit.py [--patients 100000] [--export DIR] [--engines local,spark] [--keep]

Generates the export with make_export.py (or reuses --export DIR), then, in the same run:
- the floor: every line of the files the audit reads parsed with orjson, in one process and in one
  process per core (the local engine's parallelism), nothing else done;
- `lumbar-mri-cds audit` with each engine, as a separate process: wall time, orders per second, and
  the peak resident memory of its whole process tree (the CLI, its workers, Spark's JVM), sampled
  every 0.1 s from /proc and summed across processes (pages shared after fork counted once per process,
  so this over-states, never under-states).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from service.audit import bulk  # noqa: E402
from service.audit import export as export_mod  # noqa: E402
from service.audit import local  # noqa: E402


def _parse_chunk(chunk: local.Chunk) -> int:
    n = 0
    for line in export_mod.open_lines(chunk.file, chunk.start, chunk.end):
        if line.strip():
            orjson.loads(line)
            n += 1
    return n


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def floor(export_dir: Path, workers: int) -> tuple[float, float, int]:
    """Wall and CPU seconds to parse every line of the files the audit reads, and the line count."""
    kinds = set(bulk.export_types())
    files = [f for f in export_mod.discover(export_dir) if f.kind in kinds]
    chunks = local.plan_chunks(files)
    started, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
    if workers == 1:
        lines = sum(_parse_chunk(c) for c in chunks)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            lines = sum(pool.map(_parse_chunk, chunks))
    used = time.process_time() - cpu + _children_cpu() - children
    return time.perf_counter() - started, used, lines


def _tree(pid: int) -> list[int]:
    pids, stack = [], [pid]
    while stack:
        current = stack.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return pids


def _cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (/proc/PID/stat; its reaped children are in the tree already)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_engine(export_dir: Path, engine: str, out: Path) -> tuple[float, float, int, dict]:
    """(wall seconds, CPU seconds of the process tree, its peak RSS in kB, summary) of one audit run."""
    command = [sys.executable, "-m", "service.cli", "audit", str(export_dir), "--out", str(out), "--engine", engine,
               "--since", "2025-01-01", "--until", "2025-12-31"]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    ticks: dict[int, int] = {}  # the last CPU reading of every process of the tree (a JVM is not reaped by us)
    while process.poll() is None:
        tree = _tree(process.pid)
        peak = max(peak, sum(_rss_kb(p) for p in tree))
        ticks.update({p: max(ticks.get(p, 0), _cpu_ticks(p)) for p in tree})
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"{engine} engine failed ({process.returncode}):\n{stderr[-3000:]}")
    cpu = sum(ticks.values()) / os.sysconf("SC_CLK_TCK")  # the last 0.1 s of each process may be missed
    return elapsed, cpu, peak, json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--export", type=Path, help="use (or generate into) this export directory")
    parser.add_argument("--engines", default="local,spark")
    parser.add_argument("--keep", action="store_true", help="keep the generated export and outputs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    export_dir = args.export or work / "export"
    if not export_dir.exists():
        started = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / "make_export.py"), str(export_dir), "--patients", str(args.patients)],
                       check=True)
        print(f"generated {args.patients} patients in {time.perf_counter() - started:.1f} s")
    size = sum(p.stat().st_size for p in export_dir.iterdir())
    print(f"export: {export_dir} ({size / 1e9:.2f} GB)")
    cores = os.cpu_count() or 1
    floor_1, cpu_1, lines = floor(export_dir, 1)
    floor_n, cpu_n, _ = floor(export_dir, cores)
    print(f"floor: orjson parse of {lines} lines: {floor_1:.1f} s ({cpu_1:.1f} s CPU) in 1 process, "
          f"{floor_n:.1f} s ({cpu_n:.1f} s CPU) in {cores} processes")
    for engine in args.engines.split(","):
        seconds, cpu, peak, summary = run_engine(export_dir, engine, work / f"out-{engine}")
        orders = summary["orders"]
        print(f"{engine}: {orders} orders in {seconds:.1f} s = {orders / seconds:.0f} orders/s "
              f"({cpu:.1f} s CPU, {cpu / cpu_1:.2f}x the floor's CPU); wall {seconds / floor_1:.2f}x the 1-process "
              f"floor, {seconds / floor_n:.2f}x the {cores}-process floor; peak RSS {peak / 1024:.0f} MB (process tree)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept in {work}")


if __name__ == "__main__":
    main()
