"""How long does the command line take to answer? Wall clock of `leenet --help`, `leenet datasets`,
`leenet backbones`, an argument error, `import leenet` and `leenet-runtime --help`, each the
median of ``--repeats`` fresh processes (the commands interleaved, so a change in the machine's
load touches them all alike). ``python -c pass`` is timed too: the interpreter's own start.

Usage::

    python benchmarks/cli_speed.py --out benchmarks/results/cli_speed.json

The console scripts are the ones beside this Python (a virtual environment's ``bin/``); the
code they run is whichever ``leenet`` that Python imports (``PYTHONPATH`` first).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def commands() -> dict[str, list[str]]:
    """Name → command line of every case timed."""
    leenet, runtime = str(BIN / "leenet"), str(BIN / "leenet-runtime")
    for script in (leenet, runtime):
        if not Path(script).is_file():
            sys.exit(f"error: no {script}: install LEENet into this Python (pip install -e ./runtime -e .)")
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "leenet --help": [leenet, "--help"],
        "leenet datasets": [leenet, "datasets"],
        "leenet backbones": [leenet, "backbones"],
        "leenet run --alphas 2 (argument error)": [leenet, "run", "--alphas", "2"],
        "import leenet": [sys.executable, "-c", "import leenet"],
        "leenet-runtime --help": [runtime, "--help"],
    }


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_once(argv: list[str]) -> float:
    """Seconds from starting ``argv`` to its exit (its output discarded)."""
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per command (default 5)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--note", default="", help="a word on the machine, e.g. its load")
    args = parser.parse_args()
    cases = commands()
    load_before = os.getloadavg()
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, argv in cases.items():
            runs[name].append(time_once(argv))
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_1_5_15_min": {"before": [round(v, 2) for v in load_before],
                                    "after": [round(v, 2) for v in os.getloadavg()]},
        "python": platform.python_version(),
        "repeats": args.repeats,
        "note": args.note,
        "median_s": {name: round(statistics.median(times), 3) for name, times in runs.items()},
        "runs_s": {name: [round(t, 3) for t in times] for name, times in runs.items()},
    }
    for name, median in results["median_s"].items():
        print(f"{median:7.3f} s  {name}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
