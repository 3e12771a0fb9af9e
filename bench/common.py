"""Shared pieces of the benchmarks: start servers, drive load with wrk or an open-loop client, read figures."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.testing import free_port  # noqa: E402

PYTHON = sys.executable
BIN = Path(sys.executable).parent

__all__ = [
    "ROOT",
    "WRK_SCRIPT",
    "Sandbox",
    "Server",
    "free_port",
    "open_loop",
    "percentile",
    "rss_mb",
    "signed_body_script",
    "wrk",
]


class Server:
    """A gunicorn (or other) process on loopback, with the project's gunicorn.conf.py settings."""

    def __init__(self, command: list[str], env: dict[str, str], *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.command = command
        self.env = {**os.environ, "RELAY_BIND": f"127.0.0.1:{self.port}", "RELAY_ACCESS_LOG": "0", **env}
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def gunicorn(cls, app: str, env: dict[str, str], **kwargs: object) -> Server:
        metrics = tempfile.mkdtemp(prefix="bench-metrics-")
        command = [
            str(BIN / "gunicorn"),
            "--config",
            str(ROOT / "gunicorn.conf.py"),
            "--pythonpath",
            f"{ROOT},{ROOT / 'bench'}",
            app,
        ]
        return cls(command, {"PROMETHEUS_MULTIPROC_DIR": metrics, **env}, **kwargs)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.command} did not start")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class Sandbox:
    """`python -m relay sandbox` in its own process, so it never shares a GIL with what is measured."""

    def __init__(self, token: str) -> None:
        self.port = free_port()
        self.token = token
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.base}/api/v1.1"

    def __enter__(self) -> Sandbox:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "relay", "sandbox", "--port", str(self.port), "--token", self.token, "--quiet"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                httpx.get(self.base + "/_fake/requests", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the sandbox did not start")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)

    def control(self, name: str, body: object = None) -> None:
        httpx.post(f"{self.base}/_fake/{name}", json=body or {}, timeout=5)


def report_with_sandbox(
    token: str, parser: argparse.ArgumentParser, run: Callable[[Sandbox, argparse.Namespace], dict[str, object]]
) -> None:
    """Parse the arguments, run a benchmark against a fresh sandbox, print its report as JSON."""
    args = parser.parse_args()
    with Sandbox(token) as sandbox:
        report = run(sandbox, args)
    print(json.dumps(report, indent=2))


WRK_SCRIPT = """
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  local n = math.random(1, 1000000000)
  local body = '{"Email":"lead' .. n .. '@example.com","Name":"Lead ' .. n .. '","tranid":"b:' .. n .. '"}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
"""


def signed_body_script(body_path: str, headers: dict[str, str], unique_header: str) -> str:
    """A wrk script that sends one signed body again and again, each time under a new id in `unique_header`.

    wrk cannot sign a body it makes up, but a provider's webhook id travels in a header its signature
    does not cover: every request is then a new delivery for relay, with the same bytes to parse and store.
    """
    fixed = ", ".join(f"[{json.dumps(name)}] = {json.dumps(value)}" for name, value in headers.items())
    return f"""
math.randomseed(os.time() + tonumber(tostring({{}}):sub(8), 16))
local file = io.open({json.dumps(body_path)}, "rb")
local body = file:read("*a")
file:close()
request = function()
  local headers = {{{fixed}}}
  headers[{json.dumps(unique_header)}] = "bench-" .. math.random(1, 1000000000) .. "-" .. math.random(1, 1000000000)
  return wrk.format("POST", nil, headers, body)
end
"""


def wrk(
    url: str,
    *,
    seconds: int = 10,
    connections: int = 16,
    threads: int = 2,
    rate: float | None = None,
    script: str = WRK_SCRIPT,
) -> dict[str, float]:
    """Closed-loop maximum throughput with wrk, unique JSON bodies (or what `script` sends).

    With `rate`, each of `connections` connections waits connections/rate seconds after every
    answer, which paces the whole near `rate` while answers are much faster than that wait (the
    achieved rate is reported). wrk's C client keeps such a pace on two shared cores; a Python
    open-loop client at 300 requests/s could not, and its own lag swamped the latencies.
    """
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script)
        if rate:
            lua.write(f"delay = function() return {connections / rate * 1000:.1f} end\n")
    output = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", lua.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(lua.name)

    def millis(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests_per_second": round(rps, 1),
        "p50_ms": millis("50"),
        "p99_ms": millis("99"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def open_loop(url: str, *, rate: float, seconds: float, body: Callable[[int], bytes]) -> dict[str, float]:
    """Send at a fixed rate whatever the answers take (so slow answers cannot hide), and time each."""

    async def run() -> dict[str, float]:
        latencies: list[float] = []
        errors = 0
        limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:

            async def one(index: int) -> None:
                nonlocal errors
                started = time.perf_counter()
                try:
                    response = await client.post(url, content=body(index), headers={"Content-Type": "application/json"})
                    if response.status_code >= 300:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

            tasks = []
            total = int(rate * seconds)
            began = time.perf_counter()
            for index in range(total):
                delay = began + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(index)))
            await asyncio.gather(*tasks)
        return {
            "rate": rate,
            "requests": len(latencies),
            "errors": errors,
            "p50_ms": round(percentile(latencies, 0.50), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "mean_ms": round(statistics.fmean(latencies), 2) if latencies else float("nan"),
        }

    return asyncio.run(run())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def children_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of the direct children of `pid` (gunicorn's workers), from /proc."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
