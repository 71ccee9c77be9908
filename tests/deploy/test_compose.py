"""The deployment files, checked with the real tools where there are any.

The compose files are resolved by the real ``docker-compose`` (``config``: interpolation, YAML anchors,
override merging, schema validation) and the tests assert on the configuration it prints, the way
``docker compose up`` would see it. The Dockerfiles, the lock and ``.dockerignore`` are read as text:
no Docker engine is needed (nor available on CI) to check what they pin and copy; building the images
is left to a machine with one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import ENV_PREFIX, Settings, load_settings
from streaming.sim.bars import symbol_from_path

ROOT = Path(__file__).resolve().parents[2]
BASE = "docker-compose.yml"
GPU = "docker-compose.gpu.yml"
CLUSTER = "docker-compose.cluster.yml"
COMPOSE_FILES = (ROOT / BASE, ROOT / GPU, ROOT / CLUSTER)
ENV_EXAMPLE = ROOT / ".env.example"
REPLAY_ENV = ROOT / "docker" / "replay.env"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERFILE_GPU = ROOT / "docker" / "Dockerfile.gpu"
LOCK = ROOT / "docker" / "requirements.txt"
LOCK_GPU = ROOT / "docker" / "requirements-gpu.txt"

CANDLECAST = ("ingestor", "worker", "api")  # the long-running candlecast processes of the live stack
# Where each one answers its healthcheck, and the setting that puts it there.
HEALTH_PORT_SETTING = {
    "ingestor": "CANDLECAST_INGEST_METRICS_PORT",
    "worker": "CANDLECAST_WORKER_METRICS_PORT",
    "api": "CANDLECAST_API_PORT",
}

# The secrets compose refuses to start without (no defaults); set for every resolution unless a test
# removes one.
SECRETS = {
    "CANDLECAST_REDIS_INGESTOR_PASSWORD": "ingestor-password-0123",
    "CANDLECAST_REDIS_WORKER_PASSWORD": "worker-password-0123456",
    "CANDLECAST_REDIS_API_PASSWORD": "api-password-0123456789",
    "CANDLECAST_REDIS_EXPORTER_PASSWORD": "exporter-password-01234",
    "GRAFANA_ADMIN_PASSWORD": "grafana-password-0123",
}
# The Redis Cluster override's own secret (docker-compose.cluster.yml); the base stack does not use it.
CLUSTER_SECRETS = {
    "CANDLECAST_REDIS_CLUSTER_PASSWORD": "cluster-password-01234",
    "CANDLECAST_REDIS_REPLICA_PASSWORD": "replica-password-01234",
}

DOCKER_COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose is not installed (Debian package `docker-compose`; `make test` installs it)",
)

# -- helpers: the compose tool --------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a compose env file; comments and blank lines skipped."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            pairs[name.strip()] = value.strip()
    return pairs


def compose_config(
    *files: str,
    profiles: Iterable[str] = (),
    env_file: Path | None = None,
    env: dict[str, str] | None = None,
    tmp_path: Path,
    without: Iterable[str] = (),
) -> dict[str, Any]:
    """What ``docker-compose [-f FILE]... [--profile P]... --env-file F config`` resolves, parsed.

    Hermetic: the stack's variables and any ``COMPOSE_*`` are removed from the environment, and an env
    file is always given (an empty one by default), so neither the caller's shell nor a developer's
    ``.env`` changes the result. :data:`SECRETS` are set unless named in ``without``.
    """
    assert DOCKER_COMPOSE is not None
    if env_file is None:
        env_file = tmp_path / "empty.env"
        env_file.write_text("")
    args = [DOCKER_COMPOSE]
    for name in files or (BASE,):
        args += ["-f", name]
    for profile in profiles:
        args += ["--profile", profile]
    args += ["--env-file", str(env_file), "config"]
    ours = set(read_env_file(ENV_EXAMPLE))
    clean = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("COMPOSE_")}
    secrets = {k: v for k, v in (SECRETS | CLUSTER_SECRETS).items() if k not in set(without)}
    done = subprocess.run(
        args, cwd=ROOT, env=clean | secrets | (env or {}), check=False, capture_output=True, text=True
    )
    if without:
        assert done.returncode != 0, f"{' '.join(args[1:])} resolved without {', '.join(without)}"
        raise ComposeRefused(done.stderr)
    assert done.returncode == 0, f"{' '.join(args[1:])} failed:\n{done.stderr}"
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


class ComposeRefused(Exception):
    """``docker-compose config`` failed; the message is its stderr."""


def enabled(config: dict[str, Any], profiles: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """The services ``up`` starts with these profiles: those with no profile or one of them.

    (docker-compose 1.29 prints every service with its ``profiles``; Compose v2 prints only the
    enabled ones. Filtering here gives the same answer for both.)
    """
    wanted = set(profiles)
    services: dict[str, dict[str, Any]] = config["services"]
    return {name: s for name, s in services.items() if not s.get("profiles") or wanted & set(s["profiles"])}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the list form, NAME=value
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def published(service: dict[str, Any]) -> dict[int, str]:
    """Container port -> what it is published on (``[IP:]PORT``), from the short or the long syntax."""
    out = {}
    for port in service.get("ports", []):
        if isinstance(port, dict):
            host = f"{port['host_ip']}:{port['published']}" if port.get("host_ip") else str(port["published"])
            out[int(port["target"])] = host
        else:
            host, _, target = str(port).split("/")[0].rpartition(":")
            out[int(target)] = host
    return out


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read-only), from the short or the long syntax."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = (str(volume["source"]), bool(volume.get("read_only", False)))
        else:
            source, target, *mode = str(volume).split(":")
            out[target] = (source, "ro" in mode[0].split(",") if mode else False)
    return out


def health_url(service: dict[str, Any]) -> str:
    """The URL a candlecast healthcheck GETs (``python -c "...urlopen('URL'..."``)."""
    test = " ".join(service["healthcheck"]["test"])
    found = re.search(r"urlopen\('(http://[^']+)'", test)
    assert found, f"healthcheck does not GET a URL with urllib: {test!r}"
    return found.group(1)


def option(command: list[str], flag: str) -> list[str]:
    """The values after ``flag`` in a command, up to the next option."""
    at = command.index(flag) + 1
    values = []
    while at < len(command) and not command[at].startswith("--"):
        values.append(command[at])
        at += 1
    return values


def check_settings(env: dict[str, str]) -> Settings:
    """The ``CANDLECAST_*`` variables name real settings, and candlecast accepts their values."""
    ours = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    unknown = sorted(ENV_PREFIX + k.upper() for k in ours if k not in Settings.model_fields)
    assert not unknown, f"not candlecast settings (silently ignored): {unknown}"
    return load_settings(**ours)


def compose_variables() -> dict[str, set[str]]:
    """Every variable the compose files interpolate, with the defaults they give it.

    Each use must be ``${NAME:-default}`` — the stack runs with no .env but its secrets — or, for the
    secrets alone (:data:`SECRETS`: passwords have no default), ``${NAME:?message}``, whose default is
    reported as ``""`` (.env.example lists them empty). ``$$`` is a literal dollar for the container.
    """
    found: dict[str, set[str]] = {}
    for path in COMPOSE_FILES:
        text = path.read_text()
        assert not re.search(r"(?<!\$)\$(?![{$])", text.replace("$$", "")), (
            f"{path.name}: use ${{NAME:-default}}, not $NAME"
        )
        for use in re.findall(r"\$\{[^}]*\}", text):
            required = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}", use)
            if required:
                assert required.group(1) in SECRETS | CLUSTER_SECRETS, (
                    f"{path.name}: {use}: only the secrets may lack a default"
                )
                found.setdefault(required.group(1), set()).add("")
                continue
            parsed = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}", use)
            assert parsed, f"{path.name}: {use} has no default (write ${{NAME:-default}})"
            found.setdefault(parsed.group(1), set()).add(parsed.group(2))
    return found


# -- helpers: Dockerfiles ------------------------------------------------------------------------------


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The build stages, each a list of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            out.append([])
        out[-1].append((word.upper(), re.sub(r"\s+", " ", rest.strip())))
    return out


def args_of(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [rest for word, rest in stage if word == instruction]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", " ".join(args_of(stage, "ENV"))))


def base_images(dockerfile: Path) -> list[str]:
    """The images the stages start from (stage names that later stages build on are not images)."""
    names: set[str] = set()
    images = []
    for stage in stages(dockerfile):
        image, *alias = args_of(stage, "FROM")[0].split(" AS ")
        if image not in names:
            images.append(image)
        names.update(a.strip() for a in alias)
    return images


_GLOB = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}  # .dockerignore wildcards as regexes


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = "".join(_GLOB.get(tok, re.escape(tok)) for tok in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]+", body))
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock(path: Path = LOCK) -> dict[str, str]:
    """The lock's pins, by normalised name; each must be an exact pin with at least one sha256."""
    pins = {}
    text = re.sub(r"\s*\\\n\s*", " ", path.read_text())  # continuation lines joined
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        pin = r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)((?: --hash=sha256:[0-9a-f]{64})+)"
        found = re.fullmatch(pin, line)
        assert found, f"{path.name}: not an exact pin with its sha256 hashes: {line[:80]!r}"
        pins[normalise(found.group(1))] = found.group(2)
    return pins


