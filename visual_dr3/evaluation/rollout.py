"""Parallel evaluation rollouts: one env per worker process, batched policy inference in the parent.

Design
------
- A :class:`RolloutPool` starts ``workers`` processes (multiprocessing ``spawn`` context, so every worker
  has its own fresh MuJoCo/EGL context; ``MUJOCO_GL`` is set by ``import visual_dr3`` before the worker
  imports mujoco). Each worker builds its env once (1.5-3 s, ``hard_reset=False``) and then runs any
  number of episodes: the pool is reused across episodes, and the training callback keeps one pool for the
  whole run.
- Lock step: every iteration the parent gathers the current observation of every worker that has an
  episode running, runs ONE batched policy call (``policy(obs_batch, episodes) -> actions``) and sends
  each worker its action through a pipe. Workers that finish an episode get the next one right away
  (their reset overlaps with the other workers' steps being collected).
- Episode ``i`` of a run with seed ``S`` starts from seed :func:`~visual_dr3.evaluation.stats.episode_seed`
  ``(S, i)`` (object placement and robot joint noise depend on that alone), whatever the number of workers.
  robosuite also draws some things when it *builds* an env (Lift's cube size is sampled from ``env.rng`` at
  model load, and ``hard_reset=False`` keeps that model): every worker builds its env with the same
  ``env_seed`` (:func:`env_seed_for` of the run seed), so all workers hold identical envs and an episode's
  whole trajectory is a function of its seed and the policy, not of which worker ran it or what ran before.
- An episode ends at success (``env._check_success()``) or at the env's horizon. Records: success, return
  (sum of the sparse reward), length (env steps), seed, attempts, error.
- A worker that dies or raises is reported (a ``warning:`` line naming the episode, its seed and the
  error), replaced by a fresh worker, and its episode retried once from the same seed; a second failure
  records the episode as failed (``success: false`` and ``error``), never silently dropped.

Workers import numpy and robosuite only (no torch). The module is safe to import in a worker.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any, Callable, Collection, Optional, Sequence

import numpy as np

from visual_dr3.errors import UserError
from visual_dr3.evaluation.stats import env_seed_for, episode_seed

PROPRIO_KEY = "proprio"
START_METHOD = "spawn"
MAX_ATTEMPTS = 2  # an episode is tried at most twice (one retry after a worker failure)


class RolloutError(RuntimeError):
    """The rollouts cannot go on (e.g. no worker can build the environment)."""


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


@dataclass
class EpisodeResult:
    """One episode's record (``to_dict`` gives the JSON form, with ``return`` as the key)."""

    episode: int
    seed: int
    success: bool = False
    ret: float = 0.0
    length: int = 0
    attempts: int = 1
    error: Optional[str] = None
    seconds: float = 0.0
    video: Optional[str] = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["return"] = d.pop("ret")
        return {k: d[k] for k in ("episode", "seed", "success", "return", "length", "attempts", "error",
                                  "seconds", "video")}


# ----------------------------------------------------------------------------------------------------------
# worker process
# ----------------------------------------------------------------------------------------------------------

def _format_exc(e: BaseException) -> str:
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
            conn.send(("error", _format_exc(e)))
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
# parent side
# ----------------------------------------------------------------------------------------------------------

STARTING, IDLE, BUSY, HAS_OBS, DEAD = "starting", "idle", "busy", "has_obs", "dead"


@dataclass
class _Episode:
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


@dataclass
class RolloutRun:
    """Outcome of :meth:`RolloutPool.run`: per-episode records (sorted by episode) and timings."""

    results: list[EpisodeResult]
    seconds: float  # wall time of the run, including waiting for workers to start
    rollout_seconds: float  # wall time after the first worker was ready
    warnings: list[str]

    @property
    def records(self) -> list[dict]:
        return [r.to_dict() for r in self.results]


