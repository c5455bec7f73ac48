"""Instructions per call of the whole request path, service against floor: the figure noise cannot move.

    python benchmarks/instructions.py [--calls N]      # needs valgrind (Debian: apt-get install valgrind)

On a shared 2-core virtual machine CPU time per call moves by ±20 % from one round to the next
(`wsgi.py`). The number of instructions executed does not. This runs `wsgi.py --only APP` under
valgrind (cachegrind, no cache simulation) twice per app, with 50 and 50 + N measured calls after the
same start-up and warm-up, and divides the difference by N: instructions per call of each app's
WSGI path (token check, parse, and for the service everything else), and their ratio.

Instructions are not time: a system call, an fsync or a cache miss costs more than its count. Read
this beside `wsgi.py` (CPU time) and `load.py` (HTTP).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE_CALLS = 50


def instructions(app: str, calls: int) -> int:
    """Instructions executed by `wsgi.py --only app --calls calls` (its own process, not the
    token-signing children it forks)."""
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
               sys.executable, str(HERE / "wsgi.py"), "--only", app, "--calls", str(calls)]
    process = subprocess.run(command, capture_output=True, text=True, check=True)
    main = re.search(r"^==(\d+)== Command:", process.stderr, re.MULTILINE)
    assert main is not None, process.stderr[-2000:]
    refs = re.search(rf"^=={main.group(1)}== I\s+refs:\s+([\d,]+)", process.stderr, re.MULTILINE)
    assert refs is not None, process.stderr[-2000:]
    return int(refs.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="measured calls (the difference between the two runs)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    per_call = {}
    for app in ("service", "floor"):
        low = instructions(app, BASE_CALLS)
        high = instructions(app, BASE_CALLS + args.calls)
        per_call[app] = (high - low) / args.calls
        print(f"{app:<8} {per_call[app] / 1e6:6.2f} M instructions per call")
    print(f"floor/service instruction ratio {per_call['floor'] / per_call['service']:.2f}")


if __name__ == "__main__":
    main()
