"""Rollout worker processes: the env loop each worker runs, and the parent's handle on one worker.

A worker (:func:`_worker_main`, started by :class:`_Worker` in a ``spawn`` process) builds its env once from
a :class:`WorkerSpec`, then answers ``reset``/``step`` messages with packed observations (images as uint8,
the proprio keys concatenated into one float32 ``"proprio"`` vector) until it is told to close; any failure
is sent back as one ``("error", message)`` line before it exits. :class:`FaultSpec` is the test hook that
makes a worker fail on purpose. The protocol and the pool that drives it are described in
:mod:`visual_dr3.evaluation.rollout`. Workers import numpy and robosuite only (no torch): the module is safe
to import in a worker.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from visual_dr3.envs.tasks import PROPRIO_KEY


@dataclass(frozen=True)
class FaultSpec:
    """Test hook: make a worker fail on purpose (no mocks of robosuite needed).

    The worker running episode ``episode`` fails when it is about to take env step ``at_step`` (0: at the
    reset), on the first ``attempts`` attempts of that episode. ``kind``: ``"raise"`` (an exception inside
    the worker), ``"exit"`` (the process dies with exit code 3, as a segfault or OOM kill would leave it) or
    ``"hang"`` (the worker stops answering; the pool's ``step_timeout`` catches it).
    """

    episode: int
    at_step: int = 0
    kind: str = "raise"
    attempts: int = 1


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its env and pack observations (picklable, sent at process start)."""

    env_args: dict
    image_keys: tuple[str, ...]
    proprio_keys: tuple[str, ...]
    horizon: Optional[int] = None  # overrides env_kwargs["horizon"] when set
    env_seed: int = 0  # seeds env construction (robosuite draws e.g. Lift's cube size then)
    faults: tuple[FaultSpec, ...] = ()


# ----------------------------------------------------------------------------------------------------------
# worker process
# ----------------------------------------------------------------------------------------------------------

def format_exc(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}{where}"


def _pack_obs(obs: dict, spec: WorkerSpec) -> dict:
    out = {k: np.ascontiguousarray(obs[k], dtype=np.uint8) for k in spec.image_keys}
    parts = [np.asarray(obs[k], dtype=np.float32).reshape(-1) for k in spec.proprio_keys]
    out[PROPRIO_KEY] = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return out


def _maybe_fault(spec: WorkerSpec, episode: int, attempt: int, step: int) -> None:
    for f in spec.faults:
        if f.episode == episode and f.at_step == step and attempt <= f.attempts:
            if f.kind == "exit":
                os._exit(3)
            if f.kind == "hang":
                time.sleep(3600)
            raise RuntimeError(f"injected fault at episode {episode} step {step}")


def _worker_main(conn, worker_id: int, spec: WorkerSpec) -> None:
    """Worker loop. Messages in: ``("reset", episode, seed, attempt)``, ``("step", action)``, ``("close",)``.
    Out: ``("ready", info)`` once, then ``("obs", obs, reward, success, end)`` per reset/step, or
    ``("error", message)`` after which the worker exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    env = None
    try:
        import visual_dr3  # noqa: F401  (MUJOCO_GL before mujoco)
        from visual_dr3.envs.make import make_env_from_args, reset_env

        overrides = {"horizon": int(spec.horizon)} if spec.horizon else {}
        env = make_env_from_args(spec.env_args, seed=spec.env_seed, **overrides)
        first = reset_env(env, 0)
        info = {
            "pid": os.getpid(),
            "horizon": int(env.horizon),
            "obs_keys": sorted(first.keys()),
            "image_shapes": {k: tuple(np.shape(first[k])) for k in spec.image_keys if k in first},
            "image_dtypes": {k: str(np.asarray(first[k]).dtype) for k in spec.image_keys if k in first},
            "proprio_dim": int(sum(np.size(first[k]) for k in spec.proprio_keys if k in first)),
        }
        conn.send(("ready", info))
        episode, attempt, t = -1, 0, 0
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break  # the parent went away
            if msg[0] == "close":
                break
            if msg[0] == "reset":
                _, episode, seed, attempt = msg
                t = 0
                _maybe_fault(spec, episode, attempt, 0)
                obs = reset_env(env, seed)
                conn.send(("obs", _pack_obs(obs, spec), 0.0, False, False))
            elif msg[0] == "step":
                _maybe_fault(spec, episode, attempt, t + 1)
                obs, reward, done, _ = env.step(np.asarray(msg[1], dtype=np.float64))
                t += 1
                success = bool(env._check_success())
                end = success or bool(done) or t >= env.horizon
                conn.send(("obs", _pack_obs(obs, spec), float(reward), success, end))
            else:
                raise RuntimeError(f"unknown message {msg[0]!r}")
    except BaseException as e:  # report anything, then exit: the parent replaces this worker
        try:
            conn.send(("error", format_exc(e)))
        except Exception:
            pass
    finally:
        if env is not None:
            try:
                env.close()
            except Exception:
                pass
        try:
            conn.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------------------------------------
# parent side: the handle on one worker process and the episode it runs
# ----------------------------------------------------------------------------------------------------------

STARTING, IDLE, BUSY, HAS_OBS, DEAD = "starting", "idle", "busy", "has_obs", "dead"


@dataclass
class _Episode:
    """An episode of a run as the parent tracks it: its attempt, running return and length, frames."""

    index: int
    seed: int
    attempt: int = 1
    ret: float = 0.0
    length: int = 0
    success: bool = False
    t0: float = 0.0
    frames: Optional[list] = None
    errors: list = field(default_factory=list)


class _Worker:
    """The parent's handle on one worker process: its pipe, state and the episode it is running."""

    def __init__(self, ctx, slot: int, spec: WorkerSpec):
        self.slot = slot
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, slot, spec), daemon=True,
                                name=f"vdr3-eval-{slot}")
        self.proc.start()
        child.close()  # so that the parent sees EOF when the worker dies
        self.state = STARTING
        self.sent_at = time.monotonic()
        self.episode: Optional[_Episode] = None
        self.obs: Optional[dict] = None
        self.info: Optional[dict] = None
        self.last_cmd = ""

    def send(self, msg) -> None:
        self.last_cmd = msg[0]
        self.conn.send(msg)
        self.sent_at = time.monotonic()

    def kill(self) -> None:
        self.state = DEAD
        try:
            self.conn.close()
        except Exception:
            pass
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
        self.proc.join(5)

    def exit_description(self) -> str:
        self.proc.join(2)
        code = self.proc.exitcode
        if code is None:
            return "worker stopped answering"
        if code < 0:
            try:
                return f"worker process died ({signal.Signals(-code).name})"
            except ValueError:
                return f"worker process died (signal {-code})"
        return f"worker process exited with code {code}"
