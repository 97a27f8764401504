"""The analysis passes, one package each, usable from a notebook without the CLI (docs/notebooks.md). Each
declares one `rfprobe.passes.base.Pass` (`PASS`, in its torch-free `__init__`): its options, data defaults,
`run`, `validate`, `headline`, tables and figure (in its `compute` module, loaded on first use). `REGISTRY`
is the one list of them: the command line, studies, the report, the tables and `rfprobe plot` iterate over
it and look a pass up in it, so adding a pass is one package and one line here."""

from rfprobe.passes import ablate, affine, dead, partition, signal, sparsity
from rfprobe.passes.base import Pass

REGISTRY: dict[str, Pass] = {p.name: p for p in (affine.PASS, dead.PASS, sparsity.PASS, ablate.PASS, signal.PASS,
                                                 partition.PASS)}
"""every pass by name, in the order a study runs them and a report shows them"""
