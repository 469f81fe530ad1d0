"""One run of a rollout pool: the episode queue, the lock-step loop and the records it produces.

:class:`_Run` is what :meth:`~visual_dr3.evaluation.pool.RolloutPool.run` executes: it hands queued episodes
(:func:`episode_queue`: episode ``e`` starts from ``episode_seed(seed, e)``) to idle workers, collects every
reset/step reply, makes one batched policy call per lock step, and turns worker failures into a retry from
the same seed or a failed record (at most :data:`MAX_ATTEMPTS` attempts). It returns a :class:`RolloutRun` of
:class:`EpisodeResult` records. No torch here: the policy is any callable.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Callable, Collection, Optional, Sequence

import numpy as np

from visual_dr3.evaluation.stats import episode_seed
from visual_dr3.evaluation.workers import BUSY, DEAD, HAS_OBS, IDLE, STARTING, _Episode, format_exc, _Worker

MAX_ATTEMPTS = 2  # an episode is tried at most twice (one retry after a worker failure)


class RolloutError(RuntimeError):
    """The rollouts cannot go on (e.g. no worker can build the environment)."""


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


def episode_queue(episodes: Sequence[int], seed: int) -> collections.deque[_Episode]:
    """The queue of a run over ``episodes`` (indices, in order): episode ``e`` starts from
    ``episode_seed(seed, e)``, whichever worker (or DDP rank) runs it."""
    return collections.deque(_Episode(index=e, seed=episode_seed(seed, e)) for e in episodes)


class _Run:
    """One :meth:`RolloutPool.run <visual_dr3.evaluation.pool.RolloutPool.run>` over ``pool``'s workers.

    ``pool`` gives the workers (its ``workers`` list, whose lost entries are replaced in place), ``spec``,
    ``ctx``, ``horizon``, the timeouts, ``warn`` and ``_check_ready``. :meth:`execute` runs the episodes.
    """

    def __init__(self, pool, policy: Callable[[dict, list[int]], np.ndarray], episodes: list[int], seed: int,
                 video_episodes: Collection[int], video_dir: "str | os.PathLike | None", video_prefix: str,
                 progress: bool, desc: str, on_episode: Optional[Callable[[EpisodeResult], None]]):
        self.pool, self.policy = pool, policy
        self.video_episodes, self.video_dir, self.video_prefix = video_episodes, video_dir, video_prefix
        self.on_episode = on_episode
        self.queue = episode_queue(episodes, seed)
        self.results: dict[int, EpisodeResult] = {}
        self.warnings: list[str] = []
        self.start_policy = getattr(policy, "start_episode", None)
        self.end_policy = getattr(policy, "end_episode", None)
        # the first run's clock starts when the pool did: its "overall" figures include building the envs
        self.t_start = pool.started_at if not pool._ran else time.monotonic()
        pool._ran = True
        self.t_first_ready: Optional[float] = (
            time.monotonic() if any(w.state not in (STARTING, DEAD) for w in pool.workers) else None)
        self.start_failures = [0] * len(pool.workers)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(episodes), desc=desc, unit="ep", dynamic_ncols=True)

    @property
    def workers(self) -> list[_Worker]:
        return self.pool.workers

    def _running(self) -> bool:
        return bool(self.queue) or any(w.episode is not None for w in self.workers)

    # -- the loop ---------------------------------------------------------------------------------------
    def execute(self) -> RolloutRun:
        """Run every queued episode; the records sorted by episode, with the run's timings and warnings."""
        try:
            for slot, w in enumerate(self.workers):  # workers lost after an earlier run are replaced now
                if w.state == DEAD and self.queue:
                    self.workers[slot] = _Worker(self.pool.ctx, slot, self.pool.spec)
            for w in self.workers:
                if w.state == IDLE:
                    self.assign(w)
            while self._running():
                self.collect()
                if self.queue and not any(w.state in (STARTING, BUSY, HAS_OBS) for w in self.workers):
                    raise RolloutError("no rollout worker left to run the remaining episodes")
                self.act()
        finally:
            if self.bar is not None:
                self.bar.close()
        t_end = time.monotonic()
        ordered = [self.results[e] for e in sorted(self.results)]
        t_ready = self.t_first_ready if self.t_first_ready is not None else self.t_start
        return RolloutRun(results=ordered, seconds=t_end - self.t_start, rollout_seconds=t_end - t_ready,
                          warnings=self.warnings)

    def collect(self) -> None:
        """Collect every reset/step reply (lock step); workers still building their env join when ready, and
        are waited for only when nothing else can run."""
        while True:
            for w in [w for w in self.workers if w.state == STARTING]:
                if w.conn.poll() or not w.proc.is_alive():
                    self.receive(w)
            busy = [w for w in self.workers if w.state == BUSY]
            starting = [w for w in self.workers if w.state == STARTING]
            has_obs = any(w.state == HAS_OBS for w in self.workers)
            if not busy and (has_obs or not starting or not self.queue):
                return
            watch = busy + starting
            self._wait(watch)
            self._check_timeouts(watch)

    def _wait(self, watch: list[_Worker]) -> None:
        """Wait up to 1 s for a reply or an exit of the ``watch`` workers; handle what came."""
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
            self.receive(w)

    def _check_timeouts(self, watch: list[_Worker]) -> None:
        now = time.monotonic()
        step_timeout, start_timeout = self.pool.step_timeout, self.pool.start_timeout
        for w in watch:
            if w.state == BUSY and now - w.sent_at > step_timeout:
                w.proc.kill()
                self.fail(w, f"no answer within {step_timeout:.0f} s (killed)")
            elif w.state == STARTING and now - w.sent_at > start_timeout:
                w.proc.kill()
                self.fail(w, f"environment not built within {start_timeout:.0f} s (killed)")

    def act(self) -> None:
        """One batched policy call for every worker holding an observation; each gets its action."""
        acting = [w for w in self.workers if w.state == HAS_OBS]
        if not acting:
            return
        batch = {k: np.stack([w.obs[k] for w in acting]) for k in acting[0].obs}
        actions = np.asarray(self.policy(batch, [w.episode.index for w in acting]), dtype=np.float32)
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
                self.fail(w, f"{w.exit_description()} ({type(e).__name__})")

    # -- messages ---------------------------------------------------------------------------------------
    def receive(self, w: _Worker) -> None:
        """Read one message of ``w`` (if any) and handle it; a closed pipe or dead process is a failure."""
        try:
            if w.conn.poll():
                msg = w.conn.recv()
            elif not w.proc.is_alive():
                raise EOFError
            else:
                return
        except (EOFError, OSError, ConnectionError):
            self.fail(w, w.exit_description())
            return
        self.handle(w, msg)

    def handle(self, w: _Worker, msg) -> None:
        kind = msg[0]
        if kind == "error":
            self.fail(w, msg[1])
        elif kind == "ready":
            self._on_ready(w, msg[1])
        elif kind != "obs":
            self.fail(w, f"unexpected message {kind!r}")
        else:
            _, obs, reward, success, end = msg
            self._on_obs(w, obs, reward, success, end)

    def _on_ready(self, w: _Worker, info: dict) -> None:
        pool = self.pool
        w.info = info
        if not pool._checked:
            pool._check_ready(w)
            pool._checked = True
        elif w.info["horizon"] != pool.horizon:
            raise RolloutError(f"workers disagree on the horizon ({w.info['horizon']} vs {pool.horizon})")
        self.start_failures[w.slot] = 0
        if self.t_first_ready is None:
            self.t_first_ready = time.monotonic()
        w.state = IDLE
        self.assign(w)

    def _on_obs(self, w: _Worker, obs: dict, reward: float, success: bool, end: bool) -> None:
        ep = w.episode
        if w.last_cmd == "step":
            ep.length += 1
            ep.ret += reward
            ep.success = ep.success or success
        if ep.frames is not None:
            ep.frames.append([obs[k] for k in self.pool.spec.image_keys])
        if end:
            w.episode, w.obs = None, None
            w.state = IDLE
            self.finish(ep)
            self.assign(w)
        else:
            w.obs = obs
            w.state = HAS_OBS

    # -- episodes ---------------------------------------------------------------------------------------
    def assign(self, w: _Worker) -> None:
        """Start the next queued episode on ``w`` if it is idle."""
        if not self.queue or w.state != IDLE:
            return
        ep = self.queue.popleft()
        ep.ret, ep.length, ep.success, ep.t0 = 0.0, 0, False, time.monotonic()
        ep.frames = [] if ep.index in self.video_episodes else None
        w.episode = ep
        if self.start_policy is not None:
            self.start_policy(ep.index, ep.seed)
        w.state = BUSY
        try:
            w.send(("reset", ep.index, ep.seed, ep.attempt))
        except (BrokenPipeError, OSError) as e:
            self.fail(w, f"{w.exit_description()} ({type(e).__name__})")

    def fail(self, w: _Worker, err: str) -> None:
        """``w`` failed: kill it, retry or record its episode, and start a fresh worker in its slot if needed."""
        ep = w.episode
        w.kill()
        w.episode, w.obs = None, None
        if ep is None:  # failed while starting (building its env)
            self.start_failures[w.slot] += 1
            if self.start_failures[w.slot] >= MAX_ATTEMPTS:
                raise RolloutError(f"rollout worker could not start its environment twice: {err}")
            self.emit(f"warning: eval worker {w.slot} failed to start ({err}); starting a fresh one")
        else:
            self._fail_episode(w, ep, err)
        if self._running():
            self.workers[w.slot] = _Worker(self.pool.ctx, w.slot, self.pool.spec)

    def _fail_episode(self, w: _Worker, ep: _Episode, err: str) -> None:
        ep.errors.append(err)
        if self.end_policy is not None:
            self.end_policy(ep.index)
        if ep.attempt < MAX_ATTEMPTS:
            self.emit(f"warning: eval episode {ep.index} (seed {ep.seed}) failed in worker {w.slot} at step "
                      f"{ep.length}: {err}; retrying it with a fresh worker")
            ep.attempt += 1
            self.queue.appendleft(ep)
        else:
            self.emit(f"warning: eval episode {ep.index} (seed {ep.seed}) failed again in worker {w.slot} at "
                      f"step {ep.length}: {err}; recorded as failed")
            self.finish(ep, error="; ".join(ep.errors))

    def finish(self, ep: _Episode, error: Optional[str] = None) -> None:
        """Record ``ep`` (with its video, when asked for) and tell the policy, ``on_episode`` and the bar."""
        res = EpisodeResult(episode=ep.index, seed=ep.seed, success=ep.success and error is None,
                            ret=ep.ret, length=ep.length, attempts=ep.attempt, error=error,
                            seconds=round(time.monotonic() - ep.t0, 3))
        if error is None and ep.frames is not None:
            self._write_video(ep, res)
        ep.frames = None
        self.results[ep.index] = res
        if self.end_policy is not None:
            self.end_policy(ep.index)
        if self.on_episode is not None:
            self.on_episode(res)
        if self.bar is not None:
            done = len(self.results)
            succ = sum(r.success for r in self.results.values())
            self.bar.set_postfix_str(f"success {succ}/{done}", refresh=False)
            self.bar.update(1)

    def _write_video(self, ep: _Episode, res: EpisodeResult) -> None:
        from visual_dr3.evaluation.video import video_name, write_episode_video

        path = Path(self.video_dir) / video_name(ep.index, res.success, self.video_prefix)
        try:
            write_episode_video(path, ep.frames, res.success, horizon=self.pool.horizon)
            res.video = str(path)
        except Exception as e:  # a video is a by-product: report, keep the episode
            self.emit(f"warning: eval episode {ep.index}: video not written ({format_exc(e)})")

    def emit(self, line: str) -> None:
        """A warning line: kept in the run's warnings and passed to the pool's ``warn`` (above the bar)."""
        self.warnings.append(line)
        if self.bar is not None:
            self.bar.clear()
        self.pool.warn(line)
        if self.bar is not None:
            self.bar.refresh()
