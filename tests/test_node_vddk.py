"""The VDDK reader: runs only where VMware's VDDK and nbdkit's vddk plugin exist."""

from __future__ import annotations

import os

import pytest

from sendense.node.vmware.readers_vddk import vddk_available


def test_vddk_reader_needs_vddk() -> None:
    reason = vddk_available(os.environ.get("SENDENSE_NODE_VDDK_LIBDIR"))
    if reason is not None:
        pytest.skip(f"VDDK reader not testable here: {reason}")
    pytest.fail("VDDK is installed: write the real read test against an ESXi host")
