"""Models from outside rfprobe, named on the command line (`--arch`) or in a config:

- `torchvision:<name>`: `torchvision.models.get_model(name, weights=None, num_classes=..., **kwargs)`;
- `timm:<name>`: `timm.create_model(name, pretrained=False, num_classes=..., **kwargs)` (the `rfprobe[timm]` extra);
- `package.module:factory` or `path/to/file.py:factory`: a function of the user's own code, called with the
  keyword arguments (and `num_classes=` when it takes it); imported only because the user named it. A name
  recorded inside a checkpoint is never imported (rfprobe.checkpoint refuses it unless `--arch` repeats it).

Keyword arguments come from `--arch-kwargs key=value,...` (`parse_arch_kwargs`) or a TOML table. The input
shape is, in order: `--input-shape`, what the model says (timm's `pretrained_cfg["input_size"]`, an
`img_size` keyword, an `rfprobe_input_shape` attribute the factory set), else ImageNet's 3x224x224 for
torchvision; a user model that says nothing needs `--input-shape`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path

from rfprobe.errors import RfprobeError
from rfprobe.models import register

USER_CODE = r"(?!torchvision:|timm:)((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*|[^:\s]+\.py):([A-Za-z_]\w*)"
"""`package.module:factory` or `path/to/file.py:factory` (never a torchvision: or timm: name)"""


def is_user_code(name: str) -> bool:
    """Whether `name` names a factory in the user's own code (importing it runs that code)."""
    return re.fullmatch(USER_CODE, name) is not None


def _split_top_level(text: str) -> list[str]:
    """`text` split at the commas that are outside brackets and quotes (so `size=(32, 32)` stays whole)."""
    parts, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_arch_kwargs(text: str | dict | None) -> dict:
    """`--arch-kwargs img_size=32,patch_size=4,global_pool=avg` as a dict: each value read as a Python literal
    (int, float, bool, None, a quoted string, a tuple or list), else kept as the bare string. A dict (a TOML
    table) is returned as it is after its keys are checked."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        pairs = list(text.items())
    else:
        pairs = []
        for part in _split_top_level(text):
            key, sep, value = part.partition("=")
            if not sep:
                raise RfprobeError(f"--arch-kwargs: {part!r} is not key=value (e.g. --arch-kwargs img_size=32,patch_size=4)")
            try:
                parsed = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                parsed = value.strip()
            pairs.append((key.strip(), parsed))
    bad = [k for k, _ in pairs if not (isinstance(k, str) and k.isidentifier())]
    if bad:
        raise RfprobeError(f"--arch-kwargs: {bad[0]!r} is not a keyword name")
    return dict(pairs)


def parse_input_shape(text: str | list | tuple | None) -> tuple[int, ...] | None:
    """`--input-shape 3,32,32` (one example's shape, no batch dimension) as a tuple of positive ints."""
    if text is None or text == "":
        return None
    parts = text if isinstance(text, (list, tuple)) else str(text).replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise RfprobeError(f"--input-shape {text!r}: give one example's shape as integers, e.g. 3,32,32") from None
    if not shape or any(d < 1 for d in shape):
        raise RfprobeError(f"--input-shape {text!r}: every dimension must be at least 1")
    return shape


def _square(size, channels: int) -> tuple[int, ...]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return channels, int(h), int(w)


def _said_shape(model, kwargs: dict) -> tuple[int, ...] | None:
    """The input shape a model or its keyword arguments state: img_size / image_size keywords first (they
    override a config's default), then timm's pretrained_cfg."""
    channels = int(kwargs.get("in_chans", kwargs.get("in_channels", 3)))
    for key in ("img_size", "image_size"):
        if key in kwargs:
            return _square(kwargs[key], channels)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if size:
        return (channels, *tuple(int(d) for d in size)[1:])
    return None


@register(r"torchvision:(\w+)", "torchvision:<name>",
          "any torchvision classification model with its own init, e.g. torchvision:resnet18 (kwargs: its constructor's)",
          input_shape=lambda m, options: _square(options.get("image_size", 224), 3), options=None,
          names=("torchvision:resnet18",))
def _torchvision(m, num_classes, **kwargs):
    import torchvision

    try:
        return torchvision.models.get_model(m.group(1), weights=None, num_classes=num_classes, **kwargs)
    except ValueError as e:
        if "Unknown model" in str(e) or m.group(1) not in torchvision.models.list_models():
            raise ValueError(f"torchvision has no model {m.group(1)!r}; see torchvision.models.list_models()") from None
        raise


def _timm():
    try:
        import timm
    except ImportError:
        raise RfprobeError("timm models need the timm package: pip install 'rfprobe[timm]'") from None
    return timm


@register(r"timm:([\w.]+)", "timm:<name>",
          "any timm model, pretrained=False, e.g. timm:resnet18, timm:vit_tiny_patch16_224 (extra rfprobe[timm]; "
          "kwargs: timm.create_model's)", input_shape=lambda m, options: None, options=None,
          names=("timm:resnet18",))
def _timm_model(m, num_classes, **kwargs):
    timm = _timm()
    try:
        model = timm.create_model(m.group(1), pretrained=False, num_classes=num_classes, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f"timm has no model {m.group(1)!r}; see timm.list_models()") from None
        raise ValueError(str(e)) from None
    model.rfprobe_input_shape = _said_shape(model, kwargs)
    return model


def _import(module: str):
    """The user's module `module` (dotted, importable from the current directory too) or file `*.py`."""
    if module.endswith(".py") or os.sep in module or "/" in module:
        path = Path(module).expanduser()
        if not path.is_file():
            raise RfprobeError(f"--arch {module}: no such file")
        name = f"rfprobe_user_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        spec.loader.exec_module(loaded)
        return loaded
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise RfprobeError(f"--arch {module}: cannot import module {e.name!r} (run from the folder that holds it, or "
                           "put it on PYTHONPATH)") from None
    finally:
        if added:
            sys.path.remove(cwd)


@register(USER_CODE, "package.module:factory",
          "your own model: a function in your code (or path/to/file.py:factory) returning an nn.Module; called with "
          "--arch-kwargs and num_classes= when it takes it", input_shape=lambda m, options: None, options=None,
          names=("rfprobe.models.examples:norm_zoo_net",))
def _user_factory(m, num_classes, **kwargs):
    module = _import(m.group(1))
    factory = getattr(module, m.group(2), None)
    if not callable(factory):
        raise RfprobeError(f"--arch {m.group(0)}: {m.group(1)} has no function {m.group(2)!r}")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes = "num_classes" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    model = factory(**kwargs, **({"num_classes": num_classes} if takes and "num_classes" not in kwargs else {}))
    if hasattr(model, "rfprobe_input_shape") or model is None:
        return model
    try:
        model.rfprobe_input_shape = _said_shape(model, kwargs)
    except AttributeError:
        pass
    return model
