"""The ``candlecast`` command as an operator runs it: real processes, real sockets, real Redis."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.redis_server import free_port

pytestmark = pytest.mark.timeout(120)

CLI = [sys.executable, "-m", "service.cli"]
ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CANDLECAST_")}
    base.update(extra)
    return base


def test_invalid_configuration_exits_2_and_names_the_variable() -> None:
    proc = subprocess.run(
        [*CLI, "inspect", "BTCUSDT"],
        env=env(CANDLECAST_SYMBOLS="btc-usdt"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "CANDLECAST_SYMBOLS" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_inspect_needs_redis_and_says_so() -> None:
    proc = subprocess.run([*CLI, "inspect", "BTCUSDT"], env=env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "CANDLECAST_REDIS_URL" in proc.stderr


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("missing.csv.gz", "evaluate: no bar file missing.csv.gz"),
        ("../shared/data/klines_1h/binance_spot_BTCUSDT_1h.csv.gz", "60m bars; evaluate reads 1m bar files"),
    ],
)
def test_evaluate_input_errors_are_one_line_and_exit_2(data: str, expected: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CLI, "evaluate", "--data", data, "--out", str(tmp_path / "out")],
        env=env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("candlecast: ") and expected in last, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "report.md").exists()  # nothing half-written


def test_input_mistakes_get_one_line_naming_the_problem(redis_url: str) -> None:
    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], env=env(**extra), cwd=ROOT, capture_output=True, text=True, timeout=60)

    speed = cli("simulate", "--speed", "-5")
    assert speed.returncode == 2 and "--speed: must be a number > 0, got -5" in speed.stderr
    down = cli("inspect", "BTCUSDT", CANDLECAST_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert down.returncode == 2 and "does not answer" in down.stderr and "Traceback" not in down.stderr
    run_down = cli("run", "--replay", CANDLECAST_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert run_down.returncode == 2 and "Traceback" not in run_down.stderr
    assert "does not answer" in run_down.stderr and "unset CANDLECAST_REDIS_URL to run in memory" in run_down.stderr
    unknown = cli(
        "inspect", "DOGEUSDT", CANDLECAST_REDIS_URL=redis_url, CANDLECAST_REDIS_PREFIX=f"x{uuid.uuid4().hex[:8]}"
    )
    assert unknown.returncode == 1
    assert "DOGEUSDT is not configured (CANDLECAST_SYMBOLS=BTCUSDT,ETHUSDT)" in unknown.stderr


def test_replay_file_mistakes_get_one_line_naming_the_file(tmp_path: Path, bybit_btc_1m: Path) -> None:
    """A file without a symbol in its name, a missing one, one that is not gzip, a bad header, and
    CANDLECAST_SYMBOLS naming a symbol the replay has no file for: one line, exit 2, no traceback."""
    import gzip

    def replay(*files: Path, **extra: str) -> subprocess.CompletedProcess[str]:
        args = [*CLI, "run", "--replay", *map(str, files)]
        return subprocess.run(args, env=env(**extra), cwd=ROOT, capture_output=True, text=True, timeout=60)

    unnamed = tmp_path / "bars.csv.gz"
    unnamed.write_bytes(bybit_btc_1m.read_bytes())
    plain = tmp_path / "bybit_linear_ETHUSDT_1m.csv.gz"
    plain.write_text("open_time_ms,open,high,low,close,volume\n")
    header = tmp_path / "bybit_linear_SOLUSDT_1m.csv.gz"
    with gzip.open(header, "wt") as fh:
        fh.write("time,price\n1,2\n")
    tiny = tmp_path / "bybit_linear_DOGEUSDT_1m.csv.gz"
    with gzip.open(bybit_btc_1m, "rt") as src, gzip.open(tiny, "wt") as dst:
        dst.writelines(line for _, line in zip(range(201), src, strict=False))
    cases = [
        (replay(tiny), "the data holds 200 one-minute bars in common: a replay needs at least 301"),
        (replay(unnamed), "cannot tell the symbol from file name 'bars.csv.gz'"),
        (replay(tmp_path / "bybit_linear_XRPUSDT_1m.csv.gz"), "bybit_linear_XRPUSDT_1m.csv.gz: no such file"),
        (replay(plain), f"cannot replay {plain}: not a gzip file"),
        (replay(header), "header must contain open_time_ms,open,high,low,close,volume, got time,price"),
        (
            replay(bybit_btc_1m, CANDLECAST_SYMBOLS="btcusdt,FOO"),
            "CANDLECAST_SYMBOLS names FOO, which the replay has no file for (it replays BTCUSDT)",
        ),
    ]
    for done, message in cases:
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"cli-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{name}:*"):
        client.delete(key)


def test_simulate_ingest_inspect_round_trip(redis_url: str, prefix: str, bybit_btc_1m: Path, tmp_path: Path) -> None:
    """README path: simulate in one process, ingest in another, inspect the store from a third."""
    port, metrics_port = free_port(), free_port()
    sim_log, ingest_log = tmp_path / "sim.log", tmp_path / "ingest.log"
    settings = env(
        CANDLECAST_REDIS_URL=redis_url,
        CANDLECAST_REDIS_PREFIX=prefix,
        CANDLECAST_SYMBOLS="btcusdt",
        CANDLECAST_WINDOW_BARS="32",
        CANDLECAST_BYBIT_WS_URL=f"ws://127.0.0.1:{port}/v5/public/linear",
        CANDLECAST_BYBIT_REST_URL=f"http://127.0.0.1:{port}",
        CANDLECAST_INGEST_METRICS_PORT=str(metrics_port),
    )
    sim_cmd = [
        *CLI,
        "simulate",
        "--data",
        str(bybit_btc_1m),
        "--port",
        str(port),
        "--speed",
        "600",
        "--start-offset-bars",
        "2400",
    ]
    procs: list[subprocess.Popen[bytes]] = []
    with sim_log.open("wb") as sim_out, ingest_log.open("wb") as ingest_out:
        try:
            procs.append(subprocess.Popen(sim_cmd, env=env(), cwd=ROOT, stdout=sim_out, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 30
            while "simulator:" not in sim_log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert f"WS ws://127.0.0.1:{port}/v5/public/linear" in sim_log.read_text()
            ingest = subprocess.Popen(
                [*CLI, "ingest"], env=settings, cwd=ROOT, stdout=ingest_out, stderr=subprocess.STDOUT
            )
            procs.append(ingest)
            report = _inspect_until_full(settings, 32)
            assert report["configured"] is True
            assert set(report["intervals"]) == {"1", "5", "15", "60"}
            assert float(report["book"]["best_bid"]) < float(report["book"]["best_ask"])
            assert report["depth_window"]["rows"] > 0
            assert set(report["intervals"]["1"]["bars"][-1]) == {"start", "open", "high", "low", "close", "volume"}

            # Prometheus can scrape the ingestor on its own port.
            scraped = _scrape(f"http://127.0.0.1:{metrics_port}/metrics")
            assert scraped["candlecast_ingest_messages_total"][(("type", "kline"),)] > 0
            assert scraped["candlecast_ingest_book_ready"][(("symbol", "BTCUSDT"),)] == 1
            assert {labels for labels in scraped["candlecast_ingest_windows_incomplete"]} == {
                (("interval", iv),) for iv in ("1", "5", "15", "60")
            }

            ingest.send_signal(signal.SIGTERM)
            assert ingest.wait(timeout=20) == 0, ingest_log.read_text()[-3000:]
            stopped = _inspect(settings)
            assert stopped["book"]["state"] == "INVALID"
            assert stopped["book"]["reason"] == "ingestor stopped"
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample values by sample name and sorted labels, parsed with prometheus_client's own parser."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _inspect(settings: dict[str, str]) -> dict:  # type: ignore[type-arg]
    proc = subprocess.run(
        [*CLI, "inspect", "BTCUSDT", "--bars", "0"], env=settings, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _inspect_until_full(settings: dict[str, str], bars: int) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 60
    report: dict = {}  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        report = _inspect(settings)
        ivs = report["intervals"]
        full = all(ivs[iv]["count"] == bars and ivs[iv]["contiguous"] for iv in ivs)
        if full and (report["book"] or {}).get("state") == "READY":
            return report
        time.sleep(0.3)
    pytest.fail(f"windows never filled: {json.dumps(report)[:2000]}")


def test_candlecast_symbols_is_honoured_by_a_replay_that_has_their_files(bybit_btc_1m: Path) -> None:
    from service.compose import replayed_symbols
    from service.settings import load_settings

    files = [bybit_btc_1m, bybit_btc_1m.with_name("bybit_linear_ETHUSDT_1m.csv.gz")]
    assert replayed_symbols(load_settings(), files) == ["BTCUSDT", "ETHUSDT"]  # not set: the files'
    assert replayed_symbols(load_settings(symbols=["ethusdt"]), files) == ["ETHUSDT"]  # set: honoured


async def test_a_long_running_command_runs_with_its_start_up_heap_frozen() -> None:
    """`candlecast ingest`, `worker` and `api` run their part through this, once started."""
    from service.cli import _announce_and_run

    seen: list[int] = []

    async def part() -> None:
        seen.append(gc.get_freeze_count())

    gc.unfreeze()
    assert await _announce_and_run("serving", part()) == 0
    assert seen and seen[0] > 0


def test_the_one_process_run_freezes_its_heap_once_the_api_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.cli import main
    from tests.service.test_run import short_file

    for var in ("CANDLECAST_REDIS_URL", "CANDLECAST_API_KEYS", "CANDLECAST_SYMBOLS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CANDLECAST_API_PORT", "0")
    gc.unfreeze()
    assert main(["run", "--replay", str(short_file(tmp_path, 400)), "--speed", "3000"]) == 0  # to the end of the data
    assert gc.get_freeze_count() > 0