# -- the live stack ------------------------------------------------------------------------------------


@needs_compose
def test_every_candlecast_service_waits_for_a_healthy_redis_and_restarts(tmp_path: Path) -> None:
    services = enabled(compose_config(tmp_path=tmp_path))
    for name in CANDLECAST:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name


@needs_compose
def test_every_long_running_service_has_a_healthcheck(tmp_path: Path) -> None:
    for profiles in ((), ("replay",)):
        for name, service in enabled(compose_config(profiles=profiles, tmp_path=tmp_path), profiles).items():
            test = service.get("healthcheck", {}).get("test")
            assert test and test[0] in ("CMD", "CMD-SHELL") and not service["healthcheck"].get("disable"), name


@needs_compose
def test_candlecast_healthchecks_hit_the_port_each_process_serves(tmp_path: Path) -> None:
    services = compose_config(tmp_path=tmp_path)["services"]
    for name, setting in HEALTH_PORT_SETTING.items():
        url = health_url(services[name])
        assert url.startswith(f"http://127.0.0.1:{environment(services[name])[setting]}/"), (name, url)
    assert health_url(services["api"]).endswith("/healthz")


@needs_compose
def test_each_candlecast_service_runs_its_role_with_settings_candlecast_accepts(tmp_path: Path) -> None:
    services = compose_config(tmp_path=tmp_path)["services"]
    for name, role in zip(CANDLECAST, ("ingest", "worker", "api"), strict=True):
        service = services[name]
        env = environment(service)
        assert service["command"][-1] == role
        # The CLI takes its log level from the flag: the setting must reach it there.
        assert option(service["command"], "--log-level")[0] == env["CANDLECAST_LOG_LEVEL"]
        assert service["image"] == "candlecast:latest"
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        settings = check_settings(env)
        role = {"ingestor": "ingestor", "worker": "worker", "api": "api"}[name]
        password = SECRETS[f"CANDLECAST_REDIS_{role.upper()}_PASSWORD"]
        assert settings.redis_url == f"redis://{role}:{password}@redis:6379/0"  # its own user
        assert settings.symbols == ["BTCUSDT", "ETHUSDT"]
    assert check_settings(environment(services["ingestor"])).bybit_ws_url == "wss://stream.bybit.com/v5/public/linear"
    assert check_settings(environment(services["api"])).api_host == "0.0.0.0"


