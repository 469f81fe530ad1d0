"""Scripted, noisy grasping policies for the tasks (the data generator's behaviour policies).

Each policy is a small phase machine driving a proportional position controller,
``action[:3] = clip(GAIN * (target - eef), -1, 1)``, with no rotation (``action[3:6] = 0``) and the
gripper at -1 (open) or +1 (closed). Gaussian noise of scale ``sigma`` is added to the three position
dims only (rotation noise ruins grasps), then the action is clipped to [-1, 1].

Modes:

- ``full``: the whole task (expert and mixed data).
- ``prior`` (COG prior data): reach, grasp, and (pick_place/stack) lift the object, hold it for a few
  steps, then :attr:`ScriptedPolicy.finished` becomes True; the policy never moves towards the goal
  (lift: it never raises the cube towards the success height).
- ``task`` (COG task data): the same as ``full``; the generator runs the grasp without recording and
  starts recording once :attr:`ScriptedPolicy.grasped` is True (gripper closed on the object).
- ``release``, ``decoy0``, ``decoy1`` (lift only; the ``stitch`` data kind's prior data): a grasp, then the
  fingers open again and the hand retreats up, and the policy is finished. ``release`` grasps the cube,
  ``decoy0``/``decoy1`` close on an empty spot of the table (:attr:`LiftPolicy.DECOYS`, beside the cube, both
  on the same side so that the average of the three behaviours does not head for the cube). No recorded
  continuation of theirs ever lifts the cube.

Object and end-effector positions are read from the simulator (``env.sim``), so the policies do not
need object observations.
"""

from __future__ import annotations

import numpy as np

GAIN = 10.0
MODES = ("full", "prior", "task", "release", "decoy0", "decoy1")
#: the modes whose episodes end without the task (prior data): ``finished`` ends them
PRIOR_MODES = ("prior", "release", "decoy0", "decoy1")
#: version of the scripted policies, stored in generated datasets (``scripted_version``); a default dataset
#: made by an older version is generated again. 2: lift and pick_place aim off centre, close by height and
#: lift once the fingers stop (learnable from one frame; see reports/learn_to_grasp/). 3: lift closes at one
#: height (level with the cube's centre), so "start closing" is a function of the frame, not a per-episode draw.
#: 4: pick_place does the same (closing starts 1.5 cm over the can's centre, at one height).
SCRIPTED_VERSION = 4


