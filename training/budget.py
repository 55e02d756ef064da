"""What a fit may spend: threads, time, a learning-rate schedule that does not depend on the epoch budget, and
the best state so far kept on disk.

Threads. On a shared machine the cores a process may use are fewer than `os.cpu_count()`: its CPU affinity
(a container's cpuset, `taskset`) limits them, torchrun starts one process per rank, and other jobs keep
cores busy. A GRU epoch that took 22 s alone took 853 s beside four other jobs that each spawned a thread per
core: oversubscribed threads mostly wait for one another. `threads()` is the one count for torch, LightGBM
and BLAS: the cores of this process's affinity, less the load the other processes put on the machine, shared
among the ranks.

Schedule. A one-cycle schedule spans `max_epochs`: lowering the epoch budget (or stopping on a time budget)
changes its whole shape. `lr_schedule` warms up over a fixed part of an epoch, then decays along a cosine
over a fixed horizon in epochs, then stays at its floor: the learning rate at step s depends on the data
(steps per epoch) and these settings, never on how long the fit is allowed to run.

Checkpoint. The best state so far (model, optimiser, schedule, epoch, best validation loss, history) is
written atomically, so that an interrupted fit resumes where its best epoch left it (`fit.resume_from`).
It is not logged to MLflow: the registered model already carries the weights, the optimiser's moments make
a checkpoint about three times the model (about 80 MB with a 100,000-item catalogue), and a checkpoint is
only of use on the machine that trains.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

THREADS_ENV = "JOURNEY_THREADS"
CHECKPOINT = "best.pt"
# The 1-minute load average is an exponential average with this time constant (seconds).
LOAD_WINDOW_S = 60.0


# -- threads -----------------------------------------------------------------------------------------------


def choose_threads(cores: int, world_size: int = 1, load: float = 0.0, own_load: float = 0.0) -> int:
    """Threads for one process: the cores the others leave free, shared among the ranks, at least 1.

    Args:
        cores: the cores this process may run on (its CPU affinity).
        world_size: processes of this job sharing those cores (torchrun's ranks).
        load: the machine's 1-minute load average (runnable threads, this job's included).
        own_load: this process's share of `load`; every rank is taken to put the same share on it.

    The others' load is rounded to the nearest whole core: a load of 0.3 from a shell costs no core, a
    job that keeps one thread busy (load 1.0) costs one.
    """
    others = max(0.0, load - world_size * own_load)
    free = cores - math.floor(others + 0.5)
    return max(1, free // max(1, world_size))


def own_load() -> float:
    """This process's share of the 1-minute load average: its mean CPU use since it started (cores), weighted
    by how much of the average's window it has been running for. 0 where psutil cannot tell."""
    try:
        import psutil

        process = psutil.Process()
        cpu = process.cpu_times()
        elapsed = max(time.time() - process.create_time(), 1e-3)
    except Exception:  # no psutil, or a platform without these readings
        return 0.0
    return (cpu.user + cpu.system) / elapsed * (1.0 - math.exp(-elapsed / LOAD_WINDOW_S))


def threads(setting: int = 0) -> int:
    """The thread count of this process: `setting` when above 0, else `JOURNEY_THREADS` when set above 0,
    else `choose_threads` from the CPU affinity, `WORLD_SIZE` and the load average.

    Raises:
        ValueError: `JOURNEY_THREADS` is not a whole number >= 0.
    """
    if setting > 0:
        return setting
    given = os.environ.get(THREADS_ENV, "").strip()
    if given:
        if not given.isdigit():
            raise ValueError(f"{THREADS_ENV} must be a whole number of threads (0: auto), not {given!r}")
        if int(given) > 0:
            return int(given)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    world = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        load = 0.0
    return choose_threads(cores, world, load, own_load())


def use_threads(n: int) -> int:
    """Sets torch's intra-op threads, its inter-op threads (only possible before its first parallel work:
    otherwise left as they are) and the BLAS libraries' threads (threadpoolctl) to `n`, for the rest of
    the process; returns `n`."""
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # set once per process, before any inter-op work
        log.debug("torch inter-op threads already fixed at %d", torch.get_num_interop_threads())
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)
    return n


# -- time ---------------------------------------------------------------------------------------------------


def deadline(started: float, budget_s: float | None) -> float:
    """The `time.perf_counter()` reading after which a fit stops (inf: no budget)."""
    return math.inf if budget_s is None else started + budget_s