@needs_compose
def test_workers_run_two_scalable_replicas_that_name_their_own_consumer(tmp_path: Path) -> None:
    worker = compose_config(tmp_path=tmp_path)["services"]["worker"]
    assert worker["deploy"]["replicas"] == 2
    # `--scale worker=N` fails with a fixed name or host port; and the consumer name must stay unset so
    # that each replica defaults to its own "<hostname>-<pid>" (hostname = container id).
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "CANDLECAST_WORKER_CONSUMER" not in environment(worker)


@needs_compose
def test_api_prometheus_and_grafana_are_published(tmp_path: Path) -> None:
    services = compose_config(tmp_path=tmp_path)["services"]
    assert published(services["api"]) == {8000: "127.0.0.1:8000"}  # loopback unless told otherwise
    assert environment(services["api"])["CANDLECAST_API_ALLOW_ANONYMOUS"] == "false"
    # ...but not its metrics, which carry every symbol's latest signal: their port stays internal.
    assert environment(services["api"])["CANDLECAST_API_METRICS_PORT"] == "9103"
    assert published(services["prometheus"]) == {9090: "127.0.0.1:9090"}
    assert published(services["grafana"]) == {3000: "127.0.0.1:3000"}
    for name in ("redis", "redis-exporter", "ingestor", "worker"):
        assert not published(services[name]), name