def _default_warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class RolloutPool:
    """``workers`` env processes; :meth:`run` evaluates a policy on a list of episode indices.

    ``env_args``: robomimic env_args (from the checkpoint); ``image_keys``/``proprio_keys``: what the policy
    reads (proprio = those keys concatenated in order, float32). ``horizon`` overrides the env's horizon.
    ``env_seed``: seed of env construction, the same in every worker (see the module docstring; use
    :func:`env_seed_for` of the run seed). ``expect_image_size``/``expect_proprio_dim``: checked against the
    first observation of every worker (a mismatch is a :class:`UserError`). ``faults``: the :class:`FaultSpec` test hook.
    Use as a context manager (or call :meth:`close`); workers are daemonic, so they also die with the parent.
    """

    def __init__(self, env_args: dict, image_keys: Sequence[str], proprio_keys: Sequence[str], workers: int = 1,
                 horizon: Optional[int] = None, env_seed: int = 0, expect_image_size: Optional[int] = None,
                 expect_proprio_dim: Optional[int] = None, faults: Sequence[FaultSpec] = (),
                 step_timeout: float = 120.0, start_timeout: float = 600.0,
                 warn: Callable[[str], None] = _default_warn):
        if int(workers) < 1:
            raise UserError(f"--workers: got {workers!r}; expected a positive integer")
        self.spec = WorkerSpec(env_args=env_args, image_keys=tuple(image_keys), proprio_keys=tuple(proprio_keys),
                               horizon=int(horizon) if horizon else None, env_seed=int(env_seed),
                               faults=tuple(faults))
        self.num_workers = int(workers)
        self.expect_image_size = expect_image_size
        self.expect_proprio_dim = expect_proprio_dim
        self.step_timeout, self.start_timeout = float(step_timeout), float(start_timeout)
        self.warn = warn
        self.ctx = mp.get_context(START_METHOD)
        self.workers: list[_Worker] = []
        self.horizon: Optional[int] = None
        self._checked = False
        self._closed = False
        self._ran = False
        self.started_at = time.monotonic()
        self.workers = [_Worker(self.ctx, i, self.spec) for i in range(self.num_workers)]

    # -- lifecycle --------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self.workers:
            if w.state != DEAD:
                try:
                    w.conn.send(("close",))
                except Exception:
                    pass
        deadline = time.monotonic() + 10
        for w in self.workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            w.kill()

    def __enter__(self) -> "RolloutPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort
        try:
            self.close()
        except Exception:
            pass

    # -- checks -----------------------------------------------------------------------------------------
    def _check_ready(self, w: _Worker) -> None:
        info = w.info or {}
        missing = [k for k in self.spec.image_keys + self.spec.proprio_keys if k not in info.get("obs_keys", [])]
        if missing:
            raise UserError(f"env observations lack key(s) {', '.join(missing)} the policy reads "
                            f"(env has: {', '.join(info.get('obs_keys', []))})")
        for k, shape in info["image_shapes"].items():
            if len(shape) != 3 or shape[2] != 3 or info["image_dtypes"][k] != "uint8":
                raise UserError(f"env image '{k}': shape {shape} {info['image_dtypes'][k]}; expected (H, W, 3) uint8")
            if self.expect_image_size is not None and (shape[0], shape[1]) != (self.expect_image_size,) * 2:
                raise UserError(f"env image '{k}' is {shape[0]}x{shape[1]} but the policy was trained on "
                                f"{self.expect_image_size}x{self.expect_image_size} images")
        if self.expect_proprio_dim is not None and info["proprio_dim"] != self.expect_proprio_dim:
            raise UserError(f"env proprio ({'+'.join(self.spec.proprio_keys)}) has {info['proprio_dim']} numbers "
                            f"but the policy expects {self.expect_proprio_dim}")
        self.horizon = info["horizon"]

    # -- the run ----------------------------------------------------------------------------------------
    def run(self, policy: Callable[[dict, list[int]], np.ndarray], episodes: Sequence[int] | int, seed: int = 0,
            video_episodes: Collection[int] = (), video_dir: "str | os.PathLike | None" = None,
            video_prefix: str = "", progress: bool = False, desc: str = "eval",
            on_episode: Optional[Callable[[EpisodeResult], None]] = None) -> RolloutRun:
        """Run the episodes ``episodes`` (indices; an int ``n`` means ``range(n)``) and return their records.

        ``policy(obs, episodes) -> actions``: ``obs`` maps each image key to uint8 ``(B, H, W, 3)`` and
        ``"proprio"`` to float32 ``(B, P)``; ``episodes`` are the episode indices of the rows; returns
        ``(B, A)`` actions. If the policy has ``start_episode(episode, seed)`` it is called at every
        (re)start of an episode. Episodes in ``video_episodes`` are written to ``video_dir`` as mp4.
        """
        if self._closed:
            raise RuntimeError("RolloutPool.run: the pool is closed")
        if isinstance(episodes, int):
            episodes = range(episodes)
        episodes = [int(e) for e in episodes]
        video_episodes = set(int(e) for e in video_episodes) if video_dir is not None else set()
        queue: collections.deque[_Episode] = collections.deque(
            _Episode(index=e, seed=episode_seed(seed, e)) for e in episodes)
        results: dict[int, EpisodeResult] = {}
        warnings: list[str] = []
        start_policy = getattr(policy, "start_episode", None)
        end_policy = getattr(policy, "end_episode", None)
        # the first run's clock starts when the pool did: its "overall" figures include building the envs
        t_start = self.started_at if not self._ran else time.monotonic()
        self._ran = True
        t_first_ready: Optional[float] = (time.monotonic() if any(w.state not in (STARTING, DEAD) for w in self.workers)
                                          else None)
        start_failures = [0] * len(self.workers)

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(episodes), desc=desc, unit="ep", dynamic_ncols=True)

        def emit(line: str) -> None:
            warnings.append(line)
            if bar is not None:
                bar.clear()
            self.warn(line)
            if bar is not None:
                bar.refresh()

        def finish(ep: _Episode, error: Optional[str] = None) -> None:
            res = EpisodeResult(episode=ep.index, seed=ep.seed, success=ep.success and error is None,
                                ret=ep.ret, length=ep.length, attempts=ep.attempt, error=error,
                                seconds=round(time.monotonic() - ep.t0, 3))
            if error is None and ep.frames is not None:
                from visual_dr3.evaluation.video import video_name, write_episode_video

                path = Path(video_dir) / video_name(ep.index, res.success, video_prefix)
                try:
                    write_episode_video(path, ep.frames, res.success, horizon=self.horizon)
                    res.video = str(path)
                except Exception as e:  # a video is a by-product: report, keep the episode
                    emit(f"warning: eval episode {ep.index}: video not written ({_format_exc(e)})")
            ep.frames = None
            results[ep.index] = res
            if end_policy is not None:
                end_policy(ep.index)
            if on_episode is not None:
                on_episode(res)
            if bar is not None:
                done = len(results)
                succ = sum(r.success for r in results.values())
                bar.set_postfix_str(f"success {succ}/{done}", refresh=False)
                bar.update(1)

        def assign(w: _Worker) -> None:
            if not queue or w.state != IDLE:
                return
            ep = queue.popleft()
            ep.ret, ep.length, ep.success, ep.t0 = 0.0, 0, False, time.monotonic()
            ep.frames = [] if ep.index in video_episodes else None
            w.episode = ep
            if start_policy is not None:
                start_policy(ep.index, ep.seed)
            w.state = BUSY
            try:
                w.send(("reset", ep.index, ep.seed, ep.attempt))
            except (BrokenPipeError, OSError) as e:
                fail(w, f"{w.exit_description()} ({type(e).__name__})")

        def fail(w: _Worker, err: str) -> None:
            ep = w.episode
            w.kill()
            w.episode, w.obs = None, None
            if ep is None:  # failed while starting (building its env)
                start_failures[w.slot] += 1
                if start_failures[w.slot] >= MAX_ATTEMPTS:
                    raise RolloutError(f"rollout worker could not start its environment twice: {err}")
                emit(f"warning: eval worker {w.slot} failed to start ({err}); starting a fresh one")
            else:
                ep.errors.append(err)
                if end_policy is not None:
                    end_policy(ep.index)
                if ep.attempt < MAX_ATTEMPTS:
                    emit(f"warning: eval episode {ep.index} (seed {ep.seed}) failed in worker {w.slot} at step "
                         f"{ep.length}: {err}; retrying it with a fresh worker")
                    ep.attempt += 1
                    queue.appendleft(ep)
                else:
                    emit(f"warning: eval episode {ep.index} (seed {ep.seed}) failed again in worker {w.slot} at "
                         f"step {ep.length}: {err}; recorded as failed")
                    finish(ep, error="; ".join(ep.errors))
            if queue or any(x.episode is not None for x in self.workers):
                self.workers[w.slot] = _Worker(self.ctx, w.slot, self.spec)

        def handle(w: _Worker, msg) -> None:
            nonlocal t_first_ready
            kind = msg[0]
            if kind == "error":
                fail(w, msg[1])
                return
            if kind == "ready":
                w.info = msg[1]
                if not self._checked:
                    self._check_ready(w)
                    self._checked = True
                elif w.info["horizon"] != self.horizon:
                    raise RolloutError(f"workers disagree on the horizon ({w.info['horizon']} vs {self.horizon})")
                start_failures[w.slot] = 0
                if t_first_ready is None:
                    t_first_ready = time.monotonic()
                w.state = IDLE
                assign(w)
                return
            if kind != "obs":
                fail(w, f"unexpected message {kind!r}")
                return
            _, obs, reward, success, end = msg
            ep = w.episode
            if w.last_cmd == "step":
                ep.length += 1
                ep.ret += reward
                ep.success = ep.success or success
            if ep.frames is not None:
                ep.frames.append([obs[k] for k in self.spec.image_keys])
            if end:
                w.episode, w.obs = None, None
                w.state = IDLE
                finish(ep)
                assign(w)
            else:
                w.obs = obs
                w.state = HAS_OBS

        try:
            for slot, w in enumerate(self.workers):  # workers lost after an earlier run are replaced now
                if w.state == DEAD and queue:
                    self.workers[slot] = _Worker(self.ctx, slot, self.spec)
            for w in self.workers:
                if w.state == IDLE:
                    assign(w)
            while queue or any(w.episode is not None for w in self.workers):
                # 1) collect every reset/step reply (lock step); workers still building their env join when
                #    ready, and are waited for only when nothing else can run
                while True:
                    for w in [w for w in self.workers if w.state == STARTING]:
                        if w.conn.poll() or not w.proc.is_alive():
                            self._receive(w, handle, fail)
                    busy = [w for w in self.workers if w.state == BUSY]
                    starting = [w for w in self.workers if w.state == STARTING]
                    has_obs = any(w.state == HAS_OBS for w in self.workers)
                    if not busy and (has_obs or not starting or not queue):
                        break
                    watch = busy + starting
                    handles = {}
                    for w in watch:
                        handles[w.conn] = w
                        handles[w.proc.sentinel] = w
                    seen = set()
                    for h in mp_wait(list(handles), timeout=1.0):
                        w = handles[h]
                        if id(w) in seen or w.state == DEAD:
                            continue
                        seen.add(id(w))
                        self._receive(w, handle, fail)
                    now = time.monotonic()
                    for w in watch:
                        if w.state == BUSY and now - w.sent_at > self.step_timeout:
                            w.proc.kill()
                            fail(w, f"no answer within {self.step_timeout:.0f} s (killed)")
                        elif w.state == STARTING and now - w.sent_at > self.start_timeout:
                            w.proc.kill()
                            fail(w, f"environment not built within {self.start_timeout:.0f} s (killed)")
                if queue and not any(w.state in (STARTING, BUSY, HAS_OBS) for w in self.workers):
                    raise RolloutError("no rollout worker left to run the remaining episodes")
                # 2) act: one batched policy call for every worker holding an observation
                acting = [w for w in self.workers if w.state == HAS_OBS]
                if not acting:
                    continue
                batch = {k: np.stack([w.obs[k] for w in acting]) for k in acting[0].obs}
                actions = np.asarray(policy(batch, [w.episode.index for w in acting]), dtype=np.float32)
                if actions.ndim != 2 or actions.shape[0] != len(acting):
                    raise RolloutError(f"policy returned actions of shape {actions.shape} for {len(acting)} "
                                       f"observations")
                actions = np.clip(actions, -1.0, 1.0)
                for w, a in zip(acting, actions):
                    try:
                        w.send(("step", a))
                        w.state = BUSY
                    except (BrokenPipeError, OSError) as e:
                        w.state = BUSY
                        fail(w, f"{w.exit_description()} ({type(e).__name__})")
        finally:
            if bar is not None:
                bar.close()
        t_end = time.monotonic()
        ordered = [results[e] for e in sorted(results)]
        return RolloutRun(results=ordered, seconds=t_end - t_start,
                          rollout_seconds=t_end - (t_first_ready if t_first_ready is not None else t_start),
                          warnings=warnings)

    @staticmethod
    def _receive(w: _Worker, handle, fail) -> None:
        try:
            if w.conn.poll():
                msg = w.conn.recv()
            elif not w.proc.is_alive():
                raise EOFError
            else:
                return
        except (EOFError, OSError, ConnectionError):
            fail(w, w.exit_description())
            return
        handle(w, msg)


