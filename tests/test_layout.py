"""The folder tree is the architecture: these tests keep it so.

Who may import whom is what each package's docstring says (and `sendense.hub`'s
lists); a new import across the rules fails here, not in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sendense"
HUB_TOP = {"__init__.py", "service.py", "config.py"}
# Hub package -> the hub packages it may import (sendense.common always).
HUB_RULES: dict[str, set[str]] = {
    "db": set(),
    "auth": {"db"},
    "repository": {"db", "nbd"},
    "nodes": {"db", "auth", "nbd"},
    "tasks": {"db", "nbd", "repository"},
    "verify": {"db", "repository", "tasks", "nbd"},
    "restore": {"db", "repository", "nodes", "tasks", "nbd"},
    "retention": {"db", "repository", "restore", "verify", "tasks", "nbd"},
    "backup": {"db", "repository", "nodes", "retention", "tasks"},
    "files": {"db", "repository", "restore", "tasks"},
    "copy": {"db", "auth", "repository", "retention", "tasks", "nbd"},
    "notify": {"db", "auth", "nodes", "repository", "retention"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.startswith("sendense")}


def area(module: str) -> str:
    """sendense.hub.backup.runner -> hub.backup; sendense.nbd.client -> nbd."""
    parts = module.split(".")[1:]
    if parts[:1] == ["hub"] and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0] if parts else ""


SOURCES = sorted(SRC.rglob("*.py"))
IMPORTS = {module_name(p): imports_of(p) for p in SOURCES}


def test_the_hub_top_level_holds_only_service_config_and_packages() -> None:
    hub = SRC / "hub"
    loose = {p.name for p in hub.iterdir() if p.suffix == ".py"} - HUB_TOP
    assert loose == set()
    packages = {p.name for p in hub.iterdir() if (p / "__init__.py").exists()}
    assert packages == {*HUB_RULES, "api", "console"}


@pytest.mark.parametrize("package", sorted({*HUB_RULES, "api", "console"}))
def test_each_hub_package_says_what_it_owns_and_may_import(package: str) -> None:
    init = SRC / "hub" / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert len(doc.split()) >= 20
    assert "may import" in doc.lower()


def test_hub_packages_import_only_what_their_rules_allow() -> None:
    wrong = []
    for module, imported in IMPORTS.items():
        source = area(module)
        if not source.startswith("hub.") or source in (
            "hub.api",
            "hub.console",
            "hub.service",
            "hub.config",
        ):
            continue
        allowed = {f"hub.{p}" if p != "nbd" else "nbd" for p in HUB_RULES[source[4:]]}
        for name in imported:
            target = area(name)
            if target not in {source, "common", *allowed}:
                wrong.append(f"{module} imports {name}")
    assert wrong == []


def test_hub_node_nbd_and_common_keep_apart() -> None:
    wrong = []
    for module, imported in IMPORTS.items():
        source = area(module)
        for name in imported:
            target = area(name)
            if source.startswith("hub") and target == "node":
                wrong.append(f"{module} imports {name}")
            if source == "node" and target.startswith("hub"):
                wrong.append(f"{module} imports {name}")
            if source == "nbd" and target not in ("nbd", "common"):
                wrong.append(f"{module} imports {name}")
            if source == "common" and target != "common":
                wrong.append(f"{module} imports {name}")
    assert wrong == []


def test_services_import_no_api_or_cli() -> None:
    wrong = []
    for module, imported in IMPORTS.items():
        if ".api" in module or ".console" in module or module.startswith("sendense.cli"):
            continue
        if module == "sendense.__main__":
            continue
        for name in imported:
            if name.startswith(("sendense.cli", "sendense.hub.api", "sendense.node.api")):
                wrong.append(f"{module} imports {name}")
    assert wrong == []


def test_one_place_starts_processes_and_builds_qemu_img_arguments() -> None:
    popen = [p for p in SOURCES if "subprocess.Popen(" in p.read_text()]
    assert popen == [SRC / "common" / "processes.py"]
    # An argument list of a qemu-img sub-command (a verb and an option) is built
    # only in its wrapper.
    verbs = {"convert", "rebase", "map", "check", "create", "info", "compare", "measure"}
    built = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.List | ast.Tuple):
                words = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                if any(w in verbs for w in words) and any(
                    isinstance(w, str) and w.startswith("-") for w in words
                ):
                    built.append(path.relative_to(SRC).as_posix())
    assert set(built) == {"nbd/qemu_img.py"}
