"""How many CPU threads a training run uses when ``threads`` is not set.

Training steps one bag at a time. On small bags (Musk-sized: a few instances) each step is hundreds of tiny ops, and
every op that torch splits across threads pays a barrier: with more than one thread an epoch was 10-17x slower than
with one, and on a shared machine whose cores are busy with other jobs even slide-sized bags (5,000 x 1024) ran
2-4x slower on two threads than on one (``benchmarks/bench_mil.py``). Threads pay only when each step carries
enough work *and* there are idle cores to run them; the rule below asks for both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..batch import available_cpus

__all__ = ["WORK_PER_THREAD", "choose_threads"]

# Multiply-adds per bag (instances x model parameters, a proxy of one step's work) one more thread must get to pay
# for its synchronisation: ~750 instances of 1024-d features through ASMIL (2.6 M parameters). Below it, 1 thread.
WORK_PER_THREAD = 2e9


def choose_threads(
    n_instances: Iterable[int],
    n_params: int,
    *,
    cpus: int | None = None,
    load: float | None = None,
) -> int:
    """Threads for training on bags of ``n_instances`` with a model of ``n_params`` parameters.

    ``cpus`` defaults to the CPUs this process may use (Slurm allocation or affinity mask). ``load``, the machine's
    1-minute load average, defaults to ``os.getloadavg()`` outside Slurm (whose CPUs are this job's alone) and to
    0 inside it; the cores it says are busy are not asked for. Never fewer than 1 nor more than ``cpus``.
    """
    sizes = sorted(n_instances)
    if not sizes:
        return 1
    median = sizes[len(sizes) // 2]
    by_work = int(median * n_params // WORK_PER_THREAD)
    if by_work <= 1:
        return 1
    cpus = available_cpus() if cpus is None else cpus
    if load is None:
        load = 0.0 if os.environ.get("SLURM_CPUS_PER_TASK") else _load_average()
    idle = int(cpus - load + 0.5)
    return max(1, min(cpus, by_work, idle))


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform: assume the cores are free
        return 0.0
