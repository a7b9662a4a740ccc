"""Settings: defaults, then one TOML file, then environment variables, then explicit values.

Each appliance (hub, node) declares a `SendenseSettings` subclass with its own
TOML section and environment prefix; `load_settings` resolves them in that order.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from sendense.common.errors import InvalidInput

_config_file: ContextVar[Path | None] = ContextVar("sendense_config_file", default=None)


def default_data_dir(role: str) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/sendense") / role
    return Path.home() / ".local" / "share" / "sendense" / role


def read_toml_section(path: Path, section: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise InvalidInput(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"config file {path} is not valid TOML: {exc}") from exc
    values = document.get(section, {})
    if not isinstance(values, dict):
        raise InvalidInput(f"config file {path}: [{section}] must be a table")
    return values


class _TomlSection(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], section: str) -> None:
        super().__init__(settings_cls)
        self._section = section

    def get_field_value(
        self,
        field: Any,  # noqa: ARG002
        field_name: str,
    ) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _config_file.get()
        return read_toml_section(path, self._section) if path else {}


class SendenseSettings(BaseSettings):
    toml_section: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSection(settings_cls, cls.toml_section))


S = TypeVar("S", bound=SendenseSettings)


def load_settings(cls: type[S], config_file: Path | None = None, **explicit: Any) -> S:
    """Build settings; `explicit` values (CLI flags) that are None are left to the lower layers."""
    token = _config_file.set(config_file)
    try:
        return cls(**{k: v for k, v in explicit.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidInput(f"invalid settings: {problems}") from exc
    finally:
        _config_file.reset(token)
