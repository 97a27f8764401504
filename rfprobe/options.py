"""Options declared once, as plain data: each pass module lists its own (`OPTIONS`, on its `Pass`),
`rfprobe.studyconfig` the shared ones; `rfprobe.cli` turns them into typer parameters (`rfprobe compare`
prefixes a pass's with its name) and `--config FILE.toml` reads the same names, type-checked here
(`check_type`). No typer here, so the passes and studies stay importable without it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Option:
    """One option: its Python name (a keyword of the pass), default, help, annotation (default: the default's
    type; `Optional[...]` for a None default must be given) and command-line spellings (default `--name-with-dashes`;
    a boolean default False is a flag, True a `--x/--no-x` pair)."""

    name: str
    default: Any
    help: str
    type: Any = None
    flags: tuple[str, ...] = field(default=())
    decides_result: bool = True
    """False for how the work is done (worker processes), not what it computes: left out of a study's fingerprint"""

    @property
    def annotation(self):
        return self.type if self.type is not None else type(self.default)

    def spellings(self, prefix: str = "") -> tuple[str, ...]:
        """The flags; with a prefix only the first, with `prefix-` after its dashes (`--bins` -> `--affine-bins`;
        aliases such as signal's `--batch-size` for `--batch` are not repeated under a prefix)."""
        flags = self.flags or (flag(self.name) + (f"/--no-{self.name.replace('_', '-')}" if self.default is True else ""),)
        if not prefix:
            return flags
        return ("/".join(f"--{prefix}-{part[2:]}" for part in flags[0].split("/")),)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def changed(options: tuple[Option, ...], **changes: dict) -> tuple[Option, ...]:
    """`options` with some fields of some changed, e.g. `changed(DATA, limit={"default": 256})`."""
    from dataclasses import replace

    unknown = set(changes) - {o.name for o in options}
    if unknown:
        raise KeyError(f"no such options: {', '.join(sorted(unknown))}")
    return tuple(replace(o, **changes[o.name]) if o.name in changes else o for o in options)


def defaults(options: tuple[Option, ...]) -> dict[str, Any]:
    return {o.name: o.default for o in options}


def _accepts(annotation, value) -> bool:
    """Whether a TOML value fits an option's annotation (int, float, bool, str, Path, list[X], Optional[X])."""
    import typing
    from pathlib import Path

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return any(_accepts(a, value) for a in args if a is not type(None))
    if origin is list:
        return isinstance(value, list) and all(_accepts(args[0], v) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in (str, Path):
        return isinstance(value, str)
    return True


def type_name(annotation) -> str:
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return " or ".join(type_name(a) for a in args if a is not type(None))
    if origin is list:
        return "a list of " + {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(args[0], "values")
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, "a path" if getattr(annotation, "__name__", "") in ("Path", "PosixPath") else str(annotation))


def check_type(option: Option, value: Any, where: str) -> None:
    """Refuse (one line, rfprobe.errors.RfprobeError) a config value of the wrong type for `option`."""
    from rfprobe.errors import RfprobeError

    if not _accepts(option.annotation, value):
        raise RfprobeError(f"{where}: {option.name} must be {type_name(option.annotation)}, got {value!r}")
