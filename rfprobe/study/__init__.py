"""Studies: many checkpoints through several passes, one checkpoint at a time, resumable, merged into one
`xarray.DataTree` (docs/studies.md).

Layout of a study directory DIR:

- `DIR/runs/<label>/<pass>.zarr`: one pass on one checkpoint (a plain rfprobe result). Its attrs carry
  `study_fingerprint`, the JSON of everything that decides its numbers (`Request.fingerprint`) and a
  checksum manifest; a store is reused only when its `checkpoint_sha256`, fingerprint and checksums hold
  (`store_problem`), so a rerun after a kill computes only what is missing.
- `DIR/runs/<label>/checkpoint.json`: the checkpoint's provenance and the study coordinates (`STUDY_COORDS`).
- `DIR/study.zarr`: the merge (`merge`), one group per pass, each stacked on `checkpoint` with the
  coordinates a notebook groups by. Stores written on several machines merge the same way.

Modules: `layout` (what a study directory holds), `inputs` (checkpoints, `[[input]]` tables, records),
`request` (what decides the stores, fingerprints), `runner` (one checkpoint at a time, reuse only when
current, worker processes), `merge` (the DataTree), `summary`; the HTML report is `rfprobe.report`.
"""

from rfprobe.study.inputs import (INPUT_KEYS, Entry, apply_given, arch_shape, checkpoint_record, expand_all,
                                  expand_inputs, is_run_directory, parse_epochs, trajectory)
from rfprobe.study.layout import STUDY_COORDS, STUDY_FILES, store_path
from rfprobe.study.merge import as_result, last_checkpoints, merge, open_study, records, relative_depth
from rfprobe.study.request import Request, validate
from rfprobe.study.runner import check_study_stores, run_entry, run_study, store_problem
from rfprobe.study.summary import summary

__all__ = ["INPUT_KEYS", "STUDY_COORDS", "STUDY_FILES", "Entry", "Request", "apply_given", "arch_shape", "as_result",
           "check_study_stores", "checkpoint_record", "expand_all", "expand_inputs", "is_run_directory",
           "last_checkpoints", "merge", "open_study", "parse_epochs", "records", "relative_depth", "run_entry",
           "run_study", "store_path", "store_problem", "summary", "trajectory", "validate"]
