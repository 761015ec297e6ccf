"""One `torch.compile`d transformer forward per broadcast plan, chosen in Python before the call.

PAB's root hook knows, before a forward runs, which modules broadcast (`plan`). Compiling one forward for every plan
would leave dynamo to find the right graph by evaluating the guards of every graph it holds for that code object,
one after another, on every call - on a small model that guard walk costs as much as the attention PAB skips. Here
each plan gets its own copy of the forward's code object, hence its own dynamo cache with a single entry: the plan
is looked up in a dict, and dynamo checks one set of guards (it still recompiles on a new input size or dtype).

Inductor's `freezing` option (weights as constants: on CPU, linear weights prepacked for MKL once instead of an
`addmm` per call) is read by dynamo while it traces, from the global inductor config, not from the `options` passed to
`torch.compile`: passed only there, the graphs are built unfrozen. So when `freezing` is asked for, every call of a
compiled forward (any of which may trace: a new input size recompiles) runs inside a config patch that sets it, and
nothing outside PAB's forwards is frozen.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Callable

import torch

Plan = tuple[bool, ...]
"""Per broadcast hook, in the root hook's order: whether it returns a cached (or forecast) output this forward."""


def fresh_method(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` (a bound method) with a copy of its function's code object: same behaviour, its own dynamo cache."""
    func, owner = method.__func__, method.__self__
    clone = types.FunctionType(func.__code__.replace(), func.__globals__, func.__name__, func.__defaults__,
                               func.__closure__)
    clone.__kwdefaults__ = func.__kwdefaults__
    clone.__qualname__, clone.__doc__, clone.__module__ = func.__qualname__, func.__doc__, func.__module__
    return types.MethodType(clone, owner)


class PlanCompiler:
    """Compiled forwards keyed by plan, compiled on first use with the same `torch.compile` options."""

    def __init__(self, forward: Callable[..., Any], options: dict[str, Any]) -> None:
        self._forward = forward
        self._options = options
        self._compiled: dict[Plan, Callable[..., Any]] = {}
        self._tracing_config = _tracing_config(options)

    def __call__(self, plan: Plan) -> Callable[..., Any]:
        compiled = self._compiled.get(plan)
        if compiled is None:
            compiled = self._compiled[plan] = self._compile()
        return compiled

    def _compile(self) -> Callable[..., Any]:
        compiled = torch.compile(fresh_method(self._forward), **self._options)
        patch = self._tracing_config
        if patch is None:
            return compiled

        def call(*args: Any, **kwargs: Any) -> Any:
            with patch:
                return compiled(*args, **kwargs)

        return call

    @property
    def plans(self) -> int:
        """Distinct plans seen so far (each one compiled graph per input size)."""
        return len(self._compiled)


def _tracing_config(options: dict[str, Any]) -> contextlib.AbstractContextManager | None:
    """A reusable inductor config patch for the options dynamo reads while tracing (`freezing`), or None."""
    inductor = options.get("options") or {}
    if not inductor.get("freezing"):
        return None
    import torch._inductor.config as inductor_config  # only when compiling: it imports inductor

    return inductor_config.patch(freezing=True)
