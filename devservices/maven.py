"""Fetch the dependencies of a ``pom.xml`` from Maven Central into a cache directory, once.

Shared by the Spark Kafka connector jars (``tickwire.spark.jars``) and the development Kafka
broker (:mod:`tickwire.devservices.kafka_broker`). The directory's ``.complete`` marker holds
the pom's digest, so changing a dependency refreshes the cache; concurrent processes wait on a
lock file; the jars land in a staging directory that is swapped in whole, so a cache is never
seen half-filled.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

INSTALL_HINT = "install it with `apt-get install -y maven openjdk-17-jdk-headless`"


class MavenError(RuntimeError):
    """Maven is missing or the fetch failed; the message says which and what to do."""


def cache_root() -> Path:
    """Where downloads are cached: ``$TICKWIRE_CACHE``, else ``~/.cache/tickwire``."""
    return Path(os.environ.get("TICKWIRE_CACHE") or Path.home() / ".cache" / "tickwire")


def fetch_dependencies(
    pom: Path,
    dest: Path,
    *,
    what: str,
    expect: str,
    properties: dict[str, str] | None = None,
    quiet: bool = False,
    hint: Callable[[str], str] | None = None,
) -> Path:
    """``dest`` holding ``pom``'s dependencies (``mvn dependency:copy-dependencies``), fetched
    unless the cache is complete for this pom. ``what`` names them in messages; a fetch without
    a file matching the glob ``expect`` failed; ``hint(maven_output)`` may add advice to the
    error. Safe to call from concurrent processes."""
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    marker = dest / ".complete"

    def complete() -> bool:
        return marker.exists() and marker.read_text().strip() == digest

    if complete():
        return dest
    if shutil.which("mvn") is None:
        raise MavenError(f"Maven (mvn) is needed once to fetch {what} from Maven Central; {INSTALL_HINT}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete():
            return dest  # another process fetched while we waited for the lock
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        command = [
            "mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
            *(f"-D{key}={value}" for key, value in (properties or {}).items()),
            f"-DoutputDirectory={staging}",
        ]
        if not quiet:
            print(f"fetching {what} into {dest}", file=sys.stderr)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not any(staging.glob(expect)):
            shutil.rmtree(staging, ignore_errors=True)
            output = (result.stdout + result.stderr).strip()[-3000:]
            advice = hint(output) if hint is not None else ""
            raise MavenError(f"fetching {what} failed ({' '.join(command)}):\n{output}{advice}")
        (staging / ".complete").write_text(digest + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    return dest
