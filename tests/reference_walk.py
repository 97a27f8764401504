"""The plain region walk, kept as the oracle of `rfprobe.geometry.walk`: one `torch.func.jvp` of the whole
network per region crossed (the algorithm rfprobe used before the incremental walk)."""

import numpy as np
import torch


def plain_walk(tf, a: torch.Tensor, b: torch.Tensor, delta: float = 1e-9) -> list[np.ndarray]:
    """Per segment a_i -> b_i: every t_e + min_k {-z_k / dz_k > 0} < 1, evaluating z and dz/dt by autodiff at
    t_e = 0 and at each breakpoint + delta."""
    a, b = tf._cast(a).flatten(1), tf._cast(b).flatten(1)
    out = []
    for i in range(a.shape[0]):
        d = b[i] - a[i]
        t, found = 0.0, []
        while True:
            x = (a[i] + t * d).view(1, *tf.input_shape)
            with torch.no_grad():
                (_, zs, _), (_, dzs, _) = torch.func.jvp(tf.net, (x,), (d.view(1, *tf.input_shape),))
            z, dz = torch.cat([z.flatten() for z in zs]), torch.cat([dz.flatten() for dz in dzs])
            step = torch.where(dz != 0, -z / dz, torch.inf)
            step = float(torch.where(step > 0, step, torch.inf).min())
            if not t + step < 1:
                break
            found.append(t + step)
            t = t + step + delta
        out.append(np.array(found))
    return out
