"""A pass is one object in one registry: a toy pass added to rfprobe.passes.REGISTRY (in a fixture, no other
edit) is a command of its own, runs in `compare`, shows in the report and is drawn by `rfprobe plot`."""

import importlib
import json

import numpy as np
import pytest
import xarray as xr

from rfprobe.checkpoint import save_checkpoint
from rfprobe.models import build_model
from rfprobe.options import Option
from rfprobe.passes import REGISTRY
from rfprobe.passes.base import Pass
from rfprobe.report_tables import checkpoint_table
from rfprobe.results import provenance

pytestmark = pytest.mark.usefixtures("one_thread")


def count_bn(checkpoint, data, options, **_):
    """The number of BN layers whose mean |gamma| exceeds `min_gamma`: a toy measurement."""
    import torch

    layers = [m for m in checkpoint.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    above = sum(float(m.weight.detach().abs().mean()) > options["min_gamma"] for m in layers)
    return xr.Dataset({"n_bn": ((), len(layers)), "n_above": ((), above)},
                      attrs=provenance("toy", checkpoint, command=options.get("command")))


def toy_headline(ds):
    return {str(label): {"bn_layers": int(ds["n_bn"].sel(checkpoint=label)),
                         "above": int(ds["n_above"].sel(checkpoint=label))} for label in ds["checkpoint"].values}


def toy_figure(ds):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar([str(v) for v in ds["checkpoint"].values], ds["n_bn"].values)
    return fig


def toy_validate(options, n_points=None):
    from rfprobe.errors import RfprobeError

    if options["min_gamma"] < 0:
        raise RfprobeError("--min-gamma must be >= 0")
    return dict(options)


TOY = Pass(name="toy", summary="Count BN layers (a toy pass of the registry test).",
           options=(Option("min_gamma", 0.5, "count layers whose mean |gamma| exceeds this"),), data=None,
           run=count_bn, validate=toy_validate, headline=toy_headline,
           tables=lambda ds: [checkpoint_table("toy", toy_headline(ds), [("BN layers", lambda s: str(s["bn_layers"]))])],
           figure=toy_figure, key_numbers=lambda row: {"BN layers": (row["bn_layers"], "num")})


@pytest.fixture
def with_toy():
    import rfprobe.cli
    import rfprobe.studyconfig

    REGISTRY["toy"] = TOY
    importlib.reload(rfprobe.studyconfig)
    cli = importlib.reload(rfprobe.cli)
    try:
        yield cli
    finally:
        del REGISTRY["toy"]
        importlib.reload(rfprobe.studyconfig)
        importlib.reload(rfprobe.cli)


def run(cli, args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    assert exit_.value.code in (0, None), captured.err
    return captured.out


def test_a_pass_added_to_the_registry_is_everywhere(with_toy, tmp_path, capsys):
    cli = with_toy
    ckpt = save_checkpoint(tmp_path / "r8.pt", build_model("cifar_resnet_8_4", 10, seed=0), mode="bn",
                           dataset="synthetic", epoch=1)
    # a command of its own, with its option
    report = json.loads(run(cli, ["toy", ckpt, "--min-gamma", "0.1", "--out", tmp_path / "t.zarr", "--json"], capsys))
    assert report["pass"] == "toy" and report["checkpoints"]["r8"]["bn_layers"] == 9
    # compare runs it (with its prefixed option) and the study has its group
    out = tmp_path / "s"
    run(cli, ["compare", ckpt, "--passes", "toy,dead", "--toy-min-gamma", "0.1", "--out", out], capsys)
    tree = xr.open_datatree(out / "study.zarr", engine="zarr")
    assert set(tree.children) == {"toy", "dead"} and int(tree["toy"].ds["n_bn"].values[0]) == 9
    # the report shows its figure and table, plot draws it
    run(cli, ["report", out], capsys)
    page = (out / "report.html").read_text()
    assert 'id="toy"' in page and "toy figure" in page
    run(cli, ["plot", out, "--pass", "toy", "--out", tmp_path / "toy.png"], capsys)
    assert (tmp_path / "toy.png").read_bytes()[:4] == b"\x89PNG"
    run(cli, ["plot", tmp_path / "t.zarr"], capsys)
    assert (tmp_path / "t.png").exists()


def test_the_registry_is_the_one_list():
    from rfprobe.cli import app

    commands = [c.name for c in app.registered_commands]
    assert [name for name in commands if name in REGISTRY] == list(REGISTRY)
    assert list(REGISTRY) == ["affine", "dead", "sparsity", "ablate", "signal", "partition"]
    for name, p in REGISTRY.items():
        assert p.name == name and p.validate(p.defaults()) is not None
        assert np.all([o.name.isidentifier() for o in p.options])


def test_every_architecture_family_builds_its_names_and_says_its_shape(capsys):
    import re

    from rfprobe.cli import main
    from rfprobe.models import architecture_shape, architectures, build_model

    families = architectures()
    for family in families:
        assert family.names, family.example
        for name in family.names:
            matching = [f for f in families if re.fullmatch(f.pattern, name)]
            assert matching == [family], name  # one family per name: none shadows another
            model = build_model(name, 10, seed=0)
            assert model.rfprobe_arch == name
            depth, width = architecture_shape(name)
            numbers = [int(n) for n in re.findall(r"\d+", name.split(":")[-1])]
            if depth != -1:
                assert depth == numbers[0] and (width in numbers[1:] or len(numbers) == 1), name
    with pytest.raises(SystemExit):
        main(["archs", "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert [row["family"] for row in listed] == [f.example for f in families]
