"""One run of a rollout pool: the episode queue, the loop that steps the envs and the records it produces.

:class:`_Run` is what :meth:`~visual_dr3.evaluation.pool.RolloutPool.run` executes: it hands queued episodes
(:func:`episode_queue`: episode ``e`` starts from ``episode_seed(seed, e)``) to idle envs ("lanes"; a worker
process holds one or more), collects reset/step replies and makes one batched policy call for every lane whose
observation is in, as soon as it is in (the other lanes keep stepping meanwhile), and turns worker failures into
a retry from the same seed or a failed record (at most :data:`MAX_ATTEMPTS` attempts). It returns a
:class:`RolloutRun` of :class:`EpisodeResult` records and a :class:`RunTiming` (defined in
:mod:`~visual_dr3.evaluation.records`, re-exported here). No torch here: the policy is any
callable.
"""

from __future__ import annotations

import collections
import os
import pickle
import time
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Callable, Collection, Optional, Sequence

import numpy as np

from visual_dr3.evaluation.records import EpisodeResult, RolloutError, RolloutRun, RunTiming  # noqa: F401
from visual_dr3.evaluation.stats import episode_seed
from visual_dr3.evaluation.workers import (BUSY, DEAD, HAS_OBS, IDLE, READY, STARTING, _Episode, _Lane, _Worker,
                                           format_exc)

