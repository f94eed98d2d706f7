"""Progress that fits where it goes: a periodic one-line report when stderr is not a
terminal, bars with a total line (throughput, ETA) on a terminal, one summary line when the
layers do not fit the terminal's rows; upload progress for convert to a registry and push."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_interrupt import LAYERS, build_layout

LINE = re.compile(r"indexing: (\d+)/(\d+) layers, [\d.]+ (?:B|KiB|MiB|GiB) / [\d.]+ "
                  r"(?:B|KiB|MiB|GiB) \(\d+%\), [\d.]+ (?:B|KiB|MiB|GiB)/s")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lay = tmp_path_factory.mktemp("progress") / "lay"
    build_layout(lay)
    return lay


def env_for(root: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, SOCI_NATIVE_ROOT=str(root), **extra)


def test_periodic_report_when_not_a_terminal(layout: Path, tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "soci_native.cli", "create", f"oci:{layout}:t",
                        "--jobs", "1"], capture_output=True, text=True,
                       env=env_for(tmp_path / "s", SOCI_NATIVE_PROGRESS_INTERVAL="0.1"))
    assert p.returncode == 0, p.stderr
    reports = [LINE.search(x) for x in p.stderr.splitlines() if x.startswith("indexing: ")]
    assert reports and all(reports), p.stderr
    counts = [int(m.group(1)) for m in reports if m]
    assert counts == sorted(counts) and all(int(m.group(2)) == LAYERS for m in reports if m)
    assert "\033[" not in p.stderr  # no terminal control codes in a log
    assert sum(x.startswith("layer sha256:") for x in p.stderr.splitlines()) == LAYERS
    # the default interval (10 s) keeps a short run's log to the results alone
    q = subprocess.run([sys.executable, "-m", "soci_native.cli", "create", f"oci:{layout}:t"],
                       capture_output=True, text=True, env=env_for(tmp_path / "s"))
    assert q.returncode == 0 and "indexing: " not in q.stderr, q.stderr


def on_terminal(args: list[str], root: Path, rows: int) -> str:
    """Runs the command with stderr on a pseudo-terminal of ``rows`` rows; its output."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    p = subprocess.run([sys.executable, "-m", "soci_native.cli", *args], stdout=subprocess.PIPE,
                       stderr=slave, env=env_for(root, LINES=str(rows), COLUMNS="200"),
                       timeout=300)
    os.close(slave)
    t.join(timeout=10)
    os.close(master)
    assert p.returncode == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_terminal_bars_or_one_summary_line(layout: Path, tmp_path: Path) -> None:
    args = ["create", f"oci:{layout}:t", "--jobs", "2", "--force"]
    tall = on_terminal(args, tmp_path / "s", rows=60)
    assert re.search(r"[0-9a-f]{12}  \[#*\s*\] +\d+%", tall), tall[-2000:]  # per-layer bars
    assert LINE.search(tall)
    short = on_terminal(args, tmp_path / "s", rows=LAYERS)  # more layers than fit
    assert not re.search(r"[0-9a-f]{12}  \[#*\s*\] +\d+%", short), short[-2000:]
    assert LINE.search(short) and "ETA" in short


def test_upload_progress_for_convert_and_push(layout: Path, tmp_path: Path) -> None:
    import reg_server

    if not reg_server.available():
        pytest.skip("needs docker-registry (apt)")
    root = tmp_path / "s"
    env = env_for(root, SOCI_NATIVE_PROGRESS_INTERVAL="0.05")
    with reg_server.Registry.start(tmp_path / "reg") as reg:
        dst = f"docker://{reg.host}/app:soci"
        p = subprocess.run([sys.executable, "-m", "soci_native.cli", "convert",
                            f"oci:{layout}:t", dst], capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        done = [x for x in p.stderr.splitlines() if x.startswith("uploaded ")]
        assert len(done) == 1 and re.fullmatch(r"uploaded (\d+) of \1 blobs \(.+\)", done[0])
        n = int(done[0].split()[1])
        assert n >= LAYERS  # the layers, config, zTOCs...
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:t",
                        f"docker://{reg.host}/app:v1"], check=True)
        cli = [sys.executable, "-m", "soci_native.cli"]
        subprocess.run([*cli, "create", f"docker://{reg.host}/app:v1"], check=True,
                       capture_output=True, env=env)
        q = subprocess.run([*cli, "push", f"docker://{reg.host}/app:v1", "--json"],
                           capture_output=True, text=True, env=env)
        assert q.returncode == 0, q.stderr
        assert json.loads(q.stdout)[0]["status"] == "pushed"
        r = subprocess.run([*cli, "push", f"docker://{reg.host}/app:v1",
                            "--existing-index", "allow"], capture_output=True, text=True,
                           env=env)
        assert r.returncode == 0, r.stderr
        pushed = [x for x in r.stderr.splitlines() if x.startswith("uploaded ")]
        assert pushed == [f"uploaded {LAYERS + 1} of {LAYERS + 1} blobs"
                          + pushed[0][len(f"uploaded {LAYERS + 1} of {LAYERS + 1} blobs"):]]
