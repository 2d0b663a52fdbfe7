#!/usr/bin/env python3
"""Check the docker compose stack without a Docker engine.

    python scripts/validate_stack.py            # every check; exit 1 on any problem

- compose/docker-compose.yml loaded by compose-go (the loader of docker compose itself) with the
  variables of .env.example, validation on (tools/composecheck), and our cross-references:
  images pinned, depends_on targets and conditions, health checks, restart policies, resource
  limits, named volumes and networks declared and used, ports bound to 127.0.0.1, every ${VAR}
  in .env.example and the other way round, required secrets without defaults, bind mounts and
  Dockerfile COPY sources that exist;
- Prometheus: promtool check config / check rules / test rules;
- every PromQL expression (dashboards and rules) parsed by Prometheus' parser (tools/promqlcheck);
- dashboards strictly decoded with grafana-foundation-sdk (tools/dashcheck), datasource uids
  provisioned;
- Alloy config parsed by Alloy's parser (tools/alloycheck), Loki config keys;
- generated files up to date (`tickwire generate compose|grafana --check`).

Go tools are built with `go build` into $TICKWIRE_TOOLS_BIN (default ~/.cache/tickwire/bin),
only when their sources changed. Functions return lists of problems so tests can call them.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
TOOLS_DIR = ROOT / "tools"
TOOLS = ("composecheck", "promqlcheck", "alloycheck", "dashcheck")
REQUIRED_VOLUMES = ("kafka-data", "postgres-data", "spark-checkpoints", "grafana-data", "loki-data")
GOOD_CONDITIONS = {"service_healthy", "service_completed_successfully"}
VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$__auto": "1m"}


# -- Go tools --------------------------------------------------------------------------------------

def tools_bin() -> Path:
    return Path(os.environ.get("TICKWIRE_TOOLS_BIN", Path.home() / ".cache/tickwire/bin"))


def build_tools() -> Path:
    """Build the Go validators unless they are newer than every file under tools/."""
    out = tools_bin()
    newest_source = max(p.stat().st_mtime for p in TOOLS_DIR.rglob("*") if p.is_file())
    built = [out / name for name in TOOLS]
    if all(p.is_file() and p.stat().st_mtime >= newest_source for p in built):
        return out
    go = shutil.which("go") or "/usr/local/go/bin/go"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOFLAGS": "-mod=readonly"}
    result = subprocess.run([go, "build", "-o", str(out) + "/", "./..."], cwd=TOOLS_DIR, env=env,
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"go build in tools/ failed:\n{result.stdout}{result.stderr}")
    for path in built:
        path.touch()
    return out


def _tool(name: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(build_tools() / name), *args], input=stdin, capture_output=True, text=True)


# -- compose ---------------------------------------------------------------------------------------

def env_example_vars(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def filled_env_file(path: Path = ENV_EXAMPLE) -> Path:
    """.env.example with a placeholder for every empty (= required, secret) value."""
    lines = []
    for key, value in env_example_vars(path).items():
        if not value:
            value = "MkU3OEVBNTcwNTJENDM2Qk" if key == "KAFKA_CLUSTER_ID" else f"example-{key.lower().replace('_', '-')}"
        lines.append(f"{key}={value}")
    handle = tempfile.NamedTemporaryFile("w", suffix=".env", delete=False)
    handle.write("\n".join(lines) + "\n")
    handle.close()
    return Path(handle.name)


def load_project(compose_file: Path = COMPOSE_FILE, env_file: Path | None = None) -> tuple[dict | None, str]:
    """compose-go's resolved model of the file, or None and the loader's message."""
    env_file = env_file or filled_env_file()
    result = _tool("composecheck", "-f", str(compose_file), "-env", str(env_file))
    if result.returncode:
        return None, result.stderr.strip()
    return json.loads(result.stdout), ""


def _image_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest") and "$" not in tag


def _dockerfile_problems(dockerfile: Path, context: Path) -> list[str]:
    problems = []
    shown = os.path.relpath(dockerfile, ROOT)
    if not dockerfile.is_file():
        return [f"{shown}: Dockerfile not found"]
    args: dict[str, str] = {}
    copied: set[str] = set()
    installs_project = False
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        op = words[0].upper()
        if op == "ARG" and len(words) > 1 and "=" in words[1]:
            key, value = words[1].split("=", 1)
            args[key] = value
        elif op == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[1])
            if not _image_pinned(image):
                problems.append(f"{shown}: base image {image} is not pinned to a version")
        elif op in ("COPY", "ADD") and not any(w.startswith("--from") for w in words):
            sources = [w for w in words[1:-1] if not w.startswith("--")]
            copied.update(source.rstrip("/") for source in sources)
            for source in sources:
                if not (context / source).exists():
                    problems.append(f"{shown}: {op} source {source} does not exist in the build context")
        elif op == "RUN" and re.search(r"pip install[^&;]*[\"' ]\.(\[[^\]]*\])?[\"' ]", line + " "):
            installs_project = True
    if installs_project:
        for folder in sorted(_package_folders(context) - copied):
            problems.append(f"{shown}: installs the project but does not COPY {folder}/ (pyproject.toml packages it)")
    return problems


def _package_folders(root: Path) -> set[str]:
    """The folders the wheel is built from: pyproject's package-dir targets and tickwire/."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {"tickwire", *(path.split("/")[0] for path in setuptools.get("package-dir", {}).values())}


