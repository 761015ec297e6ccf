"""Start a replica's ranks as local processes (tests, benchmarks, single-node demos); Ray actors use `init_group`.

Each rank runs `fn(rank, *args)` after joining the group; its return value (or its error) comes back per rank, so a
caller can check both that the healthy ranks failed fast and why.
"""

from __future__ import annotations

import os
import pickle
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .groups import bind_store_socket, init_group


@dataclass
class RankOutcome:
    rank: int
    value: Any = None
    error: str | None = None
    arrival: int = -1
    """Order in which the parent received the outcomes (0 = first): shows who failed before whom."""

    @property
    def ok(self) -> bool:
        return self.error is None


def _free_port(host: str) -> int:
    sock, port = bind_store_socket(host)
    sock.close()
    return port


def _rank_main(rank: int, world_size: int, host: str, port: int, timeout_s: float, results: Any,
               fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)
    if host == "127.0.0.1":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        init_group(rank, world_size, host=host, port=port, timeout_s=timeout_s, backend="gloo")
        outcome = RankOutcome(rank, value=fn(rank, *args))
    except BaseException as exc:  # report every failure to the parent, including the group's timeout
        outcome = RankOutcome(rank, error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")
    results.put(pickle.dumps(outcome))  # plain bytes: torch's fd sharing dies with this process
    if dist.is_initialized() and outcome.ok:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 60.0,
              join_timeout_s: float = 300.0, host: str = "127.0.0.1") -> list[RankOutcome]:
    r"""
    Run `fn(rank, *args)` on `world_size` new CPU processes joined in one gloo group.

    Args:
        fn: a module-level function (pickled by name); its return value must be picklable.
        timeout_s: the group's collective timeout.
        join_timeout_s: how long to wait for all ranks before killing the ones still running.
    """
    # forkserver: one server process imports torch/diffusers (and `fn`'s module) once and forks every rank from
    # there, so ranks start in a fraction of a second instead of each importing for tens of seconds; the server never
    # runs torch compute, so forking it is safe (unlike forking a parent whose thread pools are running).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["pab.parallel.launch", "pab.parallel", fn.__module__])
    results = ctx.SimpleQueue()
    port = _free_port(host)
    procs = [
        ctx.Process(target=_rank_main, args=(r, world_size, host, port, timeout_s, results, fn, args), daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    outcomes: dict[int, RankOutcome] = {}
    deadline = join_timeout_s
    start = time.monotonic()
    while len(outcomes) < world_size and time.monotonic() - start < deadline:
        if not results.empty():
            o = pickle.loads(results.get())
            o.arrival = len(outcomes)
            outcomes[o.rank] = o
            continue
        if all(not p.is_alive() for p in procs) and results.empty():
            break
        time.sleep(0.02)
    for p in procs:
        p.join(timeout=max(0.0, deadline - (time.monotonic() - start)))
        if p.is_alive():
            p.kill()
            p.join()
    for r, p in enumerate(procs):
        if r not in outcomes:
            outcomes[r] = RankOutcome(r, error=f"rank {r} exited with code {p.exitcode} without reporting a result")
    return [outcomes[r] for r in range(world_size)]
