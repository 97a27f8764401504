"""The exact region walk along one segment, updating only what each crossing changes.

Along x(t) = a + t d every pre-activation is affine in t inside a region: z_k(t) = c_k + t s_k. The next
breakpoint is the smallest root -c_k / s_k beyond the current t. When unit u crosses at t*, its
post-activation gains a kink: it changes by |s_u| (t - t*) (turning on or off alike), and every later
pre-activation changes by r_k |s_u| (t - t*), r_k being u's response through the network linearised with the
masks fixed (`Program.response`, confined to u's receptive-field cone). So each crossing updates
s_k += r_k |s_u|, c_k -= t* r_k |s_u| and the roots of just those units.

The result is the plain walk's (evaluate at t* + delta, take the first root beyond it), not an
approximation of it: a full dual evaluation at t* + delta replaces the update whenever another root lies
within `delta` after t* (two units flip within one step: the plain walk merges them, so must this one),
and every `refresh` crossings, which bounds the rounding the updates accumulate.

A max-pool layer's units are its pair units z_j = w_a - w_j (`rfprobe.geometry.dual`). When pair unit j
crosses, j becomes its window's argmax: the window's forms become z_i - z_j, and the pool's output gains the
kink |s_j| (t - t*), propagated from the pool like a ReLU unit's. A window whose entries tie (ReLU zeros) can
have its argmax overtaken at the very t* of another crossing (an entry's ReLU turns on, z_j(t*) = 0 up to
rounding): a falling pair unit whose root is not beyond t* is given the root t*, so the two crossings merge
into one full evaluation, as the plain walk merges them.

One guard the plain walk lacks: when the crossing unit's slope is so small that z(t* + delta) rounds to the
side it just left, the fresh evaluation would give it the old mask and find the same crossing again a
rounding error later. The walk then applies that unit's crossing as an update (the correction from the
rounded mask to the true one is exactly that update), so every crossing is counted once.
"""

from __future__ import annotations

import math

import torch

from rfprobe.geometry.dual import Box

INF = math.inf


class SegmentState:
    """Per ReLU site: c, s (z = c + t s), the 0/1 mask of the current region, and each unit's next root."""

    def __init__(self, tf, a: torch.Tensor, d: torch.Tensor):
        self.tf, self.a, self.d = tf, a, d
        self.shapes = [layer.shape for layer in tf.layers]
        self.windows = [layer.window for layer in tf.layers]
        self.evaluations = 0

    def evaluate(self, t_e: float) -> None:
        """Fresh forms from one dual forward at x(t_e); roots as the plain walk computes them, t_e + (-z/dz)."""
        with torch.no_grad():
            shape = (1, *self.tf.input_shape)
            zs, dzs = self.tf.program.dual((self.a + t_e * self.d).view(shape), self.d.view(shape))
        self.evaluations += 1
        self.c, self.s, self.masks, self.roots = [], [], [], []
        for z, dz, shape in zip(zs, dzs, self.shapes):
            z, dz = z[0], dz[0]
            step = torch.where(dz != 0, -z / dz, INF)
            root = torch.where(step > 0, t_e + step, INF)
            self.c.append((z - t_e * dz).view(shape))
            self.s.append(dz.view(shape).clone())
            self.masks.append((z > 0).to(z.dtype).view(shape))
            self.roots.append(root.view(shape))
        self.minima = [self._minimum(i) for i in range(len(self.roots))]

    def _minimum(self, layer: int) -> tuple[float, int]:
        value, index = self.roots[layer].view(-1).min(0)
        return float(value), int(index)

    def next_crossing(self) -> tuple[float, int, int]:
        layer = min(range(len(self.minima)), key=lambda i: self.minima[i][0])
        return self.minima[layer][0], layer, self.minima[layer][1]

    def cross(self, t_star: float, layer: int, unit: int) -> None:
        """Apply unit `unit` of `layer` crossing at t_star (see the module docstring)."""
        slope = self.s[layer].view(-1)[unit].clone()
        if self.windows[layer]:
            self._new_argmax(t_star, layer, unit)
        else:
            mask = self.masks[layer].view(-1)
            mask[unit] = 1 - mask[unit]
            self.roots[layer].view(-1)[unit] = INF
        changed = {layer}
        for j, change in self.tf.program.response(layer, unit, abs(slope.item()), self.masks):
            if isinstance(change, Box):
                index = (slice(None), slice(change.y0, change.y1), slice(change.x0, change.x1))
                delta = change.values[0]
            else:
                index = (slice(None),) * len(self.shapes[j])
                delta = change[0]
            s = self.s[j][index]
            c = self.c[j][index]
            s += delta
            c.sub_(delta, alpha=t_star)
            root = c.div(s).neg_()
            self.roots[j][index] = _pool_roots(root, s, t_star) if self.windows[j] else torch.where(root > t_star,
                                                                                                 root, INF)
            changed.add(j)
        for j in changed:
            self.minima[j] = self._minimum(j)

    def _new_argmax(self, t_star: float, layer: int, unit: int) -> None:
        """Pair unit `unit` of a max-pool becomes its window's argmax: the window's forms become z_i - z_j."""
        window = self.windows[layer]
        start, j = unit // window * window, unit % window
        c = self.c[layer].view(-1)[start:start + window]
        s = self.s[layer].view(-1)[start:start + window]
        c -= c[j].clone()
        s -= s[j].clone()
        mask = self.masks[layer].view(-1)[start:start + window]
        mask.fill_(1)
        mask[j] = 0
        root = _pool_roots(c.div(s).neg_(), s, t_star)
        root[j] = INF
        self.roots[layer].view(-1)[start:start + window] = root


def _pool_roots(root: torch.Tensor, s: torch.Tensor, t_star: float) -> torch.Tensor:
    """Roots of max-pool pair units after an update at t_star: a falling unit (s < 0) whose root is not beyond
    t_star (z(t_star) <= 0, up to rounding: a tie overtaken now) crosses at t_star; a rising one never."""
    return torch.where(s < 0, root.clamp(min=t_star), INF)


def walk_segment(tf, a: torch.Tensor, d: torch.Tensor, *, delta: float, max_breakpoints: int,
                 refresh: int = 256) -> tuple[list[float], list[int], int]:
    """Breakpoints (t, layer) of x(t) = a + t d for t in (0, 1), and the number of full evaluations."""
    state = SegmentState(tf, a, d)
    state.evaluate(0.0)
    found_t: list[float] = []
    found_layer: list[int] = []
    since = 0
    while len(found_t) < max_breakpoints:
        t_star, layer, unit = state.next_crossing()
        if not t_star < 1:
            break
        found_t.append(t_star)
        found_layer.append(layer)
        since += 1
        if since < refresh:
            state.cross(t_star, layer, unit)
            if state.next_crossing()[0] > t_star + delta:
                continue
        turns_on = bool(state.s[layer].view(-1)[unit] > 0)
        state.evaluate(t_star + delta)
        since = 0
        if bool(state.masks[layer].view(-1)[unit]) != turns_on:
            state.cross(t_star, layer, unit)
    return found_t, found_layer, state.evaluations
