"""Reference backend: a plain PyTorch loop over the step functions of :mod:`suite.dynamics`."""
from __future__ import annotations

import torch

from suite.dynamics import if_step, lif_step


def multi_step(x_seq: torch.Tensor, *, tau, v_threshold, v_reset, surrogate, decay_input=True,
               detach_reset=False, return_v: bool = False):
    v = torch.full_like(x_seq[0], 0.0 if v_reset is None else float(v_reset))
    spikes, vs = [], []
    for x in x_seq:
        if tau is None:
            s, v = if_step(v, x, v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                           detach_reset=detach_reset)
        else:
            s, v = lif_step(v, x, tau=tau, v_threshold=v_threshold, v_reset=v_reset, surrogate=surrogate,
                            decay_input=decay_input, detach_reset=detach_reset)
        spikes.append(s)
        if return_v:
            vs.append(v)
    out = torch.stack(spikes)
    return (out, torch.stack(vs)) if return_v else out
