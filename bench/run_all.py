"""Run every benchmark in turn (`make bench`); each prints its figures beside its baseline.

    python bench/run_all.py            # SQLite, Kafka (with permessage-deflate and the 60 s outage), Spark end to end
    python bench/run_all.py sqlite     # just one: sqlite | kafka | spark | simulator | market | latency | floor

Run them on an otherwise idle machine: they measure CPU per message as well as rates, but the
rates depend on how much of the two cores each process gets.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "sqlite": ["sqlite_bench.py", "--repeat", "2"],
    "kafka": ["kafka_bench.py", "--repeat", "2", "--deflate", "--outage"],
    "spark": ["spark_e2e.py", "--rates", "1000,10000", "--seconds", "30", "--warmup", "15"],
    "simulator": ["simulator_bench.py"],
    "market": ["market_bench.py"],
    "latency": ["latency_bench.py"],
    "floor": ["floor_bench.py"],
}


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    failed = []
    for name in names or ["sqlite", "kafka", "spark"]:
        script, *args = BENCHES[name]
        print(f"\n=== {name}: bench/{script} {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *args]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
