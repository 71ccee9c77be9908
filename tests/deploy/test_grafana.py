"""The Grafana provisioning in ``docker/grafana``: one Prometheus datasource, a file provider, and four
dashboards that are well formed for Grafana 10/11, name that datasource by uid on every panel, target
and variable, query only series candlecast exports, and show what an operator needs.

No Grafana runs here. The live check (every panel query evaluated against a real Prometheus scraping a
running service) reuses :func:`iter_targets` and :func:`substitute` from this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.deploy.metric_catalog import EXTERNAL_SERIES, candlecast_series, metric_names

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "docker" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "candlecast.yml"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "docker" / "prometheus" / "prometheus.yml"

EXPECTED_UIDS = {
    "overview.json": "candlecast-overview",
    "feed-health.json": "candlecast-feed",
    "inference.json": "candlecast-inference",
    "api.json": "candlecast-api",
}
# Where the provider looks when docker-compose.yml does not say (yet) where it mounts the dashboards.
DEFAULT_DASHBOARDS_MOUNT = "/var/lib/grafana/dashboards"
GRAFANA_PROVISIONING = PurePosixPath("/etc/grafana/provisioning")

# The only Grafana built-ins queries may use; all three are time ranges.
BUILTINS = frozenset({"__rate_interval", "__interval", "__range"})
# $var, ${var} and ${var:format}; the deprecated [[var]] form is refused outright.
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_RANGE = re.compile(r"\[([^\]]*)\]")
# A string literal in PromQL and the matcher operator in front of it.
_MATCHER_STRING = re.compile(r'(=~|!~|!=|=)?\s*"((?:[^"\\]|\\.)*)"')
_LABEL_VALUES = re.compile(r"^label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>\w+)\s*\)$")
_QUANTILE = re.compile(r"histogram_quantile\(\s*([0-9.]+)\s*,\s*sum\s+by\s*\(([^)]*)\)\s*\(\s*rate\(\s*(\w+)")

PANEL_TYPES = frozenset({"timeseries", "stat", "table", "state-timeline", "bargauge", "gauge", "row"})
# Series labelled by symbol: a dashboard with a symbol variable must filter them by it.
SYMBOL_SERIES = frozenset(
    {
        "candlecast_api_signal_available",
        "candlecast_api_signal_age_seconds",
        "candlecast_api_signal_direction",
        "candlecast_api_signal_score",
        "candlecast_api_signal_confidence",
        "candlecast_api_signal_agreement",
        "candlecast_api_signal_fallback",
        "candlecast_ingest_book_ready",
        "candlecast_track_scored",
        "candlecast_track_judged",
        "candlecast_track_hit_rate",
        "candlecast_track_hit_rate_upper",
        "candlecast_track_brier_skill",
        "candlecast_track_return_after_fees",
        "candlecast_track_validation_hit_rate",
        "candlecast_track_validation_brier_skill",
        "candlecast_input_psi",
    }
)
REQUIRED_SERIES = {
    "candlecast-overview": {
        "up",
        "candlecast_api_signal_feed_up",
        "candlecast_ingest_book_ready",
        "candlecast_ingest_windows_incomplete",
        "candlecast_api_signal_direction",
        "candlecast_api_signal_confidence",
        "candlecast_api_signal_age_seconds",
        "candlecast_api_signal_fallback",
        "candlecast_signals_total",
        "candlecast_ensemble_agreement_bucket",
        # The "Is the model still right?" row: the live track record against validation, input drift.
        "candlecast_track_hit_rate",
        "candlecast_track_hit_rate_upper",
        "candlecast_track_validation_hit_rate",
        "candlecast_track_brier_skill",
        "candlecast_track_validation_brier_skill",
        "candlecast_input_psi",
        "candlecast_signals_scored_total",
    },
    "candlecast-feed": {
        "candlecast_ingest_messages_total",
        "candlecast_ingest_reconnects_total",
        "candlecast_ingest_book_resyncs_total",
        "candlecast_ingest_gaps_found_total",
        "candlecast_ingest_bars_backfilled_total",
        "candlecast_ingest_lag_seconds_bucket",
        "candlecast_ingest_last_message_age_seconds",
        "candlecast_ingest_book_ready",
        "candlecast_ingest_windows_incomplete",
        "candlecast_ingest_rest_requests_total",
        "candlecast_ingest_store_up",
    },
    "candlecast-inference": {
        "candlecast_inference_seconds_bucket",
        "candlecast_inference_provider",
        "candlecast_components_enabled",
        "candlecast_components_dropped_total",
        "candlecast_render_seconds_bucket",
        "candlecast_signal_compute_seconds_bucket",
        "candlecast_signal_bar_close_to_publish_seconds_bucket",
        "candlecast_fallbacks_total",
        "candlecast_no_signals_total",
        "candlecast_worker_events_total",
        "candlecast_worker_consumer_lag_events",
        "candlecast_worker_pending_events",
    },
    "candlecast-api": {
        "candlecast_api_request_duration_seconds_count",
        "candlecast_api_request_duration_seconds_bucket",
        "candlecast_api_ws_clients",
        "candlecast_api_ws_connections_total",
        "candlecast_api_ws_slow_consumer_closes_total",
        "candlecast_api_ws_messages_sent_total",
        "candlecast_api_ws_wire_frames_total",
        "candlecast_api_ws_messages_dropped_total",
        "candlecast_api_signal_feed_up",
        "candlecast_api_signal_available",
    },
}

Json = dict[str, Any]


def _panels(panels: list[Json]) -> Iterator[Json]:
    """Every panel, rows included, with a collapsed row's panels after the row."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def iter_targets(dashboard_dir: Path) -> Iterator[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr as written) for every query target of every panel in the
    ``*.json`` dashboards of ``dashboard_dir``, rows' panels included, in file and panel order.

    The expr still holds Grafana variables: pass it through :func:`substitute` before sending it to
    Prometheus.
    """
    for path in sorted(dashboard_dir.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in _panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                yield dashboard["uid"], panel["title"], target["expr"]


def substitute(expr: str, rate_interval: str = "1m") -> str:
    """``expr`` as Grafana would send it with every variable at its widest: the time built-ins
    (``$__rate_interval``, ``$__interval``, ``$__range``) become ``rate_interval`` and dashboard
    variables (``$symbol``, ``${symbol}``, ``${symbol:regex}``) become ``.*``, which is what "All" sends
    (every dashboard variable is a multi-value query variable with ``allValue: ".*"``, used only inside
    regex matchers). ``substitute('rate(x{s=~"$symbol"}[$__rate_interval])', "30s")`` is
    ``'rate(x{s=~".*"}[30s])'``.
    """

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return rate_interval if name in BUILTINS else ".*"

    return _VARIABLE.sub(value, expr)


def _variables(expr: str) -> set[str]:
    return {m.group(1) or m.group(2) for m in _VARIABLE.finditer(expr)}


def _load(path: Path) -> Json:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def _yaml(path: Path) -> Json:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def _datasource_uid() -> str:
    (source,) = _yaml(DATASOURCES)["datasources"]
    uid = source["uid"]
    assert isinstance(uid, str)
    return uid


def _dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def _query_panels(dashboard: Json) -> Iterator[Json]:
    return (p for p in _panels(dashboard["panels"]) if p["type"] != "row")


def _exprs(dashboard: Json) -> Iterator[str]:
    for panel in _query_panels(dashboard):
        for target in panel["targets"]:
            yield target["expr"]


def _defined_variables(dashboard: Json) -> dict[str, Json]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def _mappings(panel: Json) -> Iterator[Json]:
    """Every value mapping of a panel, from its defaults and from its overrides."""
    field_config = panel.get("fieldConfig", {})
    yield from field_config.get("defaults", {}).get("mappings", [])
    for override in field_config.get("overrides", []):
        for prop in override.get("properties", []):
            if prop["id"] == "mappings":
                yield from prop["value"]


DASHBOARD_FILES = _dashboard_files()
_ids = [p.name for p in DASHBOARD_FILES]


# -- provisioning ---------------------------------------------------------------------------------


def test_datasource_is_the_one_prometheus_the_dashboards_name() -> None:
    config = _yaml(DATASOURCES)
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["name"] == "Prometheus"
    assert source["type"] == "prometheus"
    assert source["uid"] == "candlecast-prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True
    assert source["editable"] is False
    # $__rate_interval is at least four of these: it must be Prometheus' scrape interval, or a rate
    # over a shorter window than two scrapes comes back empty.
    assert source["jsonData"]["timeInterval"] == _yaml(PROMETHEUS)["global"]["scrape_interval"]


def test_dashboard_provider_loads_the_folder_compose_mounts_read_only_from_the_ui() -> None:
    config = _yaml(PROVIDERS)
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "candlecast"
    assert provider["allowUiUpdates"] is False
    mounts = _grafana_mounts()
    if mounts is None:
        # docker-compose.yml has no grafana service yet: the provider must read the path the compose
        # file is to mount docker/grafana/dashboards at. Once the service exists, the branch below
        # checks the real mounts instead.
        assert provider["options"]["path"] == DEFAULT_DASHBOARDS_MOUNT
        return
    provider_path = PurePosixPath(provider["options"]["path"])
    for path in DASHBOARD_FILES:
        mounted = _container_path(path, mounts)
        assert mounted == provider_path / path.name, f"compose mounts {path.name} at {mounted}, not in {provider_path}"
    assert _container_path(DATASOURCES, mounts).parent == GRAFANA_PROVISIONING / "datasources"
    assert _container_path(PROVIDERS, mounts).parent == GRAFANA_PROVISIONING / "dashboards"


def _grafana_mounts() -> list[tuple[Path, PurePosixPath]] | None:
    """(host path, container path) of each bind mount of compose's grafana service; None without one."""
    service = _yaml(COMPOSE).get("services", {}).get("grafana")
    if service is None:
        return None
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        elif volume.get("type", "bind") == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        if source.startswith((".", "/")):  # a named volume has neither
            mounts.append(((COMPOSE.parent / source).resolve(), PurePosixPath(target)))
    return mounts


