"""Paths inside one guest filesystem, resolved by the hub so that no name leaves
it: `..` in a path is refused, symbolic links are followed one component at a
time as the guest would see them were this filesystem its root (an absolute
target starts again at the filesystem's root; a relative one that climbs above
it is refused). What the appliance is then asked for is a path with no link in
it, so it never reads outside the filesystem (its own files included)."""

from __future__ import annotations

from collections.abc import Callable

from sendense.common.errors import InvalidInput, NotFound

MAX_LINKS = 40  # as Linux's path walk
MAX_PATH = 4096


class PathEscapes(InvalidInput):
    code = "path_escapes"


def parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def clean(path: str) -> str:
    """`path` as an absolute, normalised path; `..`, NUL and overlong refused."""
    if "\0" in path or len(path) > MAX_PATH:
        raise InvalidInput("a path holds no NUL byte and at most 4096 characters")
    names = parts(path)
    if ".." in names:
        raise PathEscapes(
            f"{path!r}: '..' is not allowed; give the path from the filesystem's root"
        )
    return "/" + "/".join(names)


def resolve(
    path: str,
    is_link: Callable[[str], bool | None],
    readlink: Callable[[str], str],
    *,
    follow_last: bool = True,
) -> str:
    """The path with every symbolic link in it followed (the last one too unless
    `follow_last` is false). `is_link(p)`: True, False, or None when p does not
    exist (NotFound)."""
    todo = parts(clean(path))
    done: list[str] = []
    links = 0
    while todo:
        name = todo.pop(0)
        if name == "..":  # only from a link's target
            if not done:
                raise PathEscapes(f"{path!r} leads outside its filesystem through a symbolic link")
            done.pop()
            continue
        candidate = "/" + "/".join([*done, name])
        if not todo and not follow_last:
            if is_link(candidate) is None:
                raise NotFound(f"{path} does not exist")
            done.append(name)
            break
        kind = is_link(candidate)
        if kind is None:
            raise NotFound(f"{path} does not exist")
        if not kind:
            done.append(name)
            continue
        links += 1
        if links > MAX_LINKS:
            raise InvalidInput(f"{path}: too many levels of symbolic links")
        target = readlink(candidate)
        if target.startswith("/"):
            done = []
        todo = [p for p in target.split("/") if p not in ("", ".")] + todo
    return "/" + "/".join(done)


def inside(mount: str, path: str) -> str:
    """The appliance's path of a filesystem path (`path` clean, from `clean`)."""
    return mount if path == "/" else mount + path
