"""The compose stack ingests as shards: every `tickwire run` service takes a distinct shard of the
same N (TICKWIRE_SHARD), the shards cover 0..N-1, each has a spool of its own, and Prometheus
scrapes each one with its shard as a label. Checked on the compose model compose-go resolves
(anchors and merges applied, as `docker compose config` does)."""

from __future__ import annotations

import pytest
import yaml

from scripts import validate_stack as vs
from tickwire.framework.sharding import parse_shard


@pytest.fixture(scope="module", autouse=True)
def go_tools():
    return vs.build_tools()


def ingest_services() -> dict[str, dict]:
    project, error = vs.load_project()
    assert project is not None, error
    return {name: s for name, s in project["services"].items()
            if str(s.get("image", "")).startswith("tickwire/ingest") and list(s.get("command") or [])[:1] == ["run"]}


def test_the_ingest_services_are_the_shards_of_one_n_each_with_its_own_spool():
    services = ingest_services()
    assert len(services) >= 2, sorted(services)
    shards = {name: parse_shard(s["environment"]["TICKWIRE_SHARD"]) for name, s in services.items()}
    counts = {shard.count for shard in shards.values()}
    assert counts == {len(services)}, shards
    assert sorted(shard.index for shard in shards.values()) == list(range(len(services)))
    spools = [next(v["source"] for v in s["volumes"] if v["target"] == "/var/lib/tickwire") for s in services.values()]
    assert len(set(spools)) == len(spools), spools


def test_prometheus_scrapes_every_shard_with_its_label():
    prometheus = yaml.safe_load((vs.COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "tickwire")
    scraped = {c["targets"][0].split(":")[0]: c["labels"]["shard"] for c in job["static_configs"]}
    assert scraped == {name: s["environment"]["TICKWIRE_SHARD"] for name, s in ingest_services().items()}