def run_rollouts(env_args: dict, policy, episodes: Sequence[int] | int, image_keys: Sequence[str],
                 proprio_keys: Sequence[str], workers: int = 1, seed: int = 0, horizon: Optional[int] = None,
                 **run_kwargs: Any) -> RolloutRun:
    """One-shot helper: a :class:`RolloutPool` for these episodes, closed afterwards.

    ``run_kwargs`` go to :class:`RolloutPool` (``expect_image_size``, ``expect_proprio_dim``, ``faults``,
    ``step_timeout``, ``warn``) or to :meth:`RolloutPool.run` (``video_episodes``, ``video_dir``, ``progress``...).
    """
    run_kwargs.setdefault("env_seed", env_seed_for(seed))
    pool_keys = {"env_seed", "expect_image_size", "expect_proprio_dim", "faults", "step_timeout", "start_timeout",
                 "warn"}
    pool_kw = {k: v for k, v in run_kwargs.items() if k in pool_keys}
    run_kw = {k: v for k, v in run_kwargs.items() if k not in pool_keys}
    n = episodes if isinstance(episodes, int) else len(episodes)
    with RolloutPool(env_args, image_keys, proprio_keys, workers=max(1, min(int(workers), max(1, n))),
                     horizon=horizon, **pool_kw) as pool:
        return pool.run(policy, episodes, seed=seed, **run_kw)


