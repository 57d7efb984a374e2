"""The VJP dot test shared by the autograd and layer tests.

For f: inputs -> out, a random cotangent u and random directions d_i, reverse mode must satisfy
    sum_i <dL/dx_i, d_i> = d/ds <f(x + s d), u> at s = 0,
and the right side is a float64 central finite difference (error O(eps^2) + rounding O(1e-16/eps)).
"""

from __future__ import annotations

import numpy as np

from mincore.autograd import Tensor


def vjp_dot_test(fn, *arrays, seed=0, eps=1e-6, rtol=1e-6, atol=1e-8, wrt=None):
    """Check fn's reverse-mode gradient w.r.t. `arrays` (indices `wrt`, default all) in float64.

    fn takes Tensors and returns a Tensor. Returns (analytic, numeric) for further inspection.
    """
    rng = np.random.default_rng(seed)
    wrt = range(len(arrays)) if wrt is None else wrt
    ts = [Tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
    out = fn(*ts)
    u = rng.standard_normal(out.shape)
    out.backward(u)
    dirs = {i: rng.standard_normal(np.shape(arrays[i])) for i in wrt}
    analytic = sum(float((ts[i].grad * d).sum()) for i, d in dirs.items() if ts[i].grad is not None)

    def L(s):
        shifted = [Tensor(a + s * dirs[i]) if i in dirs else Tensor(a) for i, a in enumerate(arrays)]
        return float((fn(*shifted).data * u).sum())
    numeric = (L(eps) - L(-eps)) / (2 * eps)
    # the difference quotient's own rounding floor: L sums terms of total size |f| . |u|, each L is
    # rounded to ~eps64 of that, divided by 2 eps (a tiny derivative of a large L, e.g. rms_norm's
    # 5e-5 from terms of size 60, is 1e-8 uncertain at eps = 1e-6; hypothesis found that case)
    floor = 8 * np.finfo(np.float64).eps * float(np.abs(out.data * u).sum()) / eps
    assert abs(analytic - numeric) <= atol + floor + rtol * (abs(analytic) + abs(numeric)), (analytic, numeric)
    for i in wrt:  # every gradient has its input's shape and dtype
        if ts[i].grad is not None:
            assert ts[i].grad.shape == np.shape(arrays[i]) and ts[i].grad.dtype == np.float64
    return analytic, numeric