def _container_path(host: Path, mounts: list[tuple[Path, PurePosixPath]]) -> PurePosixPath:
    host = host.resolve()
    for source, target in mounts:
        if host == source or source in host.parents:
            return target / host.relative_to(source).as_posix()
    raise AssertionError(f"{host.relative_to(ROOT)} is not mounted into the grafana service")


# -- dashboards -----------------------------------------------------------------------------------


def test_the_four_dashboards_have_their_uids_and_distinct_titles() -> None:
    dashboards = {p.name: _load(p) for p in DASHBOARD_FILES}
    assert {name: d["uid"] for name, d in dashboards.items()} == EXPECTED_UIDS
    titles = [d["title"] for d in dashboards.values()]
    assert len(set(titles)) == len(titles), titles


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=_ids)
def test_dashboard_is_provisionable_grafana_json(path: Path) -> None:
    text = path.read_text()
    dashboard = _load(path)
    assert dashboard["id"] is None, "a provisioned dashboard gets its id from Grafana"
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["version"] >= 1
    assert dashboard["editable"] is True
    assert "candlecast" in dashboard["tags"]
    assert dashboard["time"]["from"] and dashboard["time"]["to"]
    assert re.fullmatch(r"\d+[smh]", dashboard["refresh"])
    assert {link["type"] for link in dashboard.get("links", [])} <= {"dashboards", "link"}
    # Hand-maintained: two-space indentation, no tabs, a final newline.
    assert text.endswith("\n")
    assert "\t" not in text
    assert all((len(line) - len(line.lstrip(" "))) % 2 == 0 for line in text.splitlines())


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=_ids)
def test_panels_have_unique_ids_and_fit_the_grid_without_overlapping(path: Path) -> None:
    dashboard = _load(path)
    panels = list(_panels(dashboard["panels"]))
    assert panels
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids), f"duplicate panel ids in {ids}"
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h")), panel["title"]
        assert grid["x"] >= 0 and grid["y"] >= 0 and grid["w"] >= 1 and grid["h"] >= 1, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:  # a collapsed row's panels are laid out when it opens
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=_ids)
def test_every_panel_and_target_names_the_provisioned_datasource(path: Path) -> None:
    uid = _datasource_uid()
    dashboard = _load(path)
    for panel in _query_panels(dashboard):
        title = panel["title"]
        assert panel["type"] in PANEL_TYPES, title
        assert title.strip() and panel["description"].strip(), title
        assert panel["fieldConfig"]["defaults"]["unit"], f"{title}: no unit"
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, title
        targets = panel["targets"]
        assert targets, f"{title}: no queries"
        ref_ids = [t["refId"] for t in targets]
        assert all(ref_ids) and len(set(ref_ids)) == len(ref_ids), f"{title}: refIds {ref_ids}"
        for target in targets:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, title
            assert target["expr"].strip(), title
            assert isinstance(target["legendFormat"], str), title
    for variable in _defined_variables(dashboard).values():
        assert variable["datasource"] == {"type": "prometheus", "uid": uid}, variable["name"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=_ids)
