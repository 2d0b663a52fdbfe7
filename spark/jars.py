"""The Kafka connector jars for the installed PySpark, fetched once with Maven and cached.

Spark's own ``spark.jars.packages`` resolves through Ivy, which ignores Maven's settings.xml
(mirrors, proxies, credentials), so we resolve with Maven and hand the files to ``spark.jars``:

    mvn -q -B -f spark/pom.xml dependency:copy-dependencies \
        -Dspark.version=<pyspark version> -DoutputDirectory=<cache>/spark-jars/<version>

The cache is ``${TICKWIRE_CACHE:-~/.cache/tickwire}/spark-jars/<version>``; a directory is used
only when complete (a marker with the pom's digest), so an interrupted fetch is redone, and
concurrent fetches wait on a lock. Jars that PySpark already ships are never put on the
classpath twice.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import os
import re
import sys
from pathlib import Path

from tickwire.devservices.maven import MavenError, cache_root, fetch_dependencies
from tickwire.spark import POM
CONNECTOR = "spark-sql-kafka-0-10_2.13"
_VERSIONED_JAR = re.compile(r"^(?P<artifact>.+?)-\d+(\.\d+)+[\w.\-]*\.jar$")


class JarsError(RuntimeError):
    """Fetching the connector jars failed; the message says why and what to do."""


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


def fetch_jars(version: str | None = None, pom=POM, quiet: bool = False) -> list[Path]:
    """Return the connector jars for Spark ``version`` (default: the installed PySpark),
    fetching them when the cache lacks them; none when Spark already ships the connector (an
    image with it in ``$SPARK_HOME/jars``). Safe to call from concurrent processes."""
    version = version or pyspark_version()
    if any(any(d.glob(f"{CONNECTOR}-*.jar")) for d in bundled_jar_dirs()):
        return []
    jars_dir = _fetch(version, pom, cache_root() / "spark-jars" / version, quiet)
    shipped = {artifact_name(j) for d in bundled_jar_dirs() for j in d.glob("*.jar")}
    jars = sorted(j for j in jars_dir.glob("*.jar") if artifact_name(j) not in shipped)
    if not any(artifact_name(j) == CONNECTOR for j in jars):
        raise JarsError(f"{jars_dir} holds no {CONNECTOR} jar; delete it and fetch again")
    return jars


def _fetch(version: str, pom, jars_dir: Path, quiet: bool) -> Path:
    def unpublished(output: str) -> str:
        if "Could not find artifact" not in output:
            return ""
        return (f"\nMaven Central has no {CONNECTOR} {version}: install a PySpark version whose "
                "connector is published (see the `spark` extra in pyproject.toml).")

    try:
        with importlib.resources.as_file(pom) as pom_path:
            return fetch_dependencies(pom_path, jars_dir, what=f"the Spark {version} Kafka connector jars",
                                      expect=f"{CONNECTOR}-{version}.jar", properties={"spark.version": version},
                                      quiet=quiet, hint=unpublished)
    except MavenError as error:
        raise JarsError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    """``python -m tickwire.spark.jars [VERSION]``: fetch (if needed) and print the jar paths."""
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
