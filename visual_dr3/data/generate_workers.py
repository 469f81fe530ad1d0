"""The processes of dataset generation (``visual_dr3.data.generate``): each worker holds one env (and its EGL
context) built by :func:`init_worker` and runs episodes by index; :func:`worker_pool` starts K of them so that
Ctrl-C reaches only the parent; :func:`model_file_for` builds the MJCF the datasets store."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

from visual_dr3.envs.tasks import get_task

#: this process's env and episode settings (set by init_worker; the parent's own with ``--workers 1``)
WORKER: dict[str, Any] = {}


def init_worker(task: str, image_size: int, cameras, horizon: int, seed: int, kind: str) -> None:
    """Build this process's env into :data:`WORKER` (a pool worker, through :func:`init_pool_worker`, or the
    parent itself with ``--workers 1``, which keeps its Ctrl-C)."""
    from visual_dr3.envs.make import make_env

    spec = get_task(task)
    env = make_env(spec, image_size=image_size, cameras=cameras, horizon=horizon, seed=seed)
    WORKER.update(env=env, spec=spec, kind=kind, seed=seed, horizon=horizon)


def init_pool_worker(*init_args) -> None:
    """Pool initializer: ignore Ctrl-C (the parent's to handle, see :func:`worker_pool`), then :func:`init_worker`."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    init_worker(*init_args)


def worker_pool(workers: int, init_args: tuple):
    """A spawn pool whose workers never see Ctrl-C: on SIGINT only the parent stops (one line, the partial file
    removed) and terminates them, instead of every worker printing a traceback. SIGINT is blocked while the
    workers start (they inherit the mask, and :func:`init_pool_worker` ignores it), so a Ctrl-C in that window is
    delivered to the parent when it unblocks, not lost."""
    import signal
    import threading

    ctx = mp.get_context("spawn")
    if threading.current_thread() is not threading.main_thread():
        return ctx.Pool(workers, initializer=init_pool_worker, initargs=init_args)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    pool = None
    try:
        pool = ctx.Pool(workers, initializer=init_pool_worker, initargs=init_args)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a pending Ctrl-C is delivered here
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if pool is not None:
            pool.terminate()
            pool.join()
        raise
    return pool


def worker_episode(index: int) -> dict:
    from visual_dr3.data import generate  # late: generate imports this module (and tests patch run_episode)

    w = WORKER
    return generate.run_episode(w["env"], w["spec"], w["kind"], w["seed"], index, w["horizon"])


def model_file_for(spec, image_size, cams, horizon, seed) -> str:
    """The MJCF of the env the workers use (built here once, without cameras, for ``model_file``)."""
    from visual_dr3.envs.make import env_args_for, make_env_from_args, model_xml

    env = make_env_from_args(env_args_for(spec, image_size, cams, horizon, seed=seed),
                             has_offscreen_renderer=False, use_camera_obs=False)
    try:
        return model_xml(env)
    finally:
        env.close()


def close_worker_env() -> None:
    env = WORKER.pop("env", None)
    if env is not None:
        try:
            env.close()
        except Exception:
            pass
    WORKER.clear()
