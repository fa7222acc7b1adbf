"""What failure forensics cost a training loop: the output tail's copy of every write to ``sys.stdout`` /
``sys.stderr`` (the only per-step work forensics do; the traceback and the tail are recorded once, when a stage
fails).

    python benchmarks/bench_forensics.py [--prints N]

Prints ``N`` lines to a file through ``print`` with ``sys.stdout`` as it is, then with the output tail started
(``run.output_tail.OutputTail``), interleaved, median of 7 repeats each; two shapes of ``print``: one formatted
string (2 writes: the text, then the newline) and four arguments (8 writes). Reports microseconds per ``print``
and the difference. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lightning_mlflow_ext.run.output_tail import OutputTail

REPEATS = 7


def _one_string(index: int) -> None:
    print(f"step {index} loss {0.25:.4f}")


def _four_arguments(index: int) -> None:
    print("step", index, "loss", 0.25)


def _per_print_us(shape: Callable[[int], None], prints: int, *, tail: bool, folder: Path) -> float:
    with open(folder / "out.txt", "w", encoding="utf-8") as out:
        saved = sys.stdout
        sys.stdout = out
        capture = OutputTail()
        try:
            if tail:
                capture.start()
            start = time.perf_counter()
            for index in range(prints):
                shape(index)
            elapsed = time.perf_counter() - start
        finally:
            if tail:
                capture.stop()
            sys.stdout = saved
    return elapsed / prints * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prints", type=int, default=100_000)
    args = parser.parse_args()
    print(f"| print | without the output tail | with it | difference |  ({args.prints:,} prints, median of {REPEATS})")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name, shape in (('print(f"step {i} loss {x:.4f}")', _one_string), ("print(a, b, c, d)", _four_arguments)):
            plain: list[float] = []
            teed: list[float] = []
            for _ in range(REPEATS):
                plain.append(_per_print_us(shape, args.prints, tail=False, folder=Path(folder)))
                teed.append(_per_print_us(shape, args.prints, tail=True, folder=Path(folder)))
            a, b = statistics.median(plain), statistics.median(teed)
            print(f"| `{name}` | {a:.2f} µs | {b:.2f} µs | +{b - a:.2f} µs |")


if __name__ == "__main__":
    main()