def compose_problems(compose_file: Path = COMPOSE_FILE, env_example: Path = ENV_EXAMPLE) -> list[str]:
    problems: list[str] = []
    where = compose_file.name
    raw_text = compose_file.read_text()
    raw = yaml.safe_load(raw_text)
    if "version" in raw:
        problems.append(f"{where}: top-level `version:` is obsolete in the Compose Specification")

    project, error = load_project(compose_file, filled_env_file(env_example))
    if project is None:
        return problems + [f"{where}: compose-go rejects the file: {error}"]

    # ${VAR} references against .env.example, and secrets without defaults
    declared = env_example_vars(env_example)
    used: dict[str, set[str]] = {}
    code = "\n".join(line for line in raw_text.splitlines() if not line.lstrip().startswith("#"))
    for match in VAR_RE.finditer(code.replace("$$", "")):
        used.setdefault(match.group(1), set()).add(match.group(2) or "")
    for var in sorted(set(used) - set(declared)):
        problems.append(f"{where}: ${{{var}}} is used but not listed in .env.example")
    for var in sorted(set(declared) - set(used)):
        problems.append(f".env.example: {var} is not used by {where}")
    for var, operators in sorted(used.items()):
        secret = any(word in var for word in ("PASSWORD", "SECRET", "TOKEN"))
        if secret and operators != {":?"}:
            problems.append(f"{where}: secret ${{{var}}} must be required with ${{{var}:?message}}, never defaulted")
        if secret and declared.get(var):
            problems.append(f".env.example: {var} must be empty (no default passwords)")

    services: dict = project["services"]
    raw_services: dict = raw.get("services", {})
    volumes = set(project.get("volumes") or {})
    networks = set(project.get("networks") or {})
    used_volumes: set[str] = set()
    for name, service in sorted(services.items()):
        raw_service = raw_services.get(name, {})
        at = f"{where}: services.{name}"
        image = service.get("image", "")
        if not image:
            problems.append(f"{at}: no image: name (pin built images with a tag too)")
        elif not _image_pinned(image):
            problems.append(f"{at}: image {image} is not pinned to a version")
        one_shot = service.get("restart") in (None, "no")
        if "restart" not in raw_service:
            problems.append(f"{at}: no restart policy")
        if not one_shot and not service.get("healthcheck"):
            problems.append(f"{at}: long-running service without a healthcheck")
        limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        if not limits.get("memory") or not limits.get("cpus"):
            problems.append(f"{at}: no deploy.resources.limits (cpus and memory)")
        for target, dep in (service.get("depends_on") or {}).items():
            if target not in services:
                problems.append(f"{at}: depends_on {target}, which is not a service")
                continue
            condition = dep.get("condition")
            if condition not in GOOD_CONDITIONS:
                problems.append(f"{at}: depends_on {target} with condition {condition} (use service_healthy or service_completed_successfully)")
            elif condition == "service_healthy" and not services[target].get("healthcheck"):
                problems.append(f"{at}: waits for {target} to be healthy, but {target} has no healthcheck")
            elif condition == "service_completed_successfully" and services[target].get("restart") not in (None, "no"):
                problems.append(f"{at}: waits for {target} to complete, but {target} restarts")
        for port in service.get("ports") or []:
            if port.get("host_ip") != "127.0.0.1":
                problems.append(f"{at}: port {port.get('published')}:{port.get('target')} is not bound to 127.0.0.1")
        for mount in service.get("volumes") or []:
            if mount.get("type") == "volume":
                used_volumes.add(mount["source"])
                if mount["source"] not in volumes:
                    problems.append(f"{at}: volume {mount['source']} is not declared under volumes:")
            elif mount.get("type") == "bind":
                source = Path(mount["source"])
                source = source if source.is_absolute() else (compose_file.parent / source).resolve()
                if str(source).startswith("/var/run/"):
                    continue
                if not source.exists():
                    problems.append(f"{at}: bind mount source {mount['source']} does not exist")
        for network in service.get("networks") or {}:
            if network not in networks:
                problems.append(f"{at}: network {network} is not declared")
        build = service.get("build")
        if build:
            context = (compose_file.parent / build.get("context", ".")).resolve()
            problems += _dockerfile_problems(context / build.get("dockerfile", "Dockerfile"), context)
    for volume in sorted(volumes - used_volumes):
        problems.append(f"{where}: volume {volume} is declared but no service mounts it")
    for volume in REQUIRED_VOLUMES:
        if volume not in volumes:
            problems.append(f"{where}: named volume {volume} is missing")
    return problems


