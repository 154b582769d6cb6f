"""configs/prometheus/alerts.yml is valid and its rules fire on what they watch (promtool); the Grafana
dashboard is well formed. That both name only metrics the server exports is checked against a real
scrape in tests/integration/test_monitoring.py."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "configs/prometheus/alerts.yml"
DASHBOARD = ROOT / "configs/grafana/trtserve.json"
METRIC = re.compile(r"\bray_trtserve_[a-z_]+")

promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="requires promtool, from Debian's prometheus package (.ci/run installs it)"
)


def metric_names(expressions: list[str]) -> set[str]:
    return {name for e in expressions for name in METRIC.findall(e)}


def alert_expressions() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


@promtool
def test_the_alerting_rules_are_valid():
    proc = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 5 rules found" in proc.stdout


@promtool
def test_the_alerting_rules_fire_on_what_they_watch():
    proc = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=ROOT / "tests/fixtures/prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_alerts_cover_drift_accuracy_errors_and_latency():
    names = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert {"TrtserveInputDrift", "TrtserveFeedbackAccuracyLow", "TrtserveErrorRatio"} <= names
    assert "TrtserveLatencyP99AboveSLO" in names


def test_the_dashboard_has_system_and_model_panels_with_queries():
    doc = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    assert rows == ["Service", "Model"]
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in panels)
    names = metric_names(dashboard_expressions())
    assert {"ray_trtserve_drift_detected", "ray_trtserve_requests_total"} <= names