def past(deadline_at: float, device: torch.device | None = None) -> bool:
    """Whether the deadline has passed; under DDP, whether it has passed on any rank, so that every rank
    stops after the same batch (a rank that stopped alone would leave the others waiting in all-reduce)."""
    if deadline_at == math.inf:
        return False
    over = time.perf_counter() >= deadline_at
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([float(over)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        over = bool(flag.item() > 0)
    return over


# -- schedule --------------------------------------------------------------------------------------------


def lr_multiplier(step: int, warmup_steps: int, decay_steps: int, min_ratio: float) -> float:
    """The learning rate at optimiser step `step` (0-based) as a fraction of the peak: linear warmup over
    `warmup_steps` (the first step at 1 / (warmup_steps + 1)), a cosine from 1 down to `min_ratio` that
    ends at step `decay_steps`, then `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_schedule(
    optimiser: torch.optim.Optimizer,
    steps_per_epoch: int,
    warmup_epochs: float,
    decay_epochs: float,
    min_ratio: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_multiplier` with its horizons in epochs of this data (steps per epoch), stepped once per batch."""
    warmup = round(warmup_epochs * steps_per_epoch)
    decay = max(round(decay_epochs * steps_per_epoch), warmup + 1)
    factor = functools.partial(lr_multiplier, warmup_steps=warmup, decay_steps=decay, min_ratio=min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed per (seed, epoch) for the shuffling and the dropout of that epoch: a resumed fit draws what
    the uninterrupted one would have drawn."""
    import numpy as np

    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


# -- checkpoint --------------------------------------------------------------------------------------------


class Checkpoints:
    """The best state of one fit in `folder/best.pt`, replaced atomically at every improvement.

    Args:
        folder: where to write; None: a temporary folder of this fit, removed when the fit ends normally
            and kept (its path logged) when it stops on an error or an interrupt, to resume from.
    """

    def __init__(self, folder: str | Path | None) -> None:
        self.temporary = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="journey-fit-") if folder is None else folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / CHECKPOINT
        log.info("the best state so far goes to %s", self.path)

    def save(
        self,
        model: torch.nn.Module,
        optimiser: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        **progress: Any,
    ) -> None:
        """Writes the state (and `progress`: epoch, best, history) to a temporary file beside the
        checkpoint, then renames it over the checkpoint: a reader (or a crash) never sees half a file."""
        state = {
            "model": model.state_dict(),
            "optimizer": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "model_config": _config_of(model),
            **progress,
        }
        handle, tmp = tempfile.mkstemp(prefix=".best-", suffix=".pt", dir=self.folder)
        try:
            with os.fdopen(handle, "wb") as out:
                torch.save(state, out)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def interrupted(self) -> None:
        if self.path.exists():
            log.warning("fit stopped early: its best state is in %s (resume with fit.resume_from=%s)",
                        self.path, self.path)  # fmt: skip

    def close(self) -> None:
        """Removes a temporary folder (the fitted model holds the best state now)."""
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)


def resume(
    path: str | Path,
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Loads a checkpoint written by `Checkpoints` (a file, or the folder holding `best.pt`) into the model,
    the optimiser and the schedule; returns it (its `epoch`, `best`, `history`, and `model`: the weights).

    Raises:
        FileNotFoundError / ValueError: one line naming `fit.resume_from`: no checkpoint there, or one of
            a model of another shape (its differing settings named).
    """
    file = Path(path)
    file = file / CHECKPOINT if file.is_dir() else file
    if not file.is_file():
        raise FileNotFoundError(f"fit.resume_from: no checkpoint at {file}")
    state: dict[str, Any] = torch.load(file, map_location="cpu", weights_only=True)
    saved, wanted = state.get("model_config", {}), _config_of(model)
    differ = sorted(k for k in set(saved) | set(wanted) if _plain(saved.get(k)) != _plain(wanted.get(k)))
    if differ:
        raise ValueError(
            f"fit.resume_from: {file} is a checkpoint of another model ({', '.join(differ)} differ)"
        )
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state


def _config_of(model: torch.nn.Module) -> dict[str, Any]:
    """The model's settings (`predictor.model.ModelConfig`), as a checkpoint records them."""
    config = getattr(model, "config", None)
    return dict(config.to_dict()) if config is not None and hasattr(config, "to_dict") else {}


def _plain(value: Any) -> Any:
    """Tuples and lists alike (a checkpoint may hold either)."""
    return list(value) if isinstance(value, tuple | list) else value