@needs_compose
def test_redis_persists_with_aof_on_a_named_volume(tmp_path: Path) -> None:
    config = compose_config(tmp_path=tmp_path)
    redis = config["services"]["redis"]
    assert option(redis["command"], "--appendonly") == ["yes"]
    source, _ = mounts(redis)["/data"]
    assert source in config["volumes"]
    assert redis["image"].startswith("redis:7.2.")


@needs_compose
def test_monitoring_mounts_the_shipped_configuration(tmp_path: Path) -> None:
    config = compose_config(tmp_path=tmp_path)
    prometheus, grafana = config["services"]["prometheus"], config["services"]["grafana"]
    assert mounts(prometheus)["/etc/prometheus"] == (str(ROOT / "docker" / "prometheus"), True)
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert mounts(prometheus)["/prometheus"][0] in config["volumes"]
    assert mounts(grafana)["/etc/grafana/provisioning"] == (str(ROOT / "docker" / "grafana" / "provisioning"), True)
    assert mounts(grafana)["/var/lib/grafana/dashboards"] == (str(ROOT / "docker" / "grafana" / "dashboards"), True)
    assert mounts(grafana)["/var/lib/grafana"][0] in config["volumes"]
    exporter = environment(config["services"]["redis-exporter"])
    assert exporter["REDIS_ADDR"] == "redis://redis:6379" and exporter["REDIS_USER"] == "exporter"
    assert exporter["REDIS_PASSWORD"] == SECRETS["CANDLECAST_REDIS_EXPORTER_PASSWORD"]


@needs_compose
@pytest.mark.parametrize(
    ("variable", "value", "service", "read"),
    [
        ("CANDLECAST_SYMBOLS", "SOLUSDT", "worker", lambda s: environment(s)["CANDLECAST_SYMBOLS"]),
        ("CANDLECAST_API_PUBLISH", "127.0.0.1:18000", "api", lambda s: published(s)[8000]),
        ("CANDLECAST_WORKER_REPLICAS", "3", "worker", lambda s: str(s["deploy"]["replicas"])),
        ("PROMETHEUS_RETENTION", "90d", "prometheus", lambda s: s["command"][-1].rpartition("=")[2]),
        ("GRAFANA_ADMIN_PASSWORD", "s3cret", "grafana", lambda s: environment(s)["GF_SECURITY_ADMIN_PASSWORD"]),
    ],
)
def test_settings_come_from_the_environment(tmp_path: Path, variable: str, value: str, service: str, read: Any) -> None:
    config = compose_config(env={variable: value}, tmp_path=tmp_path)
    assert read(config["services"][service]) == value


@needs_compose
def test_symbols_reach_every_candlecast_service(tmp_path: Path) -> None:
    services = compose_config(env={"CANDLECAST_SYMBOLS": "SOLUSDT,XRPUSDT"}, tmp_path=tmp_path)["services"]
    for name in CANDLECAST:
        assert check_settings(environment(services[name])).symbols == ["SOLUSDT", "XRPUSDT"], name


