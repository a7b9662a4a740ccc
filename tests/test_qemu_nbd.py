"""The qemu-nbd wrapper against the real binary."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import nbd
import pytest

from sendense.common.errors import ToolFailed
from sendense.common.processes import process_info
from sendense.nbd.psk import nbds_uri, new_key, write_psk
from sendense.nbd.qemu_img import QemuImg
from sendense.nbd.qemu_nbd import ExportSpec, QemuNbd, is_qemu_nbd_for
from tests.rig.net import free_port
from tests.rig.procs import listening_addresses


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.qcow2"
    QemuImg().create(path, 16 << 20)
    return path


def test_serves_on_loopback_only_survives_probes_and_stops(image: Path, tmp_path: Path) -> None:
    port = free_port()
    server = QemuNbd(ExportSpec(image, port, "disk0"), log_path=tmp_path / "q.log")
    with server:
        assert listening_addresses(port) == [f"127.0.0.1:{port}"]
        assert server.healthy()
        assert server.healthy()  # --persistent: a probe does not end the server
        info = process_info(server.pid)
        assert info is not None
        assert is_qemu_nbd_for(info, port, str(image))
        assert not is_qemu_nbd_for(info, port + 1, str(image))
        assert "--shared=10" in server.argv
        handle = nbd.NBD()
        handle.connect_uri(f"nbd://127.0.0.1:{port}/disk0")
        assert handle.get_size() == 16 << 20
        assert handle.can_multi_conn()
        handle.shutdown()
        pid = server.pid
    assert process_info(pid) is None


def test_a_port_in_use_fails_with_the_servers_own_words(image: Path, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = QemuNbd(ExportSpec(image, port, "disk0"), log_path=tmp_path / "q.log")
        with pytest.raises(ToolFailed) as caught:
            server.start(timeout=5)
    assert caught.value.argv[0] == "qemu-nbd"
    assert caught.value.returncode not in (None, 0)  # it exited by itself, not at the deadline
    assert os.strerror(errno.EADDRINUSE) in caught.value.stderr


def test_a_missing_binary_is_a_clear_error(image: Path) -> None:
    server = QemuNbd(ExportSpec(image, free_port(), "d"), binary="/nonexistent/qemu-nbd")
    with pytest.raises(ToolFailed) as missing:
        server.start()
    assert missing.value.returncode is None
    assert "/nonexistent/qemu-nbd" in missing.value.message


def test_tls_psk_reads_the_key_from_its_directory_whatever_its_name(
    image: Path, tmp_path: Path
) -> None:
    """A directory name with a comma (QEMU's option separator) still names the key;
    the key is in no argv, and a client without it is refused."""
    port = free_port()
    keys = tmp_path / "keys, of the server"
    key = new_key()
    psk_file = write_psk(keys, "user-1", key)
    server = QemuNbd(ExportSpec(image, port, "disk0", tls_dir=keys), log_path=tmp_path / "q.log")
    with server:
        assert key not in " ".join(server.argv)
        handle = nbd.NBD()
        handle.set_uri_allow_local_file(True)
        handle.connect_uri(nbds_uri("user-1", "127.0.0.1", port, "disk0", psk_file))
        assert handle.get_size() == 16 << 20
        assert handle.get_tls_negotiated()
        handle.shutdown()
        plain = nbd.NBD()
        with pytest.raises(nbd.Error):
            plain.connect_uri(f"nbd://127.0.0.1:{port}/disk0")
    with pytest.raises(ValueError, match="PSK identity"):
        write_psk(tmp_path / "other", "user:1", key)  # ':' ends the identity in keys.psk
