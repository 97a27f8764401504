"""Coverage: on how many of the field's models do rfprobe's passes run? (issue 22)

One model per timm family (its smallest variant under 100M parameters among the family's 12 shortest names,
counted on the meta device without allocating; pretrained=False; the smallest input its config accepts) and every torchvision classification
model (ImageNet input, 3x224x224), each with 10 classes, measured by `affine`, `dead`, `sparsity` (2 synthetic
images) and `signal` (a Gaussian batch of 2). Per model and pass the outcome is `ran`, `refused` (a one-line
RfprobeError: the model lacks what the pass measures, or cannot be traced) or `failed` (anything else: a bug
to fix). Writes bench/results/coverage.json and the table docs/coverage.md; prints the summary.

    python bench/bench_coverage.py [--limit N] [--only timm|torchvision] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
import signal as _signal
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rfprobe.data import Data  # noqa: E402
from rfprobe.errors import RfprobeError  # noqa: E402
from rfprobe.models import build_model  # noqa: E402
from rfprobe.normalization import Normalization  # noqa: E402
from rfprobe.passes import affine, dead, signal, sparsity  # noqa: E402

PASSES = ("affine", "dead", "sparsity", "signal")
MAX_PARAMS = 100_000_000


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


def smallest_timm_variants(limit: int | None = None) -> list[tuple[str, str, int]]:
    """(family, model name, parameters) per timm family: the variant with the fewest parameters under
    MAX_PARAMS among its 12 shortest names (the base variants; longer names add heads, resolutions and
    training tags), counted by building each candidate on the meta device."""
    import timm

    out = []
    for module in sorted(timm.list_modules()):
        names = timm.list_models(module=module)
        best = None
        for name in sorted(names, key=lambda n: (len(n), n))[:12]:  # the short names are the base variants
            try:
                with torch.device("meta"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = timm.create_model(name, pretrained=False, num_classes=10)
                n = sum(p.numel() for p in model.parameters())
            except Exception:  # a variant that needs arguments or real tensors at construction
                continue
            if n < MAX_PARAMS and (best is None or n < best[2]):
                best = (module, name, n)
        if best is not None:
            out.append(best)
            print(f"  timm family {module}: {best[1]} ({best[2] / 1e6:.1f}M)", flush=True)
        if limit and len(out) >= limit:
            break
    return out


def torchvision_models(limit: int | None = None) -> list[tuple[str, str, int]]:
    import torchvision

    names = sorted(torchvision.models.list_models(module=torchvision.models))
    return [("torchvision", name, -1) for name in names[:limit]]


def timm_input(name: str) -> tuple[int, ...]:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else (cfg or {})
    size = cfg.get("min_input_size") or cfg.get("input_size") or (3, 224, 224)
    return tuple(int(d) for d in size)


def synthetic(shape: tuple[int, ...], n: int = 2) -> Data:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    norm = Normalization("imagenet", (0.485, 0.456, 0.406)[:shape[0]] if shape[0] == 3 else (0.5,) * shape[0],
                         (0.229, 0.224, 0.225)[:shape[0]] if shape[0] == 3 else (0.25,) * shape[0])
    return Data("synthetic", "test", x, torch.arange(n) % 10, tuple(str(i) for i in range(10)), norm, "bench")


def measure(arch: str, shape: tuple[int, ...] | None, timeout: int) -> dict:
    row = {"arch": arch}
    _signal.signal(_signal.SIGALRM, _alarm)
    _signal.alarm(timeout)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(arch, 10, seed=0, input_shape=shape).eval()
        row["parameters"] = sum(p.numel() for p in model.parameters())
        shape = tuple(model.rfprobe_input_shape)
        row["input"] = "x".join(map(str, shape))
        for name in PASSES:
            try:
                if name == "affine":
                    ds = affine.run(model)
                    row["norm_kinds"] = sorted(set(map(str, ds["kind"].values)))
                elif name == "dead":
                    dead.run(model)
                elif name == "sparsity":
                    ds = sparsity.run(model, synthetic(shape), batch_size=2)
                    row["activation_kinds"] = sorted(set(map(str, ds["kind"].values)))
                else:
                    signal.run(model, signal.gaussian_input(shape, 2, 0), batch_stats=False)
                row[name] = "ran"
            except RfprobeError as e:
                row[name] = "refused"
                row[f"{name}_reason"] = str(e).splitlines()[0][:200]
            except Timeout:
                raise
            except Exception as e:  # noqa: BLE001  what the benchmark counts as a failure to fix
                row[name] = "failed"
                row[f"{name}_reason"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    except Timeout:
        row.update({p: row.get(p, "failed") for p in PASSES}, timeout=f"over {timeout} s")
    except RfprobeError as e:
        row.update({p: "refused" for p in PASSES}, build_reason=str(e).splitlines()[0][:200])
    except Exception as e:  # noqa: BLE001
        row.update({p: "failed" for p in PASSES}, build_reason=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    finally:
        _signal.alarm(0)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["# Model coverage (bench/bench_coverage.py)", "",
             "Generated by `python bench/bench_coverage.py`: one model per timm family (smallest variant under 100M "
             "parameters among its 12 shortest names, pretrained=False) and every torchvision classification model, 10 classes, 2 synthetic "
             "images. `ran`, `refused` (one line, the reason below) or `failed` per pass.", ""]
    for source in ("timm", "torchvision"):
        chosen = [r for r in rows if r["source"] == source]
        if not chosen:
            continue
        lines += [f"## {source}: {len(chosen)} models", "", "| " + " | ".join(("summary",) + PASSES) + " |",
                  "|---" * (len(PASSES) + 1) + "|"]
        for outcome in ("ran", "refused", "failed"):
            lines.append(f"| {outcome} | " + " | ".join(str(sum(r[p] == outcome for r in chosen)) for p in PASSES) + " |")
        lines += ["", "| family | model | input | params (M) | norm kinds | activations | " + " | ".join(PASSES) + " |",
                  "|---" * (6 + len(PASSES)) + "|"]
        for r in chosen:
            lines.append(f"| {r['family']} | {r['arch']} | {r.get('input', '?')} | "
                         f"{r.get('parameters', 0) / 1e6:.1f} | {', '.join(r.get('norm_kinds', [])) or '-'} | "
                         f"{', '.join(r.get('activation_kinds', [])) or '-'} | " + " | ".join(r[p] for p in PASSES) + " |")
        reasons = Counter((p, r.get(f"{p}_reason") or r.get("build_reason") or r.get("timeout", ""))
                          for r in chosen for p in PASSES if r[p] != "ran")
        if reasons:
            lines += ["", "Reasons (pass: reason, models):", ""]
            lines += [f"- {p}: {reason.replace('|', '/')} ({n})" for (p, reason), n in reasons.most_common()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="at most N models per source")
    parser.add_argument("--only", choices=("timm", "torchvision"), default=None)
    parser.add_argument("--timeout", type=int, default=120, help="seconds per model")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "coverage.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "coverage.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = []
    if args.only in (None, "timm"):
        models += [("timm", family, f"timm:{name}", timm_input(name)) for family, name, _ in
                   smallest_timm_variants(args.limit)]
    if args.only in (None, "torchvision"):
        models += [("torchvision", name, f"torchvision:{name}", None) for _, name, _ in torchvision_models(args.limit)]
    rows = []
    for i, (source, family, arch, shape) in enumerate(models):
        row = {"source": source, "family": family, **measure(arch, shape, args.timeout)}
        rows.append(row)
        print(f"[{i + 1}/{len(models)}] {arch}: " + ", ".join(f"{p} {row[p]}" for p in PASSES) + f" ({row['seconds']} s)",
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    args.markdown.write_text(markdown(rows))
    for source in ("timm", "torchvision"):
        chosen = [r for r in rows if r["source"] == source]
        if chosen:
            print(f"{source}: {len(chosen)} models; " + "; ".join(
                f"{p} ran {sum(r[p] == 'ran' for r in chosen)}, refused {sum(r[p] == 'refused' for r in chosen)}, "
                f"failed {sum(r[p] == 'failed' for r in chosen)}" for p in PASSES))


if __name__ == "__main__":
    main()