def test_env_example_lists_exactly_the_variables_the_compose_files_use_at_their_defaults() -> None:
    example = read_env_file(ENV_EXAMPLE)
    used = compose_variables()
    assert set(example) == set(used), (
        f"only in .env.example: {set(example) - set(used)}; undocumented: {set(used) - set(example)}"
    )
    for name, defaults in used.items():
        assert defaults == {example[name]}, f"{name}: .env.example says {example[name]!r}, compose defaults {defaults}"


@needs_compose
def test_prometheus_scrapes_the_services_on_the_ports_they_serve(tmp_path: Path) -> None:
    services = compose_config(tmp_path=tmp_path)["services"]
    metrics_port_setting = HEALTH_PORT_SETTING | {"api": "CANDLECAST_API_METRICS_PORT"}
    serves = {name: int(environment(services[name])[setting]) for name, setting in metrics_port_setting.items()}
    serves["redis-exporter"] = 9121  # oliver006/redis_exporter's default listen port
    scrape = yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    targets = {
        (job["job_name"], name, int(port))
        for job in scrape
        for static in job.get("static_configs", [])
        for name, port in (target.split(":") for target in static["targets"])
        if name != "localhost"
    } | {
        (job["job_name"], name, dns["port"])
        for job in scrape
        for dns in job.get("dns_sd_configs", [])
        for name in dns["names"]
    }
    assert {(name, port) for _, name, port in targets} == set(serves.items())
    assert ("redis", "redis-exporter", 9121) in targets


# -- the replay profile --------------------------------------------------------------------------------


@needs_compose
def test_without_the_replay_profile_there_is_no_simulator_and_ingestion_is_live(tmp_path: Path) -> None:
    services = enabled(compose_config(tmp_path=tmp_path))
    assert "simulator" not in services
    env = check_settings(environment(services["ingestor"]))
    assert (env.bybit_ws_url, env.bybit_rest_url) == (
        "wss://stream.bybit.com/v5/public/linear",
        "https://api.bybit.com",
    )


def test_the_replay_env_file_enables_the_profile() -> None:
    assert read_env_file(REPLAY_ENV)["COMPOSE_PROFILES"] == "replay"
    # Everything else in it is a setting of the compose files (a typo would silently do nothing).
    assert set(read_env_file(REPLAY_ENV)) - {"COMPOSE_PROFILES"} <= set(compose_variables())


@needs_compose
def test_the_replay_demo_points_ingestion_at_the_simulator_for_the_symbols_it_replays(tmp_path: Path) -> None:
    config = compose_config(profiles=["replay"], env_file=REPLAY_ENV, tmp_path=tmp_path)
    services = enabled(config, ["replay"])
    simulator = services["simulator"]
    assert simulator["command"][simulator["command"].index("simulate") + 1 :][:2] == ["--host", "0.0.0.0"]
    port = option(simulator["command"], "--port")[0]

    ingest = check_settings(environment(services["ingestor"]))
    assert ingest.bybit_ws_url == f"ws://simulator:{port}/v5/public/linear"
    assert ingest.bybit_rest_url == f"http://simulator:{port}"
    assert health_url(simulator).startswith(f"http://127.0.0.1:{port}/v5/market/kline?")

    data_dir, read_only = mounts(simulator)["/data"]
    assert read_only
    files = option(simulator["command"], "--data")
    for file in files:
        assert file.startswith("/data/")
        assert (Path(data_dir) / file.removeprefix("/data/")).is_file(), f"{file} is not in {data_dir}"
    replayed = [symbol_from_path(f) for f in files]
    for name in CANDLECAST:
        assert check_settings(environment(services[name])).symbols == replayed, name
    # Replayed bars are old: the API must not report them stale against the wall clock.
    assert check_settings(environment(services["api"])).api_ready_max_lag_s == 0
    assert simulator["image"] == services["ingestor"]["image"]
    assert simulator["restart"] == "on-failure"  # it ends with its data; a restart would rewind the market


# -- the Redis Cluster override ------------------------------------------------------------------------