def test_queries_select_only_series_candlecast_exports(path: Path) -> None:
    known = candlecast_series() | EXTERNAL_SERIES
    dashboard = _load(path)
    for panel in _query_panels(dashboard):
        for target in panel["targets"]:
            names = metric_names(substitute(target["expr"]))
            assert names, f"{panel['title']}: {target['expr']} selects no metric"
            assert names <= known, f"{panel['title']}: unknown {sorted(names - known)}"
            # Only up comes from a scrape job; in the one-process run every metric is on the API.
            if "job" in target["expr"]:
                assert names == {"up"}, f"{panel['title']}: filters by job"
            # redis_up needs the exporter, absent from the one-process run: use the store_up gauges.
            assert "redis_up" not in names, panel["title"]
    for variable in _defined_variables(dashboard).values():
        match = _LABEL_VALUES.match(variable["query"])
        assert match is not None, f"{variable['name']}: {variable['query']}"
        selector = match.group("selector")
        assert selector is not None, f"{variable['name']}: label_values without a metric scans every series"
        assert metric_names(selector) <= known, variable["name"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=_ids)
def test_variables_are_defined_regex_friendly_and_used_in_regex_matchers(path: Path) -> None:
    dashboard = _load(path)
    defined = _defined_variables(dashboard)
    for variable in defined.values():
        name = variable["name"]
        assert variable["type"] == "query", name
        assert variable["multi"] is True and variable["includeAll"] is True, name
        assert variable["allValue"] == ".*", name
        assert variable["definition"] == variable["query"], name
    for expr in _exprs(dashboard):
        assert "[[" not in expr, f"deprecated [[var]] syntax in {expr}"
        used = _variables(expr)
        assert used <= BUILTINS | defined.keys(), f"undefined {sorted(used - BUILTINS - defined.keys())} in {expr}"
        for match in _MATCHER_STRING.finditer(expr):
            if _variables(match.group(2)) - BUILTINS:
                assert match.group(1) in ("=~", "!~"), f"a variable outside a regex matcher in {expr}"
        bare = _MATCHER_STRING.sub('""', expr)
        assert not _variables(bare) - BUILTINS, f"a dashboard variable outside a label matcher in {expr}"
        for window in _RANGE.findall(bare):
            assert window in ("$__rate_interval", "$__range"), f"range [{window}] in {expr}"
    if "symbol" in defined:
        for expr in _exprs(dashboard):
            if metric_names(substitute(expr)) & SYMBOL_SERIES:
                assert 'symbol=~"$symbol"' in expr, f"not filtered by $symbol: {expr}"


