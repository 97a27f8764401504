"""`python -m train ARCH --mode MODE --dataset cifar10 --out runs/NAME`: the command line of the trainer.

Every option is a field of `train.config.Config` (name, type, default and help declared there once);
`--config FILE.toml` sets the same fields from a file, and options given on the command line win over it.
Defaults are the paper's recipe. Bad input prints one line on stderr and exits with 2; `--debug` shows
tracebacks. Under `torchrun --nproc_per_node N` it trains data-parallel.
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Optional

import typer

from rfprobe.entrypoint import run_app
from rfprobe.normalization import parse_values
from train.config import Config, field_types, read_toml

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parameter(f) -> inspect.Parameter:
    """The typer parameter of one Config field (see `train.config.option` for the `cli` spellings)."""
    kind, cli, help = field_types()[f.name], f.metadata["cli"], f.metadata["help"]
    default = f.default if f.default is not MISSING else None
    if f.name == "arch":
        annotation = Annotated[Optional[str], typer.Argument(help=help, show_default=False)]
    elif cli == "flag":
        annotation = Annotated[bool, typer.Option(f"{_flag(f.name)}/--no-{f.name.replace('_', '-')}", help=help)]
    elif cli in ("comma", "kwargs"):
        annotation = Annotated[Optional[str], typer.Option(_flag(f.name), help=help)]
        default = None
    elif cli == "repeat":
        annotation = Annotated[Optional[list[str]], typer.Option(_flag(f.name), help=help)]
        default = None
    else:
        annotation = Annotated[Optional[kind] if default is None else kind, typer.Option(_flag(f.name), help=help)]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _from_command_line(name: str, value):
    """A command-line value as the field holds it (comma-separated numbers and repeated options -> tuples)."""
    f = next(f for f in fields(Config) if f.name == name)
    if f.metadata["cli"] == "comma" and value is not None:
        return tuple(f.metadata["parse"](v) for v in parse_values(value, _flag(name)))
    if f.metadata["cli"] == "repeat" and value is not None:
        return tuple(value)
    if f.metadata["cli"] == "kwargs" and value is not None:
        from rfprobe.models.external import parse_arch_kwargs

        return parse_arch_kwargs(value)
    return value


def command(ctx: typer.Context, config: Optional[Path] = None, **options) -> None:
    """Train ARCH in a trainable mode and write init.pt, epoch_XXX.pt, final.pt, metrics.jsonl and config.toml."""
    from train.run import train

    settings = read_toml(config) if config is not None else {}
    for name, value in options.items():
        if name not in settings or ctx.get_parameter_source(name).name != "DEFAULT":
            settings[name] = _from_command_line(name, value)
    train(Config(**{k: v for k, v in settings.items() if v is not None}))


command.__signature__ = inspect.Signature(
    [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
     inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
         Optional[Path], typer.Option("--config", help="TOML file of settings (the option names with _ for -); "
                                                      "options on the command line override it")])]
    + [_parameter(f) for f in fields(Config)])
app.command(no_args_is_help=True)(command)


def main(argv: list[str] | None = None) -> None:
    """Run the command; bad input -> one stderr line, exit 2; other failures -> one line, exit 1."""
    run_app(app, "python -m train", argv, interrupted="interrupted (continue with --resume)")


if __name__ == "__main__":
    main()
