from __future__ import annotations

from pathlib import Path

import pytest

from sendense.common.config import load_settings
from sendense.common.errors import InvalidInput
from sendense.hub.config import HubSettings


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(HubSettings, data_dir=tmp_path)
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 8082)
    assert (settings.nbd_port_min, settings.nbd_port_max) == (10100, 10200)
    assert settings.database_url == f"sqlite:///{tmp_path / 'hub.db'}"


def test_file_then_environment_then_explicit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[hub]\ndata_dir = "{tmp_path}/fromfile"\nlisten_port = 9000\nnbd_port_min = 11000\n'
        "nbd_port_max = 11010\n"
    )
    settings = load_settings(HubSettings, config)
    assert settings.listen_port == 9000
    assert settings.data_dir == tmp_path / "fromfile"
    monkeypatch.setenv("SENDENSE_HUB_LISTEN_PORT", "9100")
    assert load_settings(HubSettings, config).listen_port == 9100
    assert load_settings(HubSettings, config, listen_port=9200).listen_port == 9200
    assert load_settings(HubSettings, config, listen_port=None).listen_port == 9100


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("[hub]\nlisten_port = 70000\n", "listen_port"),
        ("[hub]\nnbd_port_min = 10300\n", "nbd_port_min"),
        ("[hub]\nno_such_setting = 1\n", "no_such_setting"),
        ("[hub\n", "TOML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, content: str, named: str) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(content)
    with pytest.raises(InvalidInput, match=named) as refused:
        load_settings(HubSettings, config)
    assert (refused.value.code, refused.value.exit_code) == ("invalid_input", 2)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"nope\.toml"):
        load_settings(HubSettings, tmp_path / "nope.toml")