def test_iter_targets_and_substitute_give_evaluable_queries() -> None:
    targets = list(iter_targets(DASHBOARDS))
    assert {uid for uid, _, _ in targets} == set(EXPECTED_UIDS.values())
    assert all(title and expr for _, title, expr in targets)
    for _, _, expr in targets:
        assert "$" not in substitute(expr, "30s")
    assert substitute('rate(x{s=~"$symbol"}[$__rate_interval])', "30s") == 'rate(x{s=~".*"}[30s])'
    assert substitute('x{s=~"${symbol}|${route:regex}"}[$__range]') == 'x{s=~".*|.*"}[1m]'
    assert substitute("increase(x[${__interval}])", "2m") == "increase(x[2m])"


# -- what each dashboard must show ----------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=_ids)
def test_dashboard_covers_its_series(path: Path) -> None:
    dashboard = _load(path)
    used = set().union(*(metric_names(substitute(e)) for e in _exprs(dashboard)))
    missing = REQUIRED_SERIES[dashboard["uid"]] - used
    assert not missing, f"{dashboard['uid']} shows nothing of {sorted(missing)}"


def _by_uid(uid: str) -> Json:
    (dashboard,) = (d for d in map(_load, DASHBOARD_FILES) if d["uid"] == uid)
    return dashboard