class ScriptedPolicy:
    """Base class: subclasses implement :meth:`_plan` (the phase machine) for one task."""

    task: str = ""

    def __init__(self, env, sigma: float = 0.0, rng: np.random.Generator | None = None, mode: str = "full"):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}; expected one of {MODES}")
        self.env = env
        self.sigma = float(sigma)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.mode = mode
        self.reset()

    # -- state ---------------------------------------------------------------------------------------
    #: radius (m) of the per-episode xy aim offset at the grasp (0: aim at the object's centre). A learner
    #: from 48-84 px images ends its approach up to ~1.5 cm off centre; demos that all close within a few mm
    #: of the centre never show it closing there, so it hovers open (measured: reports/learn_to_grasp/).
    AIM_RADIUS: float = 0.0
    #: (low, high) m: with ``z_only`` descents, the height over the grasp point at which closing starts is drawn
    #: per episode in this range (None: ``descend_tol``). Every height in the range is then a state where some
    #: demo is still open and, lower down, where all have closed: a learner that reaches the bottom open sees
    #: "close" there in the data instead of the open descent it came from.
    CLOSE_BAND: tuple[float, float] | None = None

    def reset(self) -> None:
        """Call after every ``env.reset()``."""
        self.aim = np.zeros(3)
        if self.AIM_RADIUS > 0:  # uniform in the disk of radius AIM_RADIUS
            r, theta = self.AIM_RADIUS * np.sqrt(self.rng.uniform()), 2 * np.pi * self.rng.uniform()
            self.aim[:2] = r * np.cos(theta), r * np.sin(theta)
        self.width_prev: float | None = None
        self.close_tol = float(self.rng.uniform(*self.CLOSE_BAND)) if self.CLOSE_BAND else None
        self.phase = 0
        self.t = 0  # steps spent in the current phase
        self.anchor: np.ndarray | None = None  # a position remembered when a phase starts
        self.grasped = False
        self.finished = False

    def _next(self, anchor: np.ndarray | None = None) -> None:
        self.phase += 1
        self.t = 0
        if anchor is not None:
            self.anchor = np.array(anchor, dtype=np.float64)

    # -- acting --------------------------------------------------------------------------------------
    def eef_pos(self) -> np.ndarray:
        robot = self.env.robots[0]
        return np.array(self.env.sim.data.site_xpos[robot.eef_site_id["right"]], dtype=np.float64)

    def body_pos(self, body_id: int) -> np.ndarray:
        return np.array(self.env.sim.data.body_xpos[body_id], dtype=np.float64)

    def __call__(self, obs=None) -> np.ndarray:
        return self.act(obs)

    def act(self, obs=None) -> np.ndarray:
        """The next action (float32 (7,)), noise included; advances the phase machine."""
        eef = self.eef_pos()
        target, gripper = self._plan(eef)
        self.t += 1
        action = np.zeros(7, dtype=np.float64)
        action[:3] = np.clip(GAIN * (target - eef), -1.0, 1.0)
        if self.sigma > 0:
            action[:3] += self.sigma * self.rng.standard_normal(3)
        action[6] = gripper
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _plan(self, eef: np.ndarray) -> tuple[np.ndarray, float]:
        raise NotImplementedError

    # -- shared phases ---------------------------------------------------------------------------------
    def gripper_width(self) -> float:
        """Distance between the two fingers' joint positions (m): it stops shrinking when they hold the object."""
        q = self.env.sim.data.qpos[self.env.robots[0]._ref_gripper_joint_pos_indexes["right"]]
        return float(q[0] - q[1])

    def _reach_and_grasp(self, eef, obj, hover=0.08, hover_tol=0.01, hover_max=60, grasp_dz=-0.005,
                         descend_tol=0.008, descend_max=40, close_steps=10, z_only=False, settle=False,
                         close_descending=False):
        """Phases 0-2: hover over ``obj`` (+ the episode's aim offset), descend to it, close. Returns
        (target, gripper) or None when done.

        ``z_only``: the descent ends when the height is within ``descend_tol`` (xy is whatever the approach
        left), so closing depends on what proprio shows exactly. ``settle``: closing ends as soon as the
        fingers stop moving (width change < 0.5 mm over a step, after >= 3 steps), at most ``close_steps``, so
        the lift starts on an observable event rather than a count a single frame cannot see.
        ``close_descending``: the descent goes on while the fingers close (the anchor is not held), so every
        state below the closing height shows a closing gripper, including those a learner overshoots to.
        """
        obj = obj + self.aim
        if self.phase == 0:
            target = obj + np.array([0.0, 0.0, hover])
            if np.linalg.norm(target - eef) < hover_tol or self.t >= hover_max:
                self._next()
            else:
                return target, -1.0
        if self.phase == 1:
            target = obj + np.array([0.0, 0.0, grasp_dz])
            err = abs(target[2] - eef[2]) if z_only else np.linalg.norm(target - eef)
            tol = self.close_tol if (z_only and self.close_tol is not None) else descend_tol
            if err < tol or self.t >= descend_max:
                self._next(anchor=eef)
            else:
                return target, -1.0
        if self.phase == 2:
            width = self.gripper_width()
            settled = settle and self.t >= 3 and self.width_prev is not None and self.width_prev - width < 5e-4
            self.width_prev = width
            if self.t >= close_steps or settled:
                self.grasped = True
                self._next(anchor=eef)
            else:
                return (obj + np.array([0.0, 0.0, grasp_dz]) if close_descending else self.anchor), 1.0
        return None


