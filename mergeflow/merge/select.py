"""The k-th largest entry of a large tensor, exactly, on the CPU: a strided sample brackets it, one counting
pass checks the bracket, and only the entries inside it are selected among (about 2% of them). A bracket the
counts refute (a skewed sample, NaN) falls back to a selection over everything, so the answer is exact
whatever the data; only the speed depends on the sample."""

from __future__ import annotations

import math

import numpy as np
import torch

SAMPLE = 1 << 16  # entries sampled (strided) to bracket the k-th largest
SMALL = 1 << 18  # below this, select over everything at once
MARGIN = 5.0  # bracket half-width in standard deviations of the sample's rank


def select_all(values: torch.Tensor, k: int) -> torch.Tensor:
    """numpy's introselect on a view of the same memory (torch's CPU kthvalue is ~10x slower)."""
    n = values.numel()
    return torch.tensor(np.partition(values.detach().numpy(), n - k)[n - k], dtype=values.dtype)


def kth_largest_cpu(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry (1 <= k <= n) of a 1-D CPU tensor."""
    n = values.numel()
    if n <= SMALL:
        return select_all(values, k)
    step = n // SAMPLE
    sample = values[::step].detach().numpy()
    m = sample.size
    rank = k * m / n  # where the k-th largest falls in the sample (from the top)
    spread = MARGIN * math.sqrt(max(rank * (1 - rank / m), 1.0)) + 2
    first, last = int(rank - spread), int(rank + spread)  # ranks from the top that bracket it
    wanted = [m - 1 - r for r in (first, last) if 0 <= r < m]  # as ascending positions
    part = np.partition(sample, wanted) if wanted else sample
    hi = part[m - 1 - first] if first >= 0 else math.inf  # near the top: no upper bound, nothing above
    lo = part[m - 1 - last] if last < m else -math.inf
    above = int(torch.count_nonzero(values > hi))
    inside = values[(values >= lo) & (values <= hi)]
    if above < k <= above + inside.numel():
        return select_all(inside, k - above)
    return select_all(values, k)  # the sample misled the bracket: everything
