"""The Kafka connector jars for the installed PySpark, fetched once with Maven and cached.

Spark's own ``spark.jars.packages`` resolves through Ivy, which ignores Maven's settings.xml
(mirrors, proxies, credentials), so we resolve with Maven and hand the files to ``spark.jars``:

    mvn -q -B -f java/spark/pom.xml dependency:copy-dependencies \
        -Dspark.version=<pyspark version> -DoutputDirectory=<cache>/spark-jars/<version>

The cache is ``${TICKWIRE_CACHE:-~/.cache/tickwire}/spark-jars/<version>``; a directory is used
only when complete (a marker with the pom's digest), so an interrupted fetch is redone, and
concurrent fetches wait on a lock. Jars that PySpark already ships are never put on the
classpath twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

POM = Path(__file__).resolve().parent.parent / "java" / "spark" / "pom.xml"
CONNECTOR = "spark-sql-kafka-0-10_2.13"
_VERSIONED_JAR = re.compile(r"^(?P<artifact>.+?)-\d+(\.\d+)+[\w.\-]*\.jar$")


class JarsError(RuntimeError):
    """Fetching the connector jars failed; the message says why and what to do."""


def cache_root() -> Path:
    return Path(os.environ.get("TICKWIRE_CACHE") or Path.home() / ".cache" / "tickwire")


def pyspark_version() -> str:
    return importlib.metadata.version("pyspark")


def pyspark_jars_dir() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "jars"


def artifact_name(jar: Path | str) -> str:
    """``kafka-clients-3.9.2.jar`` → ``kafka-clients``."""
    name = Path(jar).name
    match = _VERSIONED_JAR.match(name)
    return match.group("artifact") if match else name


def bundled_jar_dirs() -> list[Path]:
    """Where Spark already has jars: PySpark's own, and ``$SPARK_HOME/jars`` (a Spark image)."""
    dirs = [pyspark_jars_dir()]
    if os.environ.get("SPARK_HOME"):
        dirs.append(Path(os.environ["SPARK_HOME"]) / "jars")
    return [d for d in dirs if d.is_dir()]


def fetch_jars(version: str | None = None, pom: Path = POM, quiet: bool = False) -> list[Path]:
    """Return the connector jars for Spark ``version`` (default: the installed PySpark),
    fetching them when the cache lacks them; none when Spark already ships the connector (an
    image with it in ``$SPARK_HOME/jars``). Safe to call from concurrent processes."""
    version = version or pyspark_version()
    if any(any(d.glob(f"{CONNECTOR}-*.jar")) for d in bundled_jar_dirs()):
        return []
    jars_dir = cache_root() / "spark-jars" / version
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    marker = jars_dir / ".complete"
    if not (marker.exists() and marker.read_text().strip() == digest):
        _fetch(version, pom, jars_dir, digest, quiet)
    shipped = {artifact_name(j) for d in bundled_jar_dirs() for j in d.glob("*.jar")}
    jars = sorted(j for j in jars_dir.glob("*.jar") if artifact_name(j) not in shipped)
    if not any(artifact_name(j) == CONNECTOR for j in jars):
        raise JarsError(f"{jars_dir} holds no {CONNECTOR} jar; delete it and fetch again")
    return jars


def _fetch(version: str, pom: Path, jars_dir: Path, digest: str, quiet: bool) -> None:
    if shutil.which("mvn") is None:
        raise JarsError(
            "Maven (mvn) is needed once to fetch the Spark Kafka connector from Maven Central; "
            "install it with `apt-get install -y maven openjdk-17-jdk-headless`"
        )
    jars_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(jars_dir.parent / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = jars_dir / ".complete"
        if marker.exists() and marker.read_text().strip() == digest:
            return  # another process fetched while we waited
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=jars_dir.parent))
        command = [
            "mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
            f"-Dspark.version={version}", f"-DoutputDirectory={staging}",
        ]
        if not quiet:
            print(f"fetching the Spark {version} Kafka connector jars into {jars_dir}", file=sys.stderr)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not any(staging.glob(f"{CONNECTOR}-{version}.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            output = (result.stdout + result.stderr).strip()[-3000:]
            hint = ""
            if "Could not find artifact" in output:
                hint = (
                    f"\nMaven Central has no {CONNECTOR} {version}: install a PySpark version whose "
                    "connector is published (see the `spark` extra in pyproject.toml)."
                )
            raise JarsError(f"fetching the Spark {version} connector failed ({' '.join(command)}):\n{output}{hint}")
        (staging / ".complete").write_text(digest + "\n")
        if jars_dir.exists():
            shutil.rmtree(jars_dir)
        staging.rename(jars_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m spark.jars [VERSION]``: fetch (if needed) and print the jar paths."""
    args = sys.argv[1:] if argv is None else argv
    try:
        jars = fetch_jars(args[0] if args else None)
    except JarsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(str(j) for j in jars))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
