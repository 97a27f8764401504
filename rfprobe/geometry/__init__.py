"""The tangent forward of a piecewise-affine ReLU network, and the exact geometry built on it.

Modules, each importing only those before it (no cycle): `evalbn` (BN as a fixed affine map), `dual`
(directional derivatives by plain forwards, receptive-field boxes), `tangent` (the float64 tangent forward),
`regionwalk` (the incremental walk of one segment), `walk`, `distances`, `slices`.

`Tangent(model)` is a float64, eval-mode copy of a model (BN is then a fixed affine map) whose forward
returns, besides the logits, the pre-activation z of every ReLU site (keyed like `rfprobe.graph`) and the
input of the conv/linear layer that feeds it. `Tangent.jvp(x, v)` gives z(x) and its directional
derivatives J_z(x) v for all units, several directions per point, in one dual forward (`dual`).

On top of it, all exact (no sampling):
- `walk(tf, a, b)`: the breakpoints of x(t) = a + t (b - a), t in [0, 1]. Inside a region every z_k is
  affine in t, so from an evaluation point t_e the next crossing is t_e + min_k {-z_k / dz_k > 0}; the walk
  is that of evaluating at each crossing + `delta` (in t), computed by updating only what each crossing
  changes (`regionwalk`).
- `gradient_norms` / `exact_distance`: ||grad_x z_k|| by forward mode over the input dimensions (chunked:
  memory O(units x chunk)), and the distance from x to its region's boundary min_k |z_k| / ||grad z_k||
  (the region is the convex polytope where every sign is fixed and every z_k affine).
- `hutchinson_norms`: ||grad z_k||^2 ~ mean_j (J v_j)_k^2 with v_j ~ N(0, I) (relative error of the norm
  ~ 1/sqrt(2K)).
- `slice_partition`: the regions of a 2-D plane origin + P p inside a box, enumerated by flood fill
  across region facets, each region's polygon clipped exactly from its units' affine pieces.
"""

from rfprobe.geometry.distances import (Nearest, exact_distance, gradient_norms, hutchinson_norms, nearest,
                                        tile_basis)
from rfprobe.geometry.evalbn import EvalBN
from rfprobe.geometry.slices import Slice, region_polygon, slice_partition
from rfprobe.geometry.tangent import Layer, Tangent
from rfprobe.geometry.walk import Walk, walk

__all__ = ["EvalBN", "Layer", "Nearest", "Slice", "Tangent", "Walk", "exact_distance", "gradient_norms",
           "hutchinson_norms", "nearest", "region_polygon", "slice_partition", "tile_basis", "walk"]
