"""TLS (``rediss://``): a redis-server with a TLS port and a certificate from a throwaway CA
(trustme). The store and the reader work over TLS when the URL names the CA
(``?ssl_ca_certs=...``); a server whose certificate the client cannot verify is an outage with
a clear cause, never a silent plain-text fallback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import trustme

from adapters.redis import PriceReader, RedisMode, open_redis_store
from tests.adapters.redis.helpers import T0, price, unique
from tests.conditions import receive
from tests.price_contract import check_price_json
from tests.redis_servers import RedisServer, free_port, start_sentinel, start_server

pytestmark = pytest.mark.redis


@dataclass(frozen=True)
class Certificates:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_args(self) -> tuple[str, ...]:
        """Arguments for a TLS port; a fresh port each call (see ``start_server``)."""
        return (
            "--tls-port", str(free_port()),
            "--tls-cert-file", str(self.cert_file),
            "--tls-key-file", str(self.key_file),
            "--tls-ca-cert-file", str(self.ca_file),
            "--tls-auth-clients", "no",
        )  # fmt: skip


@dataclass(frozen=True)
class TlsRedis:
    server: RedisServer
    tls_port: int
    ca_file: Path

    def url(self, ca_file: Path | None = None) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0?ssl_ca_certs={ca_file or self.ca_file}"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    found = Certificates(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(found.ca_file))
    cert.private_key_pem.write_to_path(str(found.key_file))
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(found.cert_file), append=i > 0)
    return found


@pytest.fixture(scope="module")
def tls_redis(
    certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsRedis]:
    # redis-server cannot take --tls-port 0 (it disables TLS): start_server picks another port
    # if this one is taken by the time the server binds it, and the port is read back.
    server = start_server(tmp_path_factory.mktemp("tls-redis"), extra_args=certificates.server_args)
    try:
        yield TlsRedis(server, server.tls_port(), certificates.ca_file)
    finally:
        server.stop()


async def test_store_and_reader_work_over_tls(tls_redis: TlsRedis) -> None:
    s = unique("TLS")
    async with open_redis_store(tls_redis.url(), require_connection=True) as store:
        async with store.bus.subscribe([s]) as prices:
            applied = await store.cache.put_many([price(s, T0)])
            await store.bus.publish_many(applied)
            assert await receive(prices, 1) == [price(s, T0)]
        assert await store.cache.get(s) == price(s, T0)
    # The write really went to that server (read back on its plain port).
    with tls_redis.server.client() as c:
        assert (
            check_price_json(c.get("price:" + s)) and c.get("price:" + s) == price(s, T0).to_json()
        )
    with PriceReader(tls_redis.url()) as reader:
        aged = await anyio.to_thread.run_sync(reader.get_sync, s)
    assert aged is not None and aged.price == price(s, T0)


async def test_a_certificate_from_another_ca_is_refused(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with pytest.raises(ConnectionError) as info:
        async with open_redis_store(tls_redis.url(other_ca), require_connection=True):
            pass
    assert "certificate verify failed" in str(info.value).lower()


async def test_plain_redis_url_on_the_tls_port_is_an_outage(tls_redis: TlsRedis) -> None:
    with pytest.raises(ConnectionError):
        async with open_redis_store(
            f"redis://127.0.0.1:{tls_redis.tls_port}/0", require_connection=True
        ):
            pass


async def test_sentinel_hands_out_a_tls_master_and_the_store_uses_the_urls_ca(
    certificates: Certificates, tmp_path: Path
) -> None:
    # The sentinel answers on plain TCP and monitors the master's TLS port (so that is the
    # address it hands out); the URL says TLS and names the CA for the master connection.
    c = certificates
    handle = start_sentinel(
        directory=tmp_path,
        master_args=c.server_args,
        monitor_tls_port=True,
        sentinel_conf=(
            f"tls-replication yes\ntls-cert-file {c.cert_file}\ntls-key-file {c.key_file}\n"
            f"tls-ca-cert-file {c.ca_file}\n"
        ),
    )
    try:
        s = unique("STLS")
        async with open_redis_store(
            f"rediss://ignored-in-sentinel-mode/0?ssl_ca_certs={c.ca_file}",
            mode=RedisMode.SENTINEL,
            sentinels=handle.sentinels,
            master_name=handle.master_name,
            require_connection=True,
        ) as store:
            async with store.bus.subscribe([s]) as prices:
                await store.bus.publish_many(await store.cache.put_many([price(s, T0)]))
                assert await receive(prices, 1) == [price(s, T0)]
            assert await store.cache.get(s) == price(s, T0)
        with handle.master.client() as plain:
            raw = plain.get("price:" + s)
            assert check_price_json(raw) and raw == price(s, T0).to_json()
    finally:
        handle.stop()
