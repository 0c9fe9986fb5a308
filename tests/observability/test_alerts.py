"""The shipped rules are what `llmserve alerts` generates, promtool accepts them, and their SLO
alerts follow the classes' targets and objectives."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from llmserve.cli import main
from llmserve.observability.alerts import AlertSettings, alert_rules, duration, render
from llmserve.service_classes import DEFAULT_SERVICE_CLASSES, ServiceClasses

SHIPPED = Path(__file__).parents[2] / "deploy" / "prometheus" / "alerts.yml"


def _alerts(rules: dict) -> list[dict]:
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def test_shipped_rules_are_the_generated_ones():
    regenerate = "run `llmserve alerts --out deploy/prometheus/alerts.yml`"
    assert SHIPPED.read_text() == render(DEFAULT_SERVICE_CLASSES), regenerate


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_accepts_the_rules(tmp_path):
    scaled = tmp_path / "scaled.yml"
    scaled.write_text(render(DEFAULT_SERVICE_CLASSES, AlertSettings(time_scale=60)))
    result = subprocess.run(["promtool", "check", "rules", str(SHIPPED), str(scaled)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS: 14 rules found") == 2


def test_each_class_with_a_target_gets_a_fast_and_a_slow_burn_alert():
    classes = ServiceClasses.from_mapping({"classes": [
        {"name": "gold", "ttft": "100ms"}, {"name": "silver", "e2e": "5s"}, {"name": "bulk"}]})
    alerts = _alerts(alert_rules(classes, AlertSettings(objective=0.99, class_objectives={"gold": 0.999})))
    burns = [(a["alert"], a["labels"]["service_class"], a["expr"]) for a in alerts if "SLO" in a["alert"]]
    assert [(name, cls) for name, cls, _ in burns] == [
        ("LLMServeSLOFastBurn", "gold"), ("LLMServeSLOSlowBurn", "gold"),
        ("LLMServeSLOFastBurn", "silver"), ("LLMServeSLOSlowBurn", "silver")]  # bulk has no target
    exprs = {(name, cls): expr for name, cls, expr in burns}
    # 14.4x and 6x the budget: 0.1% for gold, 1% for silver.
    assert exprs["LLMServeSLOFastBurn", "gold"] == (
        'llmserve:service_class_slo_error_ratio:rate1h{service_class="gold"} > 0.0144 and '
        'llmserve:service_class_slo_error_ratio:rate5m{service_class="gold"} > 0.0144')
    assert exprs["LLMServeSLOSlowBurn", "silver"] == (
        'llmserve:service_class_slo_error_ratio:rate6h{service_class="silver"} > 0.06 and '
        'llmserve:service_class_slo_error_ratio:rate30m{service_class="silver"} > 0.06')


def test_time_scale_shortens_every_window_and_for():
    rules = alert_rules(DEFAULT_SERVICE_CLASSES, AlertSettings(time_scale=60))
    records = [rule["record"] for rule in rules["groups"][0]["rules"]]
    assert records == [f"llmserve:service_class_slo_error_ratio:rate{w}" for w in ("5s", "30s", "1m", "6m")]
    fors = {a["alert"]: a.get("for") for a in _alerts(rules)}
    assert fors["LLMServeQueueGrowing"] == "5s" and fors["LLMServeEngineDown"] == "1s"
    assert "[5s]" in next(a["expr"] for a in _alerts(rules) if a["alert"] == "LLMServeHighErrorRatio")


def test_durations_are_promql_durations():
    assert [duration(s) for s in (3600, 300, 21600, 5, 90, 0.5)] == ["1h", "5m", "6h", "5s", "90s", "500ms"]
    with pytest.raises(ValueError):
        duration(0)


def test_cli_writes_rules_for_a_classes_file(tmp_path, capsys):
    classes = tmp_path / "classes.toml"
    classes.write_text('[[classes]]\nname = "fast"\nttft = "50ms"\n\n[[classes]]\nname = "slow"\n')
    out = tmp_path / "rules.yml"
    assert main(["alerts", "--service-classes", str(classes), "--objective", "fast=99.9%", "--job", "api",
                 "--out", str(out)]) == 0
    rules = yaml.safe_load(out.read_text())
    alerts = _alerts(rules)
    assert {a["labels"].get("service_class") for a in alerts if "SLO" in a["alert"]} == {"fast"}
    assert any('up{job="api"} == 0' in a["expr"] for a in alerts)
    assert "fast: TTFT 50ms; slow: no target" in out.read_text().splitlines()[0]
    assert main(["alerts", "--objective", "nope=99%"]) == 2
    assert "no class 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_the_example_prometheus_config_is_valid():
    config = SHIPPED.parent / "prometheus.yml"
    result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_files_point_at_each_other():
    provisioning = SHIPPED.parents[1] / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert source["type"] == "prometheus" and source["isDefault"]
    provider = yaml.safe_load((provisioning / "dashboards" / "llmserve.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/var/lib/grafana/dashboards")