MAX_ATTEMPTS = 2  # an episode is tried at most twice (one retry after a worker failure)


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
        self.timing = RunTiming()
        local = pool.spec.policy_in_workers  # then the workers call their copies' hooks, not the parent
        self.start_policy = None if local else getattr(policy, "start_episode", None)
        self.end_policy = None if local else getattr(policy, "end_episode", None)
        # the first run's clock starts when the pool did: its "overall" figures include building the envs
        self.t_start = pool.started_at if not pool._ran else time.monotonic()
        pool._ran = True
        self.t_first_ready: Optional[float] = (
            time.monotonic() if any(w.state == READY for w in pool.workers) else None)
        self.start_failures = [0] * len(pool.workers)
        self.local = pool.spec.policy_in_workers
        self.policy_blob: Optional[bytes] = None
        if self.local:  # each worker gets the policy (its acting part, on the CPU) once per run
            self.policy_blob = pickle.dumps(policy.for_workers() if hasattr(policy, "for_workers") else policy)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(episodes), desc=desc, unit="ep", dynamic_ncols=True)

    @property
    def workers(self) -> list[_Worker]:
        return self.pool.workers

    @property
    def lanes(self) -> list[_Lane]:
        return [lane for w in self.workers for lane in w.lanes]

    def _running(self) -> bool:
        return bool(self.queue) or any(lane.episode is not None for lane in self.lanes)

    # -- the loop ---------------------------------------------------------------------------------------
    def execute(self) -> RolloutRun:
        """Run every queued episode; the records sorted by episode, with the run's timings and warnings."""
        try:
            for slot, w in enumerate(self.workers):  # workers lost after an earlier run are replaced now
                if w.state == DEAD and self.queue:
                    self.workers[slot] = _Worker(self.pool.ctx, slot, self.pool.spec)
                elif w.state == READY:
                    self.send_policy(w)
            for lane in self.lanes:
                self.assign(lane)
            while self._running():
                self.collect()
                if self.queue and not any(lane.state in (STARTING, BUSY, HAS_OBS) for lane in self.lanes):
                    raise RolloutError("no rollout worker left to run the remaining episodes")
                self.act()
        finally:
            if self.bar is not None:
                self.bar.close()
        t_end = time.monotonic()
        ordered = [self.results[e] for e in sorted(self.results)]
        t_ready = self.t_first_ready if self.t_first_ready is not None else self.t_start
        return RolloutRun(results=ordered, seconds=t_end - self.t_start, rollout_seconds=t_end - t_ready,
                          warnings=self.warnings, timing=self.timing)

    def collect(self) -> None:
        """Handle every reply that has come; return as soon as some lane holds an observation (the policy acts
        on it while the other lanes step), else wait. Workers still building their envs join when ready, and
        are waited for only when nothing else can run."""
        while True:
            self._receive_all([w for w in self.workers if w.state != DEAD], block=False)
            if any(lane.state == HAS_OBS for lane in self.lanes):
                return
            busy = [w for w in self.workers if any(lane.state == BUSY for lane in w.lanes)]
            starting = [w for w in self.workers if w.state == STARTING]
            if not busy and (not starting or not self.queue):
                return
            watch = busy + starting
            self._receive_all(watch, block=True)
            self._check_timeouts(watch)

    def _receive_all(self, watch: list[_Worker], block: bool) -> None:
        """Handle what the ``watch`` workers sent (or their exits); ``block``: wait up to 1 s for something."""
        handles = {}
        for w in watch:
            handles[w.conn] = w
            handles[w.proc.sentinel] = w
        if not handles:
            return
        seen = set()
        for h in mp_wait(list(handles), timeout=1.0 if block else 0):
            w = handles[h]
            if id(w) in seen or w.state == DEAD:
                continue
            seen.add(id(w))
            self.receive(w)

    def _check_timeouts(self, watch: list[_Worker]) -> None:
        now = time.monotonic()
        step_timeout, start_timeout = self.pool.step_timeout, self.pool.start_timeout
        for w in watch:
            if w.state == STARTING and now - w.sent_at > start_timeout:
                w.proc.kill()
                self.fail(w, f"environment not built within {start_timeout:.0f} s (killed)")
            elif any(lane.state == BUSY and now - lane.sent_at > step_timeout for lane in w.lanes):
                w.proc.kill()
                self.fail(w, f"no answer within {step_timeout:.0f} s (killed)")

    def act(self) -> None:
        """One batched policy call for every lane holding an observation; each gets its action."""
        acting = [lane for lane in self.lanes if lane.state == HAS_OBS]
        if not acting:
            return
        batch = {k: np.stack([lane.obs[k] for lane in acting]) for k in acting[0].obs}
        t = time.perf_counter()
        actions = np.asarray(self.policy(batch, [lane.episode.index for lane in acting]), dtype=np.float32)
        self.timing.policy_seconds += time.perf_counter() - t
        self.timing.calls += 1
        self.timing.rows += len(acting)
        if actions.ndim != 2 or actions.shape[0] != len(acting):
            raise RolloutError(f"policy returned actions of shape {actions.shape} for {len(acting)} "
                               f"observations")
        actions = np.clip(actions, -1.0, 1.0)
        for lane, a in zip(acting, actions):
            if lane.state != HAS_OBS:  # its worker failed while an earlier lane's action was being sent
                continue
            lane.state = BUSY
            try:
                lane.send(("step", a))
            except (BrokenPipeError, OSError) as e:
                self.fail(lane.worker, f"{lane.worker.exit_description()} ({type(e).__name__})")

    # -- messages ---------------------------------------------------------------------------------------
    def receive(self, w: _Worker) -> None:
        """Read and handle every message ``w`` has sent; a closed pipe or dead process is a failure."""
        try:
            got = False
            while w.state != DEAD and w.conn.poll():
                self.handle(w, w.conn.recv())
                got = True
            if not got and w.state != DEAD and not w.proc.is_alive():
                raise EOFError
        except (EOFError, OSError, ConnectionError):
            if w.state != DEAD:
                self.fail(w, w.exit_description())

    def handle(self, w: _Worker, msg) -> None:
        kind = msg[0]
        if kind == "error":
            self.fail(w, msg[1])
        elif kind == "ready":
            self._on_ready(w, msg[1])
        elif kind != "obs":
            self.fail(w, f"unexpected message {kind!r}")
        else:
            _, lane, obs, reward, success, end, (env_s, render_s, policy_s), digest = msg
            self.timing.env_seconds += env_s
            self.timing.render_seconds += render_s
            if self.local and w.lanes[lane].last_cmd == "step":
                self.timing.policy_seconds += policy_s
                self.timing.calls += 1
                self.timing.rows += 1
            self._on_obs(w.lanes[lane], obs, reward, success, end, digest)

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
        w.state = READY
        self.send_policy(w)
        if w.state == DEAD:
            return
        for lane in w.lanes:
            lane.state = IDLE
            self.assign(lane)

    def _on_obs(self, lane: _Lane, obs: Optional[dict], reward: float, success: bool, end: bool,
                digest: Optional[str] = None) -> None:
        ep = lane.episode
        if lane.last_cmd == "step":
            ep.length += 1
            ep.ret += reward
            ep.success = ep.success or success
        if ep.frames is not None:
            ep.frames.append([obs[k] for k in self.pool.spec.image_keys])
        if end:
            lane.episode, lane.obs = None, None
            lane.state = IDLE
            ep.digest = digest
            self.finish(ep)
            self.assign(lane)
        elif self.local:  # the worker acts and steps on by itself: the lane stays busy, its clock restarts
            lane.last_cmd, lane.sent_at = "step", time.monotonic()
        else:
            lane.obs = obs
            lane.state = HAS_OBS

    # -- episodes ---------------------------------------------------------------------------------------
    def assign(self, lane: _Lane) -> None:
        """Start the next queued episode on ``lane`` if it is idle."""
        if not self.queue or lane.state != IDLE:
            return
        ep = self.queue.popleft()
        ep.ret, ep.length, ep.success, ep.t0 = 0.0, 0, False, time.monotonic()
        ep.frames = [] if ep.index in self.video_episodes else None
        lane.episode = ep
        if self.start_policy is not None:
            self.start_policy(ep.index, ep.seed)
        lane.state = BUSY
        try:
            lane.send(("reset", ep.index, ep.seed, ep.attempt, ep.frames is not None))
        except (BrokenPipeError, OSError) as e:
            self.fail(lane.worker, f"{lane.worker.exit_description()} ({type(e).__name__})")

    def send_policy(self, w: _Worker) -> None:
        """Give ready worker ``w`` this run's policy (policy in the workers only; once per worker and run)."""
        if self.policy_blob is None or w.policy_of is self:
            return
        try:
            w.conn.send(("policy", self.policy_blob))
            w.policy_of = self
        except (BrokenPipeError, OSError) as e:
            self.fail(w, f"{w.exit_description()} ({type(e).__name__})")

    def fail(self, w: _Worker, err: str) -> None:
        """``w`` failed: kill it, retry or record the episodes of its envs, and start a fresh worker in its slot
        if needed."""
        running = [(lane, lane.episode) for lane in w.lanes if lane.episode is not None]
        w.kill()
        for lane in w.lanes:
            lane.episode, lane.obs = None, None
        if not running:  # failed while starting (building its envs) or between episodes
            self.start_failures[w.slot] += 1
            if self.start_failures[w.slot] >= MAX_ATTEMPTS:
                raise RolloutError(f"rollout worker could not start its environment twice: {err}")
            self.emit(f"warning: eval worker {w.slot} failed to start ({err}); starting a fresh one")
        for _, ep in reversed(running):  # retried episodes go back to the queue's front in their order
            self._fail_episode(w, ep, err)
        if self._running():
            fresh = _Worker(self.pool.ctx, w.slot, self.pool.spec)
            self.workers[w.slot] = fresh  # (it gets the policy when it is ready)

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
                            seconds=round(time.monotonic() - ep.t0, 3),
                            obs_digest=ep.digest if error is None else None)
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
