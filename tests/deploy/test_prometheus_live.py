"""The alert rules against a real Prometheus scraping the service running as a real process:
stop the venue, and MdsFeedDisconnected goes pending, then firing.

The rules file is loaded as shipped except for its ``for:`` durations, shortened to seconds so
the test takes seconds (the expressions, labels and annotations are the shipped ones)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx

from adapters.alpaca_compatible_server.config import ServerConfig
from entrypoints.testbed.helpers import alpaca_server, service_process
from tests.conditions import wait_for
from tests.deploy.test_prometheus_rules import RULES
from tests.deploy.tools import need


def _fast_rules(target: Path) -> None:
    text = RULES.read_text()
    text = re.sub(r"for: \d+[smh]", "for: 3s", text)
    text = text.replace("[10m]", "[30s]").replace("[5m]", "[30s]")
    target.write_text(text)


# Prometheus binds port 0 and logs the port it got (checked with 2.42):
#   ... msg="Listening on" address=127.0.0.1:45177
LISTENING = re.compile(r'msg="Listening on" address=127\.0\.0\.1:(\d+)')


def _start_prometheus(binary: str, workdir: Path) -> subprocess.Popen[bytes]:
    with (workdir / "prometheus.log").open("wb") as log:
        return subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                "--web.listen-address=127.0.0.1:0",
            ],
            stdout=log,
            stderr=log,
            cwd=workdir,
        )


async def test_feed_disconnect_alert_goes_pending_then_firing(tmp_path: Path) -> None:
    prometheus = need("prometheus", "prometheus")
    with anyio.fail_after(150):
        async with anyio.create_task_group() as tg:
            feed_scope = anyio.CancelScope()
            ready = anyio.Event()
            holder: list[Any] = []

            async def run_server() -> None:
                with feed_scope:
                    async with alpaca_server(ServerConfig(rate=20.0)) as server:
                        holder.append(server)
                        ready.set()
                        await anyio.sleep_forever()

            tg.start_soon(run_server)
            await ready.wait()
            async with service_process(tmp_path, holder[0], None) as service:
                await service.wait_health(lambda h: h["websocket_connected"] is True, 30)
                _fast_rules(tmp_path / "rules.yml")
                target = service.http.removeprefix("http://")
                (tmp_path / "prometheus.yml").write_text(
                    "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                    "rule_files: [rules.yml]\n"
                    "scrape_configs:\n"
                    f"  - job_name: mds\n    static_configs: [{{targets: ['{target}']}}]\n"
                )
                proc = _start_prometheus(prometheus, tmp_path)
                try:
                    log = tmp_path / "prometheus.log"
                    await wait_for(lambda: LISTENING.search(log.read_text()) is not None, 30)
                    found = LISTENING.search(log.read_text())
                    assert found is not None
                    port = int(found.group(1))
                    async with httpx.AsyncClient(
                        base_url=f"http://127.0.0.1:{port}", timeout=5
                    ) as prom:

                        async def alert_states() -> dict[str, str]:
                            try:
                                body = (await prom.get("/api/v1/alerts")).json()
                            except (httpx.HTTPError, ValueError):  # not up yet / starting
                                return {}
                            return {
                                a["labels"]["alertname"]: a["state"] for a in body["data"]["alerts"]
                            }

                        async def scraped_connected() -> bool:
                            try:
                                answer = await prom.get(
                                    "/api/v1/query",
                                    params={"query": 'mds_connection_state{state="connected"}'},
                                )
                                result = answer.json()["data"]["result"]
                            except (httpx.HTTPError, ValueError, KeyError):  # still starting
                                return False
                            return bool(result) and result[0]["value"][1] == "1"

                        await wait_for(scraped_connected, 60, step_s=0.2)
                        assert "MdsFeedDisconnected" not in await alert_states()

                        feed_scope.cancel()  # the venue goes away
                        seen: list[str] = []

                        async def firing() -> bool:
                            state = (await alert_states()).get("MdsFeedDisconnected")
                            if state is not None and (not seen or seen[-1] != state):
                                seen.append(state)
                            return state == "firing"

                        await wait_for(firing, 60, step_s=0.1)
                        assert seen[0] == "pending", seen
                        body = (await prom.get("/api/v1/alerts")).json()["data"]["alerts"]
                        alert = next(
                            a for a in body if a["labels"]["alertname"] == "MdsFeedDisconnected"
                        )
                        assert alert["labels"]["severity"] == "critical"
                        assert "ALPACA_STREAM_URL" in alert["annotations"]["description"]
                finally:
                    proc.terminate()
                    proc.wait(10)
            tg.cancel_scope.cancel()
