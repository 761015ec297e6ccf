"""Forecasting a module's output at a skipped step from its last computed outputs.

Broadcasting returns the last computed output as it is; a forecast extrapolates the last `order + 1` computed outputs
with the Lagrange polynomial through them, in timestep units:

    order 1:  y(t) ~ y_a + (y_a - y_b) * (t - t_a) / (t_a - t_b)

The weights depend only on timesteps (Python floats), so the tensor work is one weighted sum per forecast. Outputs
may be a tensor or a structure of them (tuple, list, dict, diffusers `BaseOutput`): every tensor leaf is forecast
alike, anything else is taken from the latest output.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch


def lagrange_weights(points: list[float], t: float) -> list[float]:
    """Weights w_i with sum_i w_i * y_i = the polynomial through (points[i], y_i) evaluated at t."""
    weights = []
    for i, ti in enumerate(points):
        w = 1.0
        for j, tj in enumerate(points):
            if j != i:
                w *= (t - tj) / (ti - tj)
        weights.append(w)
    return weights


def combine(values: list[Any], weights: list[float]) -> Any:
    """sum_i weights[i] * values[i], leaf by leaf; non-tensor leaves come from values[0]."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        if len(values) == 2:  # one fused op for the common first-order case (weights sum to 1)
            return torch.lerp(values[1], first, weights[0])
        out = first * weights[0]
        for value, w in zip(values[1:], weights[1:]):
            out.add_(value, alpha=w)
        return out
    if isinstance(first, dict):  # BaseOutput is an OrderedDict dataclass: rebuild the same class
        return type(first)(**{k: combine([v[k] for v in values], weights) for k in first})
    if isinstance(first, (tuple, list)):
        return type(first)(combine([v[i] for v in values], weights) for i in range(len(first)))
    return first


class ForecastHistory:
    """The last computed outputs of one module in one CFG pass, newest first, with their timesteps."""

    def __init__(self, keep: int) -> None:
        self.entries: deque[tuple[float, Any]] = deque(maxlen=max(1, keep))

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, timestep: float, output: Any) -> None:
        if self.entries and self.entries[0][0] == timestep:
            self.entries.popleft()  # a recompute at the same timestep replaces its point (equal points divide by 0)
        self.entries.appendleft((timestep, output))

    def latest(self) -> Any:
        return self.entries[0][1]

    def predict(self, timestep: float, order: int) -> Any:
        """Order 0 returns the latest output itself; higher orders use as many points as there are (at most order+1)."""
        points = list(self.entries)[: order + 1]
        if len(points) == 1:
            return points[0][1]
        weights = lagrange_weights([t for t, _ in points], timestep)
        return combine([v for _, v in points], weights)
