"""The Prometheus files of the compose stack: the scrape config and the alert rules pass promtool's own
checks and unit tests, every alert is complete (``for``, severity, summary, description) and exercised by
a unit test that makes it fire and one that keeps it quiet, and every rule selects only series that
candlecast or the stack actually export, so a renamed metric fails here instead of silencing an alert."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.metric_catalog import EXTERNAL_SERIES, candlecast_series, metric_names

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
JOBS = {"api", "ingestor", "worker", "redis", "prometheus"}
SEVERITIES = {"warning", "critical"}
ALERT_NAME = re.compile(r"^[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+$")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.relative_to(ROOT)}: expected a mapping at the top"
    return data


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of every shipped rule file (recording rules left out)."""
    rules: list[dict[str, Any]] = []
    for path in RULES:
        for group in load(path)["groups"]:
            rules.extend(rule for rule in group["rules"] if "alert" in rule)
    return rules


def alert_cases() -> list[dict[str, Any]]:
    """Every ``alert_rule_test`` entry of every promtool test file."""
    return [case for path in RULE_TESTS for test in load(path)["tests"] for case in test.get("alert_rule_test", [])]


def promtool(*args: str) -> None:
    """Run promtool from the repository root; fail with its whole output when it does not exit 0."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; `make test` installs it)")
    result = subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (
        f"`promtool {' '.join(args)}` exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def relative(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(ROOT)) for path in paths]


# -- the real tools ---------------------------------------------------------------------------------


def test_promtool_check_config_accepts_the_scrape_config_and_its_rule_files() -> None:
    promtool("check", "config", str(CONFIG.relative_to(ROOT)))


def test_promtool_check_rules_accepts_every_rule_file() -> None:
    assert RULES, "no rule files in docker/prometheus/rules"
    promtool("check", "rules", *relative(RULES))


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    assert RULE_TESTS, "no promtool unit tests in docker/prometheus/tests"
    promtool("test", "rules", *relative(RULE_TESTS))


# -- the rules themselves ---------------------------------------------------------------------------


def test_every_alert_has_a_for_a_severity_a_summary_and_a_description() -> None:
    rules = alert_rules()
    assert len(rules) >= 10, "fewer alert rules than expected"
    problems = []
    for rule in rules:
        name = rule["alert"]
        labels = rule.get("labels") or {}
        annotations = rule.get("annotations") or {}
        if not ALERT_NAME.fullmatch(name):
            problems.append(f"{name}: not CamelCase")
        if not rule.get("for"):
            problems.append(f"{name}: no `for:`")
        if labels.get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity {labels.get('severity')!r} not in {sorted(SEVERITIES)}")
        for key in ("summary", "description"):
            if not str(annotations.get(key, "")).strip():
                problems.append(f"{name}: no {key} annotation")
        if "{{" not in str(annotations.get("description", "")):
            problems.append(f"{name}: the description uses no $labels or $value")
    assert not problems, "\n".join(problems)


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_every_rule_expression_selects_only_exported_series() -> None:
    known = candlecast_series() | EXTERNAL_SERIES
    unknown = {}
    for rule in alert_rules():
        used = metric_names(rule["expr"])
        assert used, f"{rule['alert']}: no metric name found in {rule['expr']!r}"
        if missing := used - known:
            unknown[rule["alert"]] = sorted(missing)
    assert not unknown, f"rules that select series nobody exports: {unknown}"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in alert_cases():
        (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert not names - fires, f"alerts no promtool case makes fire: {sorted(names - fires)}"
    assert not names - quiet, f"alerts no promtool case expects to stay quiet: {sorted(names - quiet)}"
    unknown = (fires | quiet) - names
    assert not unknown, f"promtool cases for alerts that do not exist: {sorted(unknown)}"


def test_firing_cases_expect_the_severity_and_annotations_of_their_rule() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for case in alert_cases():
        rule = rules.get(case["alertname"])
        for alert in case.get("exp_alerts") or []:
            where = f"{case['alertname']} at {case['eval_time']}"
            assert rule is not None, where
            assert alert["exp_labels"].get("severity") == rule["labels"]["severity"], where
            assert set(alert.get("exp_annotations") or {}) == set(rule["annotations"]), where


def test_rule_unit_tests_load_the_shipped_rule_files() -> None:
    for path in RULE_TESTS:
        loaded = {(path.parent / name).resolve() for name in load(path)["rule_files"]}
        assert loaded == {rule.resolve() for rule in RULES}, path.name


# -- the scrape config ------------------------------------------------------------------------------


def test_scrape_config_scrapes_the_five_jobs_of_the_stack() -> None:
    config = load(CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == JOBS
    assert jobs["api"]["static_configs"] == [{"targets": ["api:9103"]}]
    assert jobs["api"].get("metrics_path", "/metrics") == "/metrics"
    assert jobs["ingestor"]["static_configs"] == [{"targets": ["ingestor:9102"]}]
    assert jobs["redis"]["static_configs"] == [{"targets": ["redis-exporter:9121"]}]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["localhost:9090"]}]
    # Worker replicas come and go with `--scale`: found through Docker's DNS, one A record each.
    (worker_dns,) = jobs["worker"]["dns_sd_configs"]
    assert worker_dns["names"] == ["worker"]
    assert worker_dns["type"] == "A"
    assert worker_dns["port"] == 9101
    assert "static_configs" not in jobs["worker"]


def test_scrape_config_globals_rule_files_and_no_alertmanager() -> None:
    config = load(CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["global"]["external_labels"]["stack"] == "candlecast"
    assert config["rule_files"] == ["rules/*.yml"]
    loaded = {path.resolve() for pattern in config["rule_files"] for path in CONFIG.parent.glob(pattern)}
    assert loaded == {path.resolve() for path in RULES}
    # None ships: alerts show on Prometheus's /alerts page (the file says how to add one).
    assert "alerting" not in config
    assert "/alerts" in CONFIG.read_text()
