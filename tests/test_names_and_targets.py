from __future__ import annotations

import re

import pytest

from sendense.common.errors import InvalidInput
from sendense.common.names import export_name, safe_label, validate_vm_name
from sendense.common.targets import NbdTarget, format_targets, parse_targets

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@pytest.mark.parametrize("name", ["../../etc", "my vm", "vm/ü", "..", "ü", "-x", "a..b", " "])
def test_export_names_are_safe(name: str) -> None:
    label = export_name(name, 0)
    assert SAFE.match(label), label
    assert "/" not in label
    assert ".." not in label
    assert label.endswith("-disk0")


def test_plain_names_stay_as_they_are_and_changed_ones_stay_apart() -> None:
    assert export_name("pgtest1", 1) == "pgtest1-disk1"
    assert safe_label("my vm") != safe_label("my-vm")
    assert safe_label("my vm").startswith("my-vm-")


@pytest.mark.parametrize("name", ["../../etc", "a/b", "a\\b", "..", ".", "", "x\x00y", "a" * 256])
def test_path_like_vm_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate_vm_name(name)


def test_vm_names_vsphere_returns_are_accepted() -> None:
    for name in ("pgtest1", "my vm", "vm%2fü", "SQL (prod) #1"):
        assert validate_vm_name(name) == name


def test_targets_string_round_trip() -> None:
    text = "2000:nbd://127.0.0.1:10100/pgtest1-disk0,2001:nbd://127.0.0.1:10101/pgtest1-disk1"
    targets = parse_targets(text)
    assert targets == [
        NbdTarget(2000, "127.0.0.1", 10100, "pgtest1-disk0"),
        NbdTarget(2001, "127.0.0.1", 10101, "pgtest1-disk1"),
    ]
    assert format_targets(targets) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2000:nbd://127.0.0.1/x",
        "2000:http://127.0.0.1:1/x",
        "abc:nbd://127.0.0.1:10100/x",
        "2000:nbd://127.0.0.1:99999/x",
        "2000:nbd://127.0.0.1:10100/../x/y",
        "2000:nbd://127.0.0.1:10100/a,2000:nbd://127.0.0.1:10101/b",
    ],
)
def test_malformed_targets_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_targets(text)