def required_vars_fail_fast(env_example: Path = ENV_EXAMPLE) -> list[str]:
    """Loading with .env.example as is (secrets empty) must fail, naming a missing variable."""
    project, error = load_project(COMPOSE_FILE, env_example)
    if project is not None:
        return ["compose loads with the empty secrets of .env.example: secrets have defaults somewhere"]
    if "required variable" not in error:
        return [f"compose fails with .env.example, but not for a missing required variable: {error}"]
    return []


# -- Prometheus ------------------------------------------------------------------------------------

def _promtool() -> str:
    tool = shutil.which("promtool")
    if not tool:
        raise RuntimeError("promtool not found: run scripts/install_system_deps.sh (Debian package prometheus)")
    return tool


def prometheus_problems() -> list[str]:
    problems = []
    prom = COMPOSE_DIR / "prometheus"
    rules = sorted((prom / "rules").glob("*.yml"))
    with tempfile.TemporaryDirectory() as tmp:
        config = yaml.safe_load((prom / "prometheus.yml").read_text())
        config["rule_files"] = [str(r) for r in rules]
        local = Path(tmp) / "prometheus.yml"
        local.write_text(yaml.safe_dump(config))
        steps = [[_promtool(), "check", "config", str(local)],
                 [_promtool(), "check", "rules", *map(str, rules)],
                 [_promtool(), "test", "rules", *map(str, sorted((prom / "tests").glob("*.yml")))]]
        for command in steps:
            result = subprocess.run(command, capture_output=True, text=True, cwd=prom / "tests")
            if result.returncode:
                problems.append(f"{' '.join(command[1:3])} failed:\n{result.stdout}{result.stderr}")
    jobs = {job["job_name"] for job in yaml.safe_load((prom / "prometheus.yml").read_text())["scrape_configs"]}
    for needed in ("tickwire", "spark-job", "kafka-exporter", "postgres-exporter"):
        if needed not in jobs:
            problems.append(f"prometheus.yml: no scrape job {needed}")
    return problems


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((COMPOSE_DIR / "grafana/dashboards").glob("*.json"))}


