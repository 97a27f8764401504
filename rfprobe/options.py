"""Options declared once, as plain data: each pass module lists its own (`OPTIONS`), the CLI lists the shared
ones; `rfprobe.cli` turns them into typer parameters (`rfprobe compare` prefixes a pass's with its name) and
`--config FILE.toml` reads the same names. No typer here, so the passes stay importable without it."""

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