class LiftPolicy(ScriptedPolicy):
    """Lift: hover 8 cm over the cube (aimed within 1.2 cm of its centre, drawn per episode), descend towards a
    point below its centre that the fingertips cannot reach (they touch the table ~1 cm below it), start closing
    once the hand is level with the cube's centre, close until the fingers stop, lift 25 cm (~45 steps).

    Why one closing height (version 3): the fingers visibly move from the first closing step on, so a learner
    that sees one frame has to tell "start closing" from the open fingers' state alone. With version 2's height
    drawn per episode, that was a hazard, not a function of the frame: among open-finger states, only 15-38% at
    any height were labelled "close", the imitation's mean gripper output stayed below 0 everywhere, and
    learners descended to the table and sat there open (reports/learn_to_grasp/cpu/tuning_v4/). With one
    height, every open-finger frame below it is labelled "close".

    Prior mode: grasp and hold 8 steps, never moving up once the gripper closes (the success height,
    table + 4 cm, is only ~1 cm over the cube's resting height), then finished.
    """

    task = "lift"

    #: xy offsets (m) from the cube's initial position of the ``decoy0``/``decoy1`` grasps: on the table,
    #: clear of the cube (5 cm wide) and the fingers (~8 cm open), both on the +y side
    DECOYS = ((0.0, 0.15), (-0.08, 0.13))
    #: steps the ``release``/decoy modes hold the fingers open after closing, before retreating up
    OPEN_STEPS = 8
    #: m the ``release``/decoy modes retreat up once open
    RETREAT = 0.12

    AIM_RADIUS = 0.012
    #: m from the cube's centre: the descent's target, below the table-stopped fingertips (~ -0.010)
    GRASP_DZ = -0.012
    #: closing starts once the hand is within this of GRASP_DZ in height, i.e. level with the cube's centre
    CLOSE_DZ = 0.012

    def reset(self) -> None:
        super().reset()
        self.decoy: np.ndarray | None = None  # the decoy grasp point, fixed at the episode's first step

    def _plan(self, eef):
        cube = self.body_pos(self.env.cube_body_id)
        target = cube
        if self.mode in ("decoy0", "decoy1"):
            if self.decoy is None:
                dx, dy = self.DECOYS[int(self.mode[-1])]
                self.decoy = cube + np.array([dx, dy, 0.0])
            target = self.decoy
        out = self._reach_and_grasp(eef, target, grasp_dz=self.GRASP_DZ, descend_tol=self.CLOSE_DZ, z_only=True,
                                    settle=True, close_descending=True)
        if out is not None:
            return out
        if self.mode == "prior":
            if self.phase == 3 and self.t >= 8:
                self.finished = True
            return self.anchor, 1.0
        if self.mode in ("release", "decoy0", "decoy1"):
            if self.phase == 3:  # open where the grasp closed
                if self.t >= self.OPEN_STEPS:
                    self._next(anchor=self.anchor)
                else:
                    return self.anchor, -1.0
            up = self.anchor + np.array([0.0, 0.0, self.RETREAT])  # retreat up, open
            if eef[2] > up[2] - 0.01 or self.t >= 30:
                self.finished = True
            return up, -1.0
        return self.anchor + np.array([0.0, 0.0, 0.25]), 1.0

    def act(self, obs=None) -> np.ndarray:
        action = super().act(obs)
        if self.mode in ("release", "decoy0", "decoy1") and self.phase in (2, 3):
            action[2] = min(action[2], 0.0)  # never move up while the fingers hold or let go of the cube
        if self.mode == "prior" and self.phase >= 2:
            # once closing on the cube, never move up (noise included): the cube must stay below the
            # success height, which is only ~1 cm over its resting height
            action[2] = min(action[2], 0.0)
        return action


class PickPlaceCanPolicy(ScriptedPolicy):
    """PickPlaceCan: over the can (aimed within 1 cm of its axis, drawn per episode), descend towards a point
    1.5 cm below its centre, start closing once the hand is 1.5 cm over the centre (one height, as lift's
    version 3: "start closing" is then a function of the frame) and go on down while the fingers close, until
    they stop; lift to z=1.05, carry over the target bin, lower to z=0.95, open, retreat up (success needs the
    hand away from the can).

    Prior mode: grasp and lift to z=1.05, hold 10 steps, finished (never carried towards the bin).
    """

    task = "pick_place"
    CARRY_Z = 1.05
    DROP_Z = 0.95
    AIM_RADIUS = 0.01
    #: m from the can's centre: the descent's target, below where the hand stops (from ~1 cm over the centre
    #: the hand presses the can into the bin's floor and stalls ~4-5 mm over it)
    GRASP_DZ = -0.015
    #: closing starts once the hand is within this of GRASP_DZ in height, i.e. 1.5 cm over the can's centre,
    #: before the hand touches the can (a threshold in the stall would be crossed at a random time)
    CLOSE_DZ = 0.03

    def _plan(self, eef):
        env = self.env
        can = self.body_pos(env.obj_body_id[env.obj_to_use])
        out = self._reach_and_grasp(eef, can, hover=0.10, hover_max=80, grasp_dz=self.GRASP_DZ,
                                    descend_tol=self.CLOSE_DZ, descend_max=50, close_steps=12, z_only=True,
                                    settle=True, close_descending=True)
        if out is not None:
            return out
        if self.phase == 3:  # lift
            target = np.array([self.anchor[0], self.anchor[1], self.CARRY_Z])
            if eef[2] > self.CARRY_Z - 0.02 or self.t >= 60:
                self._next(anchor=target)
            else:
                return target, 1.0
        if self.mode == "prior":
            if self.t >= 10:
                self.finished = True
            return self.anchor, 1.0
        goal = np.array(env.target_bin_placements[env.object_id], dtype=np.float64)
        if self.phase == 4:  # carry
            target = np.array([goal[0], goal[1], self.CARRY_Z])
            if np.linalg.norm((target - eef)[:2]) < 0.01 or self.t >= 100:
                self._next()
            else:
                return target, 1.0
        if self.phase == 5:  # lower
            target = np.array([goal[0], goal[1], self.DROP_Z])
            if eef[2] < self.DROP_Z + 0.01 or self.t >= 40:
                self._next(anchor=eef)
            else:
                return target, 1.0
        if self.phase == 6:  # open
            if self.t >= 8:
                self._next(anchor=eef)
            else:
                return self.anchor, -1.0
        return self.anchor + np.array([0.0, 0.0, 0.15]), -1.0  # retreat