def _panels(board: dict):
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def promql_expressions() -> list[dict]:
    items = []
    for name, board in dashboards().items():
        for panel in _panels(board):
            for target in panel.get("targets", []):
                if (target.get("datasource") or panel.get("datasource") or {}).get("type") == "prometheus":
                    expr = target["expr"]
                    for var, value in GRAFANA_VARS.items():
                        expr = expr.replace(var, value)
                    items.append({"where": f"{name}: {panel['title']} ({target['refId']})", "expr": expr})
    for path in sorted((COMPOSE_DIR / "prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                items.append({"where": f"{path.name}: {rule.get('alert') or rule.get('record')}", "expr": rule["expr"]})
    return items


def promql_problems(items: list[dict] | None = None) -> list[str]:
    items = promql_expressions() if items is None else items
    result = _tool("promqlcheck", stdin=json.dumps(items))
    return [result.stdout.strip() or result.stderr.strip()] if result.returncode else []


# -- Grafana, Alloy, Loki --------------------------------------------------------------------------

def grafana_problems() -> list[str]:
    problems = []
    files = sorted((COMPOSE_DIR / "grafana/dashboards").glob("*.json"))
    result = _tool("dashcheck", *map(str, files))
    if result.returncode:
        problems.append(f"dashboards do not match Grafana's dashboard schema:\n{result.stdout}{result.stderr}")
    provisioned = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/datasources/datasources.yml").read_text())
    uids = {ds["uid"]: ds["type"] for ds in provisioned["datasources"]} | {"-- Grafana --": "grafana"}
    for name, board in dashboards().items():
        refs = [p.get("datasource") for p in _panels(board)]
        refs += [t.get("datasource") for p in _panels(board) for t in p.get("targets", [])]
        refs += [v.get("datasource") for v in board.get("templating", {}).get("list", [])]
        for ref in filter(None, refs):
            if uids.get(ref.get("uid")) != ref.get("type"):
                problems.append(f"{name}: datasource {ref} is not provisioned")
    providers = yaml.safe_load((COMPOSE_DIR / "grafana/provisioning/dashboards/dashboards.yml").read_text())["providers"]
    mounts = {m.split(":")[1] for m in yaml.safe_load(COMPOSE_FILE.read_text())["services"]["grafana"]["volumes"]}
    for provider in providers:
        if provider["options"]["path"] not in mounts:
            problems.append(f"dashboards.yml: provider path {provider['options']['path']} is not mounted into grafana")
    return problems


def alloy_problems(path: Path = COMPOSE_DIR / "alloy/config.alloy") -> list[str]:
    result = _tool("alloycheck", str(path))
    if result.returncode:
        return [f"{path.name}: {result.stderr.strip()}"]
    blocks = {line.split()[0] for line in result.stdout.splitlines()}
    missing = {"discovery.docker", "loki.source.docker", "loki.write"} - blocks
    problems = [f"{path.name}: no {name} block" for name in sorted(missing)]
    if "http://loki:3100/loki/api/v1/push" not in path.read_text():
        problems.append(f"{path.name}: loki.write does not push to the loki service")
    return problems


def loki_problems(path: Path = COMPOSE_DIR / "loki/loki.yml") -> list[str]:
    config = yaml.safe_load(path.read_text())
    problems = []
    if config.get("server", {}).get("http_listen_port") != 3100:
        problems.append(f"{path.name}: server.http_listen_port must be 3100 (healthcheck, Alloy, Grafana use it)")
    if not config.get("schema_config", {}).get("configs"):
        problems.append(f"{path.name}: no schema_config.configs")
    prefix = config.get("common", {}).get("path_prefix", "")
    if not prefix.startswith("/loki"):
        problems.append(f"{path.name}: common.path_prefix must be on the loki-data volume (/loki)")
    for key in ("auth_enabled", "common", "limits_config", "compactor"):
        if key not in config:
            problems.append(f"{path.name}: missing {key}")
    return problems


def generated_problems() -> list[str]:
    problems = []
    tickwire = shutil.which("tickwire", path=str(Path(sys.executable).parent)) or "tickwire"
    for target, folder in (("compose", COMPOSE_DIR), ("grafana", COMPOSE_DIR / "grafana/dashboards")):
        result = subprocess.run([tickwire, "generate", target, "--check", str(folder)], capture_output=True, text=True, cwd=ROOT)
        if result.returncode:
            problems.append(f"`tickwire generate {target}` output differs from the committed files:\n{result.stdout}{result.stderr}")
    return problems


CHECKS = {
    "compose": compose_problems,
    "required variables": required_vars_fail_fast,
    "prometheus": prometheus_problems,
    "promql": promql_problems,
    "grafana": grafana_problems,
    "alloy": alloy_problems,
    "loki": loki_problems,
    "generated files": generated_problems,
}


def main() -> int:
    failed = 0
    for name, check in CHECKS.items():
        problems = check()
        print(f"{'ok  ' if not problems else 'FAIL'} {name}")
        for problem in problems:
            print(f"     {problem}")
        failed += bool(problems)
    print(f"{len(CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
