"""Names that reach the outside world: VM names as given, export names derived from them.

A VM name never becomes a path: files live under the VM's database id. It does
become part of an NBD export name, so that is reduced to a safe alphabet.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from sendense.common.errors import InvalidInput

MAX_VM_NAME = 255
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def validate_vm_name(name: str) -> str:
    """vSphere escapes '/', '\\' and '%' in the names it returns (as %2f, %5c, %25),
    so a raw separator in a VM name is never a real VM: refuse it."""
    if not name or not name.strip():
        raise InvalidInput("VM name is empty")
    if len(name) > MAX_VM_NAME:
        raise InvalidInput(f"VM name is longer than {MAX_VM_NAME} characters")
    if "/" in name or "\\" in name:
        raise InvalidInput(f"VM name {name!r} contains a path separator")
    if name.strip() in {".", ".."}:
        raise InvalidInput(f"VM name {name!r} is not a name")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InvalidInput("VM name contains control characters")
    return name


def safe_label(name: str, limit: int = 48) -> str:
    """ASCII letters, digits, '.', '_' and '-', no leading dot or dash, never empty.

    When the name had to change, a short hash of the original keeps two
    different VMs (`my vm`, `my/vm`) apart.
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    label = _UNSAFE.sub("-", ascii_name).strip(".-_")
    label = re.sub(r"\.{2,}", ".", label)[:limit].strip(".-_")
    if label != name:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        label = f"{label}-{digest}" if label else f"vm-{digest}"
    return label


def export_name(vm_name: str, index: int) -> str:
    """`pgtest1` disk 0 -> `pgtest1-disk0`, as in the seed's targets string."""
    return f"{safe_label(vm_name)}-disk{index}"
