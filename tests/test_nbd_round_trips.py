"""The writer's connection count on a loaded node: the least round trip of a
path's last minutes decides, not one slow moment (nbd/round_trips.py). Real
qemu-nbd; the slow probe is forced, as a loaded machine cannot be made on cue."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sendense.nbd.qemu_img import QemuImg
from sendense.nbd.round_trips import RoundTrips, path_of
from sendense.nbd.writer import NbdWriter
from sendense.node.forwards import HubExports, socket_uri, sockets_dir
from sendense.node.tunnel import tunnel_dir
from tests.test_nbd_writer import MiB, block, expected_raw, image, run, served, uri_of

__all__ = ["image"]  # the fixture


def test_a_slow_moment_does_not_make_a_near_path_far(
    image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer whose own round trip comes out slow (a loaded node: 20 ms) stays on
    one connection when the path measured near within the window, and opens them
    all once that is older than the window, or with no memory at all."""
    writes = [(i * MiB, block(i)) for i in range(4)]

    async def slow(self: NbdWriter, client: object) -> float:
        return 0.020

    monkeypatch.setattr(NbdWriter, "_round_trip", slow)
    with served(image) as server:
        uri = uri_of(server)

        async def scenario(round_trips: RoundTrips | None) -> NbdWriter:
            async with NbdWriter(
                uri,
                request_size=MiB,
                connections=4,
                spread_from_rtt=0.003,
                round_trips=round_trips,
            ) as w:
                for offset, data in writes:
                    await w.write(offset, data)
                await w.flush()
            return w

        memory = RoundTrips(window_s=300)
        memory.least(path_of(uri), 0.0004)  # an earlier writer, at a quiet moment
        remembered = run(scenario(memory))
        forgotten = RoundTrips(window_s=300)
        forgotten.least(path_of(uri), 0.0004, now=time.monotonic() - 301)
        expired = run(scenario(forgotten))
        alone = run(scenario(None))
    assert remembered.stats.connections == 1
    assert remembered.stats.round_trip_s == 0.0004
    assert (expired.stats.connections, alone.stats.connections) == (4, 4)
    assert QemuImg().compare(expected_raw(tmp_path / "expected.raw", writes), image, "raw", "qcow2")


def test_round_trips_keep_the_least_of_the_window_per_path() -> None:
    trips = RoundTrips(window_s=10)
    assert trips.least("unix:/a", 0.005, now=0) == 0.005
    assert trips.least("unix:/a", 0.002, now=1) == 0.002
    assert trips.least("unix:/a", 0.009, now=5) == 0.002
    assert trips.least("tcp:hub", 0.030, now=5) == 0.030  # another path
    assert trips.least("unix:/a", 0.007, now=11.5) == 0.007  # 0.002 (t=1) expired
    assert trips.least("unix:/a", 0.008, now=12) == 0.007
    assert path_of("nbd+unix:///d?socket=/run/t/sockets/10100.sock") == "unix:/run/t/sockets"
    assert path_of("nbd+unix:///e?socket=/run/t/sockets/10101.sock") == "unix:/run/t/sockets"
    assert path_of("nbd://10.0.0.5:10100/d") == path_of("nbd://10.0.0.5:10101/e")


def test_a_tunnel_that_connects_again_is_a_new_path(tmp_path: Path) -> None:
    """The tunnel's sockets are remembered under its hub and the time it came
    up: after a reconnection (another route, a hub moved) the first probe is
    not mistaken for the old path's. Other URIs keep their own path."""
    exports = HubExports(tmp_path)
    uri = socket_uri(sockets_dir(tmp_path) / "10100.sock", "disk")
    status = tunnel_dir(tmp_path) / "status.json"
    status.write_text(json.dumps({"state": "connected", "hub": "hub:2222", "since": 1.0}))
    first = exports.path_key(uri)
    assert first == exports.path_key(socket_uri(sockets_dir(tmp_path) / "10101.sock", "d2"))
    status.write_text(json.dumps({"state": "connected", "hub": "hub:2222", "since": 2.0}))
    assert exports.path_key(uri) not in (first, "tunnel")
    status.unlink()
    assert exports.path_key(uri) == "tunnel"
    assert exports.path_key("nbd://10.0.0.5:10100/d") == "tcp:10.0.0.5"