class StackPolicy(ScriptedPolicy):
    """Stack: grasp cubeA (red, 4 cm), lift to 10 cm over cubeB, carry over cubeB, lower until cubeA's
    bottom is ~1 cm over cubeB's top, open, retreat up (success: cubeA on cubeB, not grasped).

    Prior mode: grasp cubeA and lift it, hold 10 steps, finished (never carried over cubeB).
    """

    task = "stack"
    CLEARANCE = 0.10

    def _plan(self, eef):
        env = self.env
        cube_a = self.body_pos(env.cubeA_body_id)
        cube_b = self.body_pos(env.cubeB_body_id)
        out = self._reach_and_grasp(eef, cube_a)
        if out is not None:
            return out
        # eef-to-cubeA offset measured at the grasp: place cubeA, not the hand
        carry_z = cube_b[2] + self.CLEARANCE
        if self.phase == 3:  # lift
            target = np.array([self.anchor[0], self.anchor[1], carry_z])
            if eef[2] > carry_z - 0.015 or self.t >= 50:
                self._next(anchor=target)
            else:
                return target, 1.0
        if self.mode == "prior":
            if self.t >= 10:
                self.finished = True
            return self.anchor, 1.0
        hand_minus_a = eef - cube_a
        if self.phase == 4:  # carry cubeA over cubeB
            target = np.array([cube_b[0], cube_b[1], carry_z]) + np.array([hand_minus_a[0], hand_minus_a[1], 0.0])
            if np.linalg.norm((target - eef)[:2]) < 0.006 or self.t >= 80:
                self._next()
            else:
                return target, 1.0
        if self.phase == 5:  # lower: cubeA's centre to cubeB top + cubeA half size + 1 cm
            a_z = cube_b[2] + 0.025 + 0.02 + 0.01
            target = np.array([cube_b[0], cube_b[1], a_z]) + hand_minus_a
            if abs(cube_a[2] - a_z) < 0.005 or self.t >= 40:
                self._next(anchor=eef)
            else:
                return target, 1.0
        if self.phase == 6:  # open
            if self.t >= 8:
                self._next(anchor=eef)
            else:
                return self.anchor, -1.0
        return self.anchor + np.array([0.0, 0.0, 0.10]), -1.0  # retreat


POLICIES: dict[str, type[ScriptedPolicy]] = {
    "lift": LiftPolicy,
    "pick_place": PickPlaceCanPolicy,
    "stack": StackPolicy,
}


def make_policy(task, env, sigma: float = 0.0, rng: np.random.Generator | None = None,
                mode: str = "full") -> ScriptedPolicy:
    """The scripted policy of ``task`` (a name or TaskSpec) acting in ``env``."""
    from visual_dr3.envs.tasks import get_task

    spec = get_task(task)
    if mode in ("release", "decoy0", "decoy1") and (spec.scripted_policy or spec.name) != "lift":
        raise ValueError(f"mode {mode!r} is built for lift only (task {spec.name!r})")
    return POLICIES[spec.scripted_policy or spec.name](env, sigma=sigma, rng=rng, mode=mode)
