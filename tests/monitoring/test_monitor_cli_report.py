"""`loopml monitor run/status/report`, and the HTML report rendered by headless Chromium with its charts."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from loopml.cli.main import app
from tests.helpers import START

AT = (START + pd.Timedelta(days=12)).isoformat()


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_run_alerts_writes_gauges_and_status_lists_what_fires(served, webhook, tmp_path: Path) -> None:
    project, _ = served
    url, received = webhook
    gauges = tmp_path / "monitor.prom"
    output = cli(
        "monitor",
        "run",
        "toy",
        "--since",
        "3d",
        "--at",
        AT,
        "--webhook",
        url,
        "--metrics-file",
        str(gauges),
        "-p",
        str(project.path),
    )
    assert "3 window(s)" in output and "alert.fired critical toy/toy/1/drift/amount" in output
    assert received and any(a["key"] == "toy/toy/1/drift/amount" for a in received[0]["alerts"])
    assert 'loopml_drift_severity{endpoint="toy",feature="amount",version="toy/1"} 2.0' in gauges.read_text()
    status = cli("monitor", "status", "toy", "-p", str(project.path))
    assert "critical" in status and "amount" in status
    again = cli("monitor", "run", "toy", "--since", "3d", "--at", AT, "-p", str(project.path))
    assert "alert.fired" not in again  # still firing: de-duplicated
    assert "No alert is firing for endpoint 'other'." in cli(
        "monitor", "status", "other", "-p", str(project.path)
    )


def test_bad_window_options_are_refused_clearly(served) -> None:
    project, _ = served
    result = CliRunner().invoke(app, ["monitor", "run", "toy", "--count", "0", "-p", str(project.path)])
    assert result.exit_code == 1 and "rows >= 1" in str(result.exception)


def test_the_report_is_self_contained_html_and_json(served, tmp_path: Path) -> None:
    project, version = served
    html, data = tmp_path / "report.html", tmp_path / "report.json"
    cli(
        "monitor",
        "report",
        "toy",
        "--since",
        "3d",
        "--at",
        AT,
        "--out",
        str(html),
        "--json",
        str(data),
        "-p",
        str(project.path),
    )
    page = html.read_text()
    assert page.count("<svg") == len(version.inputs) + 3  # a histogram per input and three time series
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert "<script" not in page
    windows = json.loads(data.read_text())["windows"]
    assert len(windows) == 3 and windows[-1]["drift"]["features"][0]["feature"] == "amount"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Chromium is not installed (CI=true: `make test` installs Debian's chromium)")
        pytest.skip("Chromium is not installed (Debian package chromium; `make test` installs it)")
    return found


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium_with_its_charts(served, tmp_path: Path) -> None:
    browser = chromium()
    project, _ = served
    html, shot = tmp_path / "report.html", tmp_path / "report.png"
    cli("monitor", "report", "toy", "--since", "3d", "--at", AT, "--out", str(html), "-p", str(project.path))
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1200,1800",
            html.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    width, height, pixels = read_png(shot.read_bytes())
    assert (width, height) == (1200, 1800)
    painted = sum(1 for r, g, b in pixels if (r, g, b) != (255, 255, 255))
    chart_blue = sum(1 for r, g, b in pixels if b > 180 and r < 90 and g < 140)  # the charts' first colour
    assert painted / len(pixels) > 0.05, "the page is (almost) blank"
    assert chart_blue > 500, "no chart drawn in the palette's blue"


def read_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """The pixels of an 8-bit RGB or RGBA PNG (what Chromium writes), undoing each row's filter."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, [], b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6), (depth, color)
    channels = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    pixels = [(row[x], row[x + 1], row[x + 2]) for row in rows[::4] for x in range(0, stride, channels * 4)]
    return width, height, pixels