# ----------------------------------------------------------------------------------------------------------
# the policy side: a DR3CQL module as a batched policy (torch imported lazily: workers never need it)
# ----------------------------------------------------------------------------------------------------------

class TorchPolicy:
    """Wraps a module with ``act(obs, deterministic, generator)`` (``DR3CQL``) as a pool policy.

    Images go to the module's device as uint8 ``(B, 3, H, W)`` (a channels-last view of the ``(B, H, W, 3)``
    batch), proprio as float32 ``(B, P)``: the format of training batches. ``deterministic=True`` takes
    ``tanh(mean)`` through ``module.act``. Stochastic actions use one noise generator *per episode*, seeded
    by the episode's seed, so an episode's actions do not depend on which other episodes share its batch
    (i.e. on the number of workers): the module's actor gives ``(mean, log_std)`` and the action is
    ``tanh(mean + exp(log_std) * eps)`` with ``eps`` from the episode's generator -- the same distribution as
    ``act(deterministic=False)``. The caller puts the module in eval mode.
    """

    def __init__(self, module, image_keys: Sequence[str], deterministic: bool = True, device=None):
        import torch

        self.torch = torch
        self.module = module
        self.image_keys = list(image_keys)
        self.deterministic = bool(deterministic)
        self.device = torch.device(device) if device is not None else next(module.parameters()).device
        self._generators: dict[int, Any] = {}
        self._per_episode = not self.deterministic and hasattr(module, "acting_nets")
        self._batch_generator = None

    def start_episode(self, episode: int, seed: int) -> None:
        if not self.deterministic:
            self._generators[episode] = self.torch.Generator().manual_seed(int(seed) ^ 0x5EED)

    def end_episode(self, episode: int) -> None:
        self._generators.pop(episode, None)

    def to_tensors(self, obs: dict) -> dict:
        torch = self.torch
        out = {k: torch.from_numpy(obs[k]).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
               for k in self.image_keys}
        out[PROPRIO_KEY] = torch.from_numpy(np.ascontiguousarray(obs[PROPRIO_KEY], dtype=np.float32)).to(self.device)
        return out

    def __call__(self, obs: dict, episodes: list[int]) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            t = self.to_tensors(obs)
            if self.deterministic:
                a = self.module.act(t, deterministic=True)
            elif self._per_episode:
                m = self.module
                enc, actor = m.acting_nets()
                mean, log_std = actor(enc(t))
                eps = torch.stack([torch.randn(mean.shape[-1], generator=self._generators[e]) for e in episodes])
                eps = eps.to(device=mean.device, dtype=mean.dtype)
                a = torch.tanh(mean + log_std.exp() * eps)
                if hasattr(m, "full_action"):  # the env's action: dims held fixed take their dataset value
                    a = m.full_action(a)
            else:
                if self._batch_generator is None:
                    self._batch_generator = torch.Generator(device=self.device).manual_seed(0)
                a = self.module.act(t, deterministic=False, generator=self._batch_generator)
        return a.float().cpu().numpy()
