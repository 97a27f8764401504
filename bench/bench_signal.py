"""Signal pass vs a bare forward pass of the same model and batch, side by side.

    python bench/bench_signal.py [--archs cifar_preact_resnet_110,nf_resnet_110] [--batch 64] [--repeats 5]
        [--threads N] [--device auto]

For each architecture, alternating `--repeats` times on the same batch: `forward` = `model(x)` under
`inference_mode` (BN with batch statistics, as the pass uses at init); `interpreter` = the same graph run
by a bare `torch.fx.Interpreter` (the pass's way of reaching every addition); `measure` = the whole pass
without tracing (`signal.measure` with the sites found once: interpreter + float64 channel statistics at
every site); `measure+trace` = the pass as the CLI runs it (fx tracing and shape propagation included).
Reported: the medians' ratios to `forward`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.fx as fx

from rfprobe.data import resolve_device
from rfprobe.models import build_model
from rfprobe.passes import signal
from rfprobe.graph import find_sites


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(arch: str, batch: int, repeats: int, device) -> dict[str, float]:
    model = build_model(arch, seed=0, bn_init="fixed").to(device)
    x = signal.gaussian_input(model.rfprobe_input_shape, batch, 0).to(device)
    sites = find_sites(model)

    def forward():
        with signal.signal_mode(model, True), torch.inference_mode():
            model(x)

    def interpreter():
        with signal.signal_mode(model, True), torch.inference_mode():
            fx.Interpreter(sites.graph).run(x)

    runs = {"forward": forward, "interpreter": interpreter,
            "measure": lambda: signal.measure(model, x, batch_stats=True, sites=sites),
            "measure+trace": lambda: signal.measure(model, x, batch_stats=True)}
    for fn in runs.values():
        fn()  # warm-up
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="cifar_preact_resnet_110,nf_resnet_110")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch}, median of {args.repeats}")
    for arch in args.archs.split(","):
        medians = bench(arch, args.batch, args.repeats, device)
        base = medians["forward"]
        print(f"{arch}: forward {base * 1e3:.0f} ms; " + ", ".join(
            f"{name} x{t / base:.2f}" for name, t in medians.items() if name != "forward"))


if __name__ == "__main__":
    main()
