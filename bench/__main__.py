"""Run every benchmark against its baseline in one run and print one table: ``python -m bench``.

Each figure is compared with a baseline measured in the same run on the same machine, so the
ratio, not the absolute number, is what carries between machines and commits. ``--quick`` runs
small sizes in well under a minute for CI and judges no targets. The default runs each benchmark
once at full size, and ``--full`` runs each three times and reports medians. docs/benchmarks.md
explains each figure, its baseline and its target.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from app.config import default_pool_size
from bench import cpu, kernels, progress, startup, throughput
from bench.plan import Plan, Servers, make_plan
from bench.report import Figure, Skipped, machine, median_figures, print_table, write_json
from bench.servers import ServerError, ServerProcess, free_port, start_server, stop_server, wait_ready

Benchmark = Callable[[Plan, Servers], Awaitable[tuple[list[Figure], list[Skipped]]]]
BENCHMARKS: dict[str, Benchmark] = {
    "jobs": throughput.run_trivial_jobs,
    "cpu": cpu.run_cpu_jobs,
    "uploads": throughput.run_uploads,
    "progress": progress.run_progress,
    "kernels": kernels.run_kernels,
    "startup": startup.run_startup,
}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: use a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid number {value}: use at least 1")
    return value


def benchmark_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"invalid benchmark names {unknown or text!r}: use a comma-separated "
                                         f"list of {', '.join(BENCHMARKS)}")
    return names


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description="Run every benchmark against its baseline and print one table.")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_const", dest="mode", const="quick",
                       help="small sizes, about 15 s on 2 cores, no targets judged (for CI)")
    sizes.add_argument("--full", action="store_const", dest="mode", const="full",
                       help="full sizes, each benchmark run three times, medians reported")
    parser.add_argument("--workers", type=positive_int, default=default_pool_size(),
                        help="worker processes for Offload and for every baseline pool (default: the CPU count)")
    parser.add_argument("--only", type=benchmark_names, default=list(BENCHMARKS), metavar="NAMES",
                        help=f"comma-separated benchmarks to run, of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--with-celery", action="store_true",
                        help="install celery and redis with pip if missing and compare trivial jobs with "
                             "Celery 5 on a local Redis (needs /usr/bin/redis-server)")
    parser.add_argument("--json", dest="json_path", type=Path, default=None, metavar="PATH",
                        help="also write the figures, settings and machine to PATH as JSON")
    arguments = parser.parse_args(argv)
    arguments.mode = arguments.mode or "standard"
    return arguments


def start_shared_servers(plan: Plan, directory: Path, started: list[ServerProcess]) -> Servers:
    """Start Offload and the bare upload server; each goes into ``started`` at once, to be stopped."""
    port = free_port()
    # Room for the memory benchmark's upload above the default 1 GiB limit.
    upload_limit = f"{max(plan.memory_upload_mib, plan.upload_mib) * 2}MiB"
    offload = start_server("Offload", startup.offload_arguments(
        port, directory / "data", plan.workers, "--loop-lag-interval-s", str(cpu.LAG_INTERVAL_S),
        "--max-upload-bytes", upload_limit, "--max-session-bytes", upload_limit,
    ), port, directory / "offload.log")
    started.append(offload)
    port = free_port()
    bare = start_server("bare upload", ["-m", "bench.bare_upload", str(port)], port, directory / "bare_upload.log")
    started.append(bare)
    wait_ready(offload, "GET", "/readyz", 200)
    wait_ready(bare, "PUT", "/upload/ready", 201)
    return Servers(offload, bare, directory)


def stop_servers(servers: list[ServerProcess]) -> tuple[bool, list[str]]:
    """Stop every server. Return whether all exited with code 0, and notes on exits and log problems."""
    clean = True
    notes: list[str] = []
    for server in servers:
        code = stop_server(server)
        if code != 0:
            clean = False
            outcome = "was killed after 15 s" if code is None else f"exited with code {code}"
            notes.append(f"{server.name} server {outcome}; its log ends:\n{server.log_tail()}")
        problems = server.problem_lines()
        if problems:
            notes.append(f"{server.name} server logged {len(problems)} warnings or errors, the first ones:\n"
                         + "\n".join(problems[:10]))
    return clean, notes


async def run_all(plan: Plan, names: list[str], servers: Servers) -> tuple[list[Figure], list[Skipped], bool]:
    figures: list[Figure] = []
    skipped: list[Skipped] = []
    failed = False
    for name in names:
        runs: list[list[Figure]] = []
        for repeat in range(plan.repeats):
            print(f"running {name} ({repeat + 1} of {plan.repeats})", file=sys.stderr, flush=True)
            try:
                run_figures, run_skipped = await BENCHMARKS[name](plan, servers)
            except Exception as error:
                traceback.print_exc()
                skipped.append(Skipped(name, f"failed: {type(error).__name__}: {error}"))
                failed = True
                break
            runs.append(run_figures)
            if repeat == 0:
                skipped.extend(run_skipped)
        if runs:
            figures.extend(median_figures(runs))
    return figures, skipped, failed


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    plan = make_plan(arguments.mode, arguments.workers, arguments.with_celery)
    info = machine()
    started = time.perf_counter()
    directory = Path(tempfile.mkdtemp(prefix="offload-bench-"))
    servers: list[ServerProcess] = []
    figures: list[Figure] = []
    skipped: list[Skipped] = []
    failed = True
    try:
        shared = start_shared_servers(plan, directory, servers)
        figures, skipped, failed = asyncio.run(run_all(plan, arguments.only, shared))
    except ServerError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
    finally:
        clean, notes = stop_servers(servers)
        shutil.rmtree(directory, ignore_errors=True)
    elapsed = time.perf_counter() - started

    settings = {"mode": plan.mode, "workers": plan.workers, "repeats": plan.repeats,
                "elapsed_s": round(elapsed, 1)}
    print_table(figures, skipped, plan.judged, settings, info)
    for note in notes:
        print(note, file=sys.stderr)
    if arguments.json_path is not None:
        write_json(arguments.json_path, figures, skipped, plan.judged, settings, info, elapsed)
    return 1 if failed or not clean else 0


if __name__ == "__main__":
    sys.exit(main())
