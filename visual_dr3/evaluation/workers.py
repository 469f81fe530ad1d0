"""Rollout worker processes: the env loop each worker runs, and the parent's handle on one worker.

A worker (:func:`_worker_main`, started by :class:`_Worker` in a ``spawn`` process) builds its env(s) once from
a :class:`WorkerSpec`, then answers ``reset``/``step`` messages with packed observations (images as uint8,
the proprio keys concatenated into one float32 ``"proprio"`` vector) until it is told to close; any failure
is sent back as one ``("error", message)`` line before it exits. :class:`FaultSpec` is the test hook that
makes a worker fail on purpose. The protocol and the pool that drives it are described in
:mod:`visual_dr3.evaluation.rollout`. Workers import numpy and robosuite only (no torch): the module is safe
to import in a worker (a worker imports torch when it unpickles a policy of its own).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import sys
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
    envs: int = 1  # envs per worker process, stepped in turn (one steps while the parent acts for the other)
    policy_in_workers: bool = False  # each worker acts with its own copy of the policy (sent per run)


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


class _RenderClock:
    """Seconds spent in ``sim.render`` (the camera observations) of one env: the worker reports them apart from
    the rest of ``env.step`` (physics, controller, other observables), for the benchmark's breakdown."""

    def __init__(self, env):
        self.seconds = 0.0
        self.attach(env)

    def attach(self, env) -> None:
        sim = env.sim
        if getattr(sim, "_vdr3_render_clock", None) is self:
            return
        render = type(sim).render.__get__(sim)

        def timed_render(*args, **kwargs):
            t = time.perf_counter()
            try:
                return render(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t

        sim.render = timed_render
        sim._vdr3_render_clock = self


def _activate(env) -> None:
    """Make ``env``'s offscreen GL context current: robosuite renders into whichever context is current, so a
    worker holding several envs switches before stepping one."""
    ctx = getattr(env.sim, "_render_context_offscreen", None)
    if ctx is not None:
        ctx.gl_ctx.make_current()


@dataclass
class _LaneState:
    """Worker-side state of one env of a worker: the episode it runs, the attempt and the step count."""

    env: object
    clock: _RenderClock
    episode: int = -1
    attempt: int = 0
    t: int = 0
    digest: Optional["_Digest"] = None


def _batch_of_one(obs: dict) -> dict:
    return {k: v[None] for k, v in obs.items()}


class _Digest:
    """Fingerprint of everything an episode's env returned (every observation, images included, reward and
    end flag in order): equal digests mean the same trajectory, pixel for pixel, whoever ran it."""

    def __init__(self):
        self.h = hashlib.blake2b(digest_size=12)

    def add(self, obs: dict, reward: float, end: bool) -> None:
        for k in sorted(obs):
            self.h.update(np.ascontiguousarray(obs[k]).tobytes())
        self.h.update(np.float64(reward).tobytes() + bytes([end]))

    def hex(self) -> str:
        return self.h.hexdigest()


def _worker_main(conn, worker_id: int, spec: WorkerSpec) -> None:
    """Worker loop over ``spec.envs`` envs ("lanes"). Messages in: ``("policy", pickled)`` (the policy
    this worker acts with from now on), ``("reset", lane, episode, seed, attempt[, frames])``,
    ``("step", lane, action)``, ``("close",)``, answered in order. Out: ``("ready", info)`` once, then
    ``("obs", lane, obs, reward, success, end, (env_seconds, render_seconds, policy_seconds), digest)`` per
    reset/step (``digest``: the episode's :class:`_Digest` on its last message, else None), or
    ``("error", message)`` after which the worker exits. With two lanes the worker steps one env while the
    parent computes the other's action. With a policy of its own the worker runs each episode it is given
    to its end, acting itself, and reports every step (``obs`` is None unless ``frames``: the parent
    only counts, and keeps frames for videos)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    lanes: list[_LaneState] = []
    policy = None
    try:
        import visual_dr3  # noqa: F401  (MUJOCO_GL before mujoco)
        from visual_dr3.envs.make import make_env_from_args, reset_env

        overrides = {"horizon": int(spec.horizon)} if spec.horizon else {}
        for _ in range(spec.envs):
            env = make_env_from_args(spec.env_args, seed=spec.env_seed, **overrides)
            lanes.append(_LaneState(env=env, clock=_RenderClock(env)))
        many = len(lanes) > 1
        env = lanes[0].env
        if many:
            _activate(env)
        first = reset_env(env, 0)
        info = {
            "pid": os.getpid(),
            "horizon": int(env.horizon),
            "obs_keys": sorted(first.keys()),
            "image_shapes": {k: tuple(np.shape(first[k])) for k in spec.image_keys if k in first},
            "image_dtypes": {k: str(np.asarray(first[k]).dtype) for k in spec.image_keys if k in first},
            "proprio_dim": int(sum(np.size(first[k]) for k in spec.proprio_keys if k in first)),
            "envs": len(lanes),
        }
        conn.send(("ready", info))
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break  # the parent went away
            if msg[0] == "close":
                break
            if msg[0] == "policy":
                policy = pickle.loads(msg[1])
                if "torch" in sys.modules:  # one thread per worker: the workers share the cores
                    sys.modules["torch"].set_num_threads(1)
                continue
            if msg[0] not in ("reset", "step"):
                raise RuntimeError(f"unknown message {msg[0]!r}")
            lane = lanes[msg[1]]
            env = lane.env
            if many:
                _activate(env)
            lane.clock.attach(env)
            r0 = lane.clock.seconds
            t0 = time.perf_counter()
            if msg[0] == "reset":
                _, _, lane.episode, seed, lane.attempt = msg[:5]
                frames = bool(msg[5]) if len(msg) > 5 else True
                lane.t = 0
                lane.digest = _Digest()
                _maybe_fault(spec, lane.episode, lane.attempt, 0)
                obs, reward, success, end = reset_env(env, seed), 0.0, False, False
            else:
                obs, reward, success, end = _step(env, lane, spec, msg[2])
            render = lane.clock.seconds - r0
            packed = _pack_obs(obs, spec)
            lane.digest.add(packed, reward, end)
            timing = (time.perf_counter() - t0 - render, render, 0.0)
            conn.send(("obs", msg[1], packed if policy is None or frames else None, float(reward), success, end,
                       timing, lane.digest.hex() if end else None))
            if policy is None or msg[0] != "reset":
                continue
            start, finish = getattr(policy, "start_episode", None), getattr(policy, "end_episode", None)
            if start is not None:
                start(lane.episode, seed)
            while not end:  # the episode, acted by this worker's own policy
                t0 = time.perf_counter()
                action = np.clip(np.asarray(policy(_batch_of_one(packed), [lane.episode]), np.float32)[0], -1, 1)
                r0, t1 = lane.clock.seconds, time.perf_counter()
                obs, reward, success, end = _step(env, lane, spec, action)
                render = lane.clock.seconds - r0
                packed = _pack_obs(obs, spec)
                lane.digest.add(packed, reward, end)
                timing = (time.perf_counter() - t1 - render, render, t1 - t0)
                conn.send(("obs", msg[1], packed if frames else None, float(reward), success, end, timing,
                           lane.digest.hex() if end else None))
            if finish is not None:
                finish(lane.episode)
    except BaseException as e:  # report anything, then exit: the parent replaces this worker
        try:
            conn.send(("error", format_exc(e)))
        except Exception:
            pass
    finally:
        for lane in lanes:
            try:
                lane.env.close()
            except Exception:
                pass
        try:
            conn.close()
        except Exception:
            pass


def _step(env, lane: _LaneState, spec: WorkerSpec, action) -> tuple[dict, float, bool, bool]:
    """One env step of ``lane``'s episode: (obs, reward, success, end)."""
    _maybe_fault(spec, lane.episode, lane.attempt, lane.t + 1)
    obs, reward, done, _ = env.step(np.asarray(action, dtype=np.float64))
    lane.t += 1
    success = bool(env._check_success())
    return obs, float(reward), success, success or bool(done) or lane.t >= env.horizon


# ----------------------------------------------------------------------------------------------------------
# parent side: the handle on one worker process and the episode it runs
# ----------------------------------------------------------------------------------------------------------

STARTING, IDLE, BUSY, HAS_OBS, DEAD = "starting", "idle", "busy", "has_obs", "dead"
READY = "ready"  # a worker whose envs are built


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
    digest: Optional[str] = None


class _Lane:
    """The parent's view of one env of a worker: its state (``starting`` until the worker is ready, then
    ``idle``/``busy``/``has_obs``; ``dead`` with its worker), the episode it runs and its last observation."""

    def __init__(self, worker: "_Worker", index: int):
        self.worker, self.index = worker, index
        self.state = STARTING
        self.episode: Optional[_Episode] = None
        self.obs: Optional[dict] = None
        self.last_cmd = ""
        self.sent_at = time.monotonic()

    def send(self, msg) -> None:
        """Send ``(kind, *args)`` to this lane's env (the worker reads the lane index after the kind)."""
        self.last_cmd = msg[0]
        self.worker.conn.send((msg[0], self.index, *msg[1:]))
        self.sent_at = time.monotonic()


class _Worker:
    """The parent's handle on one worker process: its pipe, state (``starting``, ``ready``, ``dead``) and its
    :class:`_Lane` per env."""

    def __init__(self, ctx, slot: int, spec: WorkerSpec):
        self.slot = slot
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, slot, spec), daemon=True,
                                name=f"vdr3-eval-{slot}")
        self.proc.start()
        child.close()  # so that the parent sees EOF when the worker dies
        self.state = STARTING
        self.sent_at = time.monotonic()
        self.info: Optional[dict] = None
        self.policy_of = None  # the run whose policy this worker holds (policy in the workers)
        self.lanes = [_Lane(self, i) for i in range(spec.envs)]

    def kill(self) -> None:
        self.state = DEAD
        for lane in self.lanes:
            lane.state = DEAD
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