def _is_direction_mapping(options: Json) -> bool:
    """1 -> long (green), 0 -> flat, -1 -> short (red)."""
    texts = {value: option.get("text") for value, option in options.items()}
    return (
        texts == {"1": "long", "0": "flat", "-1": "short"}
        and options["1"].get("color") == "green"
        and options["-1"].get("color") == "red"
    )


def test_overview_maps_the_latest_direction_to_long_flat_short() -> None:
    panels = [
        p
        for p in _query_panels(_by_uid("candlecast-overview"))
        if any("candlecast_api_signal_direction" in metric_names(substitute(t["expr"])) for t in p["targets"])
    ]
    assert panels
    for panel in panels:
        mappings = [m["options"] for m in _mappings(panel) if m["type"] == "value"]
        assert any(_is_direction_mapping(options) for options in mappings), panel["title"]


def test_overview_splits_signals_by_source() -> None:
    exprs = list(_exprs(_by_uid("candlecast-overview")))
    assert any(re.search(r"by \(source\) \(rate\(candlecast_signals_total\[", e) for e in exprs)


def _quantiles(dashboard: Json, bucket_series: str) -> dict[float, frozenset[str]]:
    """Quantile -> the labels it is computed by, for each histogram_quantile over ``bucket_series``."""
    found: dict[float, frozenset[str]] = {}
    for expr in _exprs(dashboard):
        for quantile, labels, series in _QUANTILE.findall(expr):
            if series == bucket_series:
                found[float(quantile)] = frozenset(label.strip() for label in labels.split(","))
    return found


def test_inference_shows_latency_quantiles_by_model_and_provider() -> None:
    quantiles = _quantiles(_by_uid("candlecast-inference"), "candlecast_inference_seconds_bucket")
    assert quantiles == dict.fromkeys((0.5, 0.95, 0.99), frozenset({"le", "model", "provider"}))


def test_inference_lists_the_bound_provider_per_component() -> None:
    exprs = list(_exprs(_by_uid("candlecast-inference")))
    bound = re.compile(r"by \([^)]*\bcomponent\b[^)]*\bprovider\b[^)]*\) \(candlecast_inference_provider == 1\)")
    assert any(bound.search(e) for e in exprs)


def test_worker_group_gauges_take_the_max_over_workers() -> None:
    # Every worker reports the group-wide lag and pending count: a sum would multiply them.
    for dashboard in map(_load, DASHBOARD_FILES):
        for expr in _exprs(dashboard):
            for series in ("candlecast_worker_consumer_lag_events", "candlecast_worker_pending_events"):
                if series in expr:
                    assert f"max({series})" in expr, expr


def test_api_shows_request_latency_by_route_and_slow_consumer_closes() -> None:
    exprs = list(_exprs(_by_uid("candlecast-api")))
    quantiles = _quantiles(_by_uid("candlecast-api"), "candlecast_api_request_duration_seconds_bucket")
    assert quantiles == dict.fromkeys((0.5, 0.99), frozenset({"le", "route"}))
    assert any("by (route, status)" in e and "candlecast_api_request_duration_seconds_count" in e for e in exprs)
    assert any("candlecast_api_ws_slow_consumer_closes_total" in e for e in exprs)


def test_overview_judges_the_live_track_record_against_validation() -> None:
    dashboard = _by_uid("candlecast-overview")
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert "Is the model still right?" in [row["title"] for row in rows]
    # Live and validation figures in the same panel, so the gap the alert judges is visible.
    pairs = (
        ("candlecast_track_hit_rate_upper", "candlecast_track_validation_hit_rate"),
        ("candlecast_track_brier_skill", "candlecast_track_validation_brier_skill"),
    )
    for live, validation in pairs:
        assert any(
            {live, validation} <= set().union(*(metric_names(substitute(t["expr"])) for t in panel["targets"]))
            for panel in _query_panels(dashboard)
        ), f"no panel shows {live} with {validation}"
    # The track record is judged over the window the alerts use.
    windowed = {name for name in SYMBOL_SERIES if name.startswith("candlecast_track_") and "validation" not in name}
    for expr in _exprs(dashboard):
        if metric_names(substitute(expr)) & (windowed | {"candlecast_input_psi"}):
            assert 'window="last_1000"' in expr, expr