CLUSTER_NODES = ("redis", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6")


@needs_compose
def test_the_cluster_override_runs_six_nodes_joined_once_before_candlecast_starts(tmp_path: Path) -> None:
    """Three masters and three replicas (tests/service/test_redis_cluster_e2e.py runs that topology with
    the same entrypoint and ACL and kills a master): every node the compose Redis with its ACL, cluster
    mode, its own volume and its service name announced; the candlecast parts start once the one-shot
    init has joined them, all of them cluster clients."""
    services = compose_config(BASE, CLUSTER, tmp_path=tmp_path)["services"]
    volumes = set()
    for name in CLUSTER_NODES:
        node = services[name]
        assert node["entrypoint"] == ["sh", "/etc/candlecast/entrypoint.sh"], name
        assert node["image"] == services["redis"]["image"], name
        assert option(node["command"], "--cluster-enabled") == ["yes"], name
        assert option(node["command"], "--cluster-announce-hostname") == [name], name
        assert option(node["command"], "--appendonly") == ["yes"], name
        assert (
            environment(node)["CANDLECAST_REDIS_CLUSTER_PASSWORD"]
            == CLUSTER_SECRETS["CANDLECAST_REDIS_CLUSTER_PASSWORD"]
        )
        assert "ping" in " ".join(node["healthcheck"]["test"]), name
        volumes.add(mounts(node)["/data"][0])
    assert len(volumes) == len(CLUSTER_NODES), "each node keeps its own data and nodes.conf"
    init = services["redis-cluster-init"]
    assert set(init["depends_on"]) == set(CLUSTER_NODES)
    assert {v["condition"] for v in init["depends_on"].values()} == {"service_healthy"}
    script = init["command"][0]
    assert "--cluster create" in script and "--cluster-replicas 1" in script and "--user cluster" in script
    assert "--pass" not in script  # REDISCLI_AUTH: no password on a command line
    assert init["restart"] == "no"
    for name in CANDLECAST:
        service = services[name]
        assert service["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully"
        settings = check_settings(environment(service))
        assert settings.redis_cluster is True, name
        assert settings.redis_url is not None and "@redis:6379,redis-2:6379,redis-3:6379/0" in settings.redis_url, name
    assert environment(services["redis-exporter"])["REDIS_EXPORTER_IS_CLUSTER"] == "true"


@needs_compose
@pytest.mark.parametrize("secret", sorted(CLUSTER_SECRETS))
def test_the_cluster_override_refuses_to_start_without_its_passwords(tmp_path: Path, secret: str) -> None:
    with pytest.raises(ComposeRefused, match=secret):
        compose_config(BASE, CLUSTER, tmp_path=tmp_path, without=[secret])


# -- the GPU override ----------------------------------------------------------------------------------


@needs_compose
def test_the_gpu_override_moves_workers_to_the_gpu_image_with_a_gpu_each(tmp_path: Path) -> None:
    services = compose_config(BASE, GPU, tmp_path=tmp_path)["services"]
    worker = services["worker"]
    assert worker["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert worker["image"].startswith("candlecast-gpu:")
    assert check_settings(environment(worker)).prefer_gpu is True
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    # docker-compose 1.29 accepts only an integer or "all" here at `up` time (an interpolated "1" fails).
    assert isinstance(device["count"], int) or device["count"] == "all"
    assert worker["deploy"]["replicas"] == 2
    for name in ("ingestor", "api"):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile", name
        assert "resources" not in services[name].get("deploy", {}), name


# -- the images ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DOCKERFILE_GPU], ids=lambda p: p.name)
def test_base_images_are_pinned_to_exact_versions(dockerfile: Path) -> None:
    for image in base_images(dockerfile):
        _, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"{dockerfile.name}: {image} is not pinned"


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DOCKERFILE_GPU], ids=lambda p: p.name)
def test_final_stage_runs_candlecast_as_a_fixed_non_root_user_with_the_models(dockerfile: Path) -> None:
    final = stages(dockerfile)[-1]
    user = args_of(final, "USER")[-1].split(":")[0]
    assert user not in ("root", "0")
    assert any(f"--uid {user}" in run for run in args_of(final, "RUN")), f"uid {user} is not created in the final stage"
    assert args_of(final, "ENTRYPOINT") == ['["candlecast"]']
    env = env_of(final)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    copies = [c.split() for c in args_of(final, "COPY") if not c.startswith("--from")]
    assert ["models/artifacts", env["CANDLECAST_ARTIFACTS_DIR"]] in copies
    assert (ROOT / "models" / "artifacts" / "manifest.json").is_file()
    (healthcheck,) = args_of(final, "HEALTHCHECK")
    assert "CMD" in healthcheck and "urllib.request" in healthcheck


def test_images_install_the_lock_and_the_project_without_its_unpinned_dependencies() -> None:
    for dockerfile in (DOCKERFILE, DOCKERFILE_GPU):
        runs = " ".join(args_of(stages(dockerfile)[-2], "RUN"))
        assert "pip install --require-hashes -r /tmp/requirements" in runs, dockerfile.name
        assert "pip install --no-deps /wheels/" in runs, dockerfile.name
        name = "requirements-gpu.txt" if dockerfile == DOCKERFILE_GPU else "requirements.txt"
        assert f"COPY docker/{name} /tmp/{name}" in [f"COPY {c}" for c in args_of(stages(dockerfile)[-2], "COPY")]


def test_the_gpu_image_swaps_onnxruntime_for_the_gpu_build_of_the_same_version() -> None:
    final = stages(DOCKERFILE_GPU)[-1]
    assert env_of(final)["CANDLECAST_PREFER_GPU"] == "true"
    cpu, gpu = lock(), lock(LOCK_GPU)
    assert gpu.pop("onnxruntime-gpu") == cpu.pop("onnxruntime")  # the same ONNX Runtime version
    assert gpu == cpu  # and otherwise the same set
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", base_images(DOCKERFILE_GPU)[0])


def test_the_lock_pins_every_runtime_dependency_and_nothing_for_training_or_development() -> None:
    pins = lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {normalise(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    assert runtime <= set(pins), f"runtime dependencies missing from the lock: {sorted(runtime - set(pins))}"
    offline = {"torch", "onnx", "pytest", "mypy", "ruff", "hypothesis", "candlecast"}
    assert not offline & set(pins), f"not runtime dependencies: {sorted(offline & set(pins))}"


def test_dockerignore_keeps_what_the_images_copy_and_drops_the_rest() -> None:
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    for dockerfile in (DOCKERFILE, DOCKERFILE_GPU):
        for stage in stages(dockerfile):
            for copy in args_of(stage, "COPY"):
                if copy.startswith("--from"):
                    continue
                for source in copy.split()[:-1]:
                    paths = [p.relative_to(ROOT).as_posix() for p in ROOT.glob(source)]
                    assert paths, f"{dockerfile.name}: COPY {source} matches nothing"
                    kept = [p for p in paths if not dockerignored(p, patterns)]
                    assert kept == paths, (
                        f"{dockerfile.name}: COPY {source} but .dockerignore drops {set(paths) - set(kept)}"
                    )
    for dropped in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "models/evaluation/x.csv",
        "service/__pycache__/x.pyc",
    ):
        assert dockerignored(dropped, patterns), dropped


@needs_compose
@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_password(tmp_path: Path, secret: str) -> None:
    """No Redis user and no Grafana admin has a default password: an unset one stops compose."""
    with pytest.raises(ComposeRefused, match=secret):
        compose_config(tmp_path=tmp_path, without=[secret])


@needs_compose
def test_redis_renders_its_users_from_the_passwords_and_the_default_user_is_off(tmp_path: Path) -> None:
    redis = compose_config(tmp_path=tmp_path)["services"]["redis"]
    assert redis["entrypoint"] == ["sh", "/etc/candlecast/entrypoint.sh"]
    assert mounts(redis)["/etc/candlecast"][0].endswith("docker/redis")
    env = environment(redis)
    assert {k: env[k] for k in SECRETS if k.startswith("CANDLECAST_REDIS_")} == {
        k: v for k, v in SECRETS.items() if k.startswith("CANDLECAST_REDIS_")
    }
    template = (ROOT / "docker" / "redis" / "users.acl.template").read_text()
    assert "user default off" in template.splitlines()
    assert "--user api" in " ".join(redis["healthcheck"]["test"])  # the check authenticates too
