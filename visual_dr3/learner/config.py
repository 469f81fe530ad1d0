"""Typed training configuration: dataclasses with a one-line doc per field, validated, saved as YAML.

The tree is parsed by jsonargparse from (lowest to highest precedence) the dataclass defaults, the task's
file ``visual_dr3/configs/<task>.yaml`` (the preset), a ``--config FILE`` and command-line flags
(``--max-steps 50``, ``--dr3.coef 0.01``, ``--cql.min_q_weight 5``). Unknown keys and ill-typed values are rejected with one line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from visual_dr3.errors import UserError


@dataclass
class SourceConfig:
    """One source of transitions pooled into the replay (COG mixes prior and task data this way)."""

    path: Optional[str] = None
    """HDF5 file in robomimic's layout; None means the run's main ``dataset``."""
    filter_key: Optional[str] = None
    """Demos listed in ``mask/<filter_key>`` only (e.g. ``prior``, ``task``, ``train``); None takes all demos."""
    weight: Optional[float] = None
    """Share of each batch drawn from this source; None for every source means in proportion to size."""


@dataclass
class DataConfig:
    """What the learner reads and how batches are formed."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    """Sources pooled into one resident replay, each with an optional filter key and batch share."""
    augment_pad: int = 4
    """DrQ random shift: pad by this many pixels then crop back, a shift per sample; 0 turns it off."""
    device: Literal["auto", "cpu"] = "auto"
    """Where the resident dataset lives: ``auto`` puts it on the training device (GPU when it fits)."""
    normalize_proprio: bool = True
    """Standardise proprio with the dataset's per-dimension mean/std (kept in the checkpoint) before the encoder."""
    fixed_action_dims: Literal["auto", "none"] = "auto"
    """``auto``: action dims that hold one value in every dataset transition (the scripted data's rotation) are
    held at that value; the policy and Q see only the others. ``none``: learn every dim."""
    kind: Optional[Literal["expert", "mixed", "cog", "stitch"]] = None
    """Kind of the task's default dataset, generated when ``dataset`` is None and it is missing (None: the task's)."""
    episodes: Optional[int] = None
    """Episodes of the generated default dataset (None: the task's default)."""
    image_size: int = 84
    """Camera image size of the generated default dataset (square)."""


@dataclass
class ModelConfig:
    """Networks: image encoder, twin Q heads, tanh-Gaussian actor."""

    encoder: Literal["drq", "resnet18"] = "drq"
    """Image encoder: ``drq`` (small conv stack, fast on CPU) or ``resnet18`` (GroupNorm + spatial softmax)."""
    feature_dim: int = 256
    """Size of the encoder output phi(s) (Linear -> LayerNorm -> tanh bottleneck over cameras + proprio)."""
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden layer sizes of each Q head and of the actor MLP; the last is the Q heads' penultimate layer."""
    actor_encoder: Literal["shared", "separate", "separate_bc"] = "shared"
    """``shared``: the actor reads the critic encoder's features with gradients stopped (DrQ-v2); ``separate``: its own encoder; ``separate_bc``: its own encoder, trained by the imitation terms only (the Q and entropy terms move the actor's head, not its encoder)."""
    channels: int = 32
    """Channels of each conv layer of the ``drq`` encoder."""
    num_layers: int = 4
    """Conv layers of the ``drq`` encoder (the first has stride 2)."""
    pool: Literal["flatten", "spatial_softmax"] = "flatten"
    """How the ``drq`` conv maps become features: flattened (DrQ-v2) or 32 spatial soft-argmax keypoints per camera."""
    proprio_features: int = 0
    """0: proprio joins the camera features before the bottleneck; N: proprio gets its own Linear->LayerNorm->tanh to N of the feature_dim features."""


@dataclass
class CQLConfig:
    """Conservative Q-learning: CQL(H) with importance-sampled logsumexp, SAC actor."""

    min_q_weight: float = 1.0
    """Weight of the CQL(H) penalty (alpha in the CQL paper); 0 gives plain SAC-style TD on the offline data."""
    num_actions: int = 10
    """Sampled actions N for each of uniform, pi(.|s) and pi(.|s') in the logsumexp."""
    temperature: float = 1.0
    """Temperature of the logsumexp."""
    lagrange: bool = False
    """Tune the CQL weight with a Lagrange multiplier that keeps the gap near ``target_gap``."""
    target_gap: float = 5.0
    """Target of logsumexp(Q) - Q(data) for the Lagrange version (robomimic uses 5.0)."""
    max_q_backup: bool = False
    """Back up the max over ``num_actions`` policy samples at s' (CQL's max-backup) instead of one (td only)."""
    lagrange_lr: Optional[float] = None
    """Adam learning rate of the Lagrange multiplier's log (it moves ~lr per step); None: ``algo.critic_lr``."""
    init_alpha_prime: float = 1.0
    """Initial Lagrange multiplier alpha' (with ``lagrange``; a fixed weight is ``min_q_weight`` without it)."""
    gap_floor: Optional[float] = None
    """Per-sample floor of the gap logsumexp Q - Q(s, a_data): samples below it add no CQL gradient; None: no floor."""


@dataclass
class DR3Config:
    """The DR3 regularizer c0 * mean phi(s,a)·phi(s',a') (Kumar et al. 2021)."""

    coef: float = 0.01
    """c0; 0 turns DR3 off exactly. 0.01 suits the tanh-bounded 256-d encoder bottleneck (dot ~ 10-100)."""
    features: Literal["encoder", "penultimate", "both"] = "encoder"
    """phi: the encoder output (as in the COG/image code), the Q heads' penultimate layer (dopamine), or both."""
    next_action: Literal["backup", "policy", "data"] = "backup"
    """a' for penultimate features: the backup's a' (td: pi's sample or mean, per ``algo.target_action``; sarsa:
    the dataset's a'), a policy sample, or the dataset's."""
    detach_next: bool = False
    """Stop the gradient through phi(s',a') (COG code) instead of through both sides (the paper, dopamine)."""
    mask_done: bool = True
    """Drop terminal transitions from the mean: no backup couples s and s' there, so no implicit term to cancel."""
    absolute: bool = False
    """Penalise |phi·phi'| (dopamine) instead of the signed dot product (the paper)."""


@dataclass
class KLConfig:
    """KL regularization toward a lagged copy of the policy ("Leverage the Average", Vieillard et al. 2020)."""

    coef: float = 0.0
    """lambda: weight of KL(pi || pi_k), pi_k a slow copy of the actor, in the actor loss (after the BC warm-up) and
    subtracted from the backup's value of s'; 0 turns it off (exactly the update without it)."""
    tau: float = 0.005
    """Polyak rate of the lagged policy pi_k toward the actor after each step (pi_k lags ~1/tau steps)."""


@dataclass
class AlgoConfig:
    """SAC/TD settings shared by the critic and actor updates."""

    backup: Literal["td", "sarsa"] = "td"
    """Critic target a': ``td`` samples a' ~ pi(.|s'); ``sarsa`` takes the dataset's next action (DR3's probe)."""
    discount: float = 0.99
    """Discount gamma of the TD target."""
    tau: float = 0.005
    """Polyak rate of the target Q heads (and of the target encoder with ``target_encoder``)."""
    target_encoder: bool = False
    """Keep a Polyak-averaged copy of the critic encoder too (COG's full target network): the target reads
    phi_target(s'); off: the target Q heads read the online encoder's phi(s')."""
    target_action: Literal["sample", "mean"] = "sample"
    """a' of the ``td`` backup: a sample of pi(.|s') or the policy's mean action tanh(mu(s')) (deterministic)."""
    reward_scale: float = 1.0
    """Rewards are read as ``reward_scale * r + reward_bias`` (at load time, before n-step sums and returns)."""
    reward_bias: float = 0.0
    """Added to every scaled reward (CQL's AntMaze: scale 4, bias -2, i.e. (r - 0.5) * 4)."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critic encoder and Q heads."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor (COG: 1e-4)."""
    alpha_lr: float = 3e-4
    """Adam learning rate of the entropy temperature's log (it moves ~lr per step); fixed: ``auto_alpha false``."""
    init_alpha: float = 1.0
    """Initial entropy temperature alpha."""
    auto_alpha: bool = True
    """Tune alpha to reach ``target_entropy`` (SAC); off keeps alpha at ``init_alpha``."""
    target_entropy: Optional[float] = None
    """Entropy target; None means -action_dim."""
    entropy_backup: bool = False
    """Subtract alpha * log pi(a'|s') in the TD target; COG and CQL-for-images use the deterministic backup."""
    bc_warmup_steps: int = 0
    """COG: behaviour-clone the actor (maximise log pi(a_data|s)) for the first K steps."""
    bc_loss: Literal["nll", "mse"] = "nll"
    """How every imitation term (BC, warm-up, ``bc_weight``, ``awr``) scores a dataset action: ``nll`` = -log pi(a|s)
    of the tanh-Gaussian; ``mse`` = squared error of the mean action tanh(mu(s)), not dragged by actions at +-1."""
    actor_objective: Literal["sac", "awr"] = "sac"
    """After the warm-up: ``sac`` maximises min Q(s, a~pi) + entropy; ``awr`` imitates the dataset action weighted
    by exp(A / awr_beta), A = min Q(s, a_data) - min Q(s, mean action) (advantage-weighted regression, as AWAC/CRR)."""
    awr_beta: float = 0.1
    """Temperature of the ``awr`` weights (smaller: imitate only the best actions more sharply)."""
    awr_max_weight: float = 20.0
    """Upper clip of the ``awr`` weights (IQL uses 100)."""
    awr_normalize: bool = False
    """Divide the ``awr`` weights by their batch mean before the clip (d3rlpy's AWAC: softmax of A / beta over the
    batch, times its size): the actor's step keeps the warm-up's size and A only reweights within the batch."""
    bc_weight: float = 0.0
    """After the warm-up, add ``bc_weight * -log pi(a_data|s)`` to the SAC actor loss (0: pure SAC)."""
    bc_filter: Optional[str] = None
    """Filtered BC (``--algorithm bc`` only): clone only the demos whose return is > 0 (``success``) or in the top K%
    by return (``topK``, e.g. ``top10``; ties at the cut kept); None clones every demo."""
    n_step: int = 1
    """n-step returns: sum of n discounted rewards, bootstrapped from s_{t+n}; shorter at terminals and demo ends."""
    grad_clip: float = 0.0
    """Clip each optimizer's gradient norm to this value; 0 turns clipping off."""
    policy_ema: float = 0.0
    """Act (evaluation, eval.py) with an exponential moving average of the actor and the encoder it reads, decay
    min(policy_ema, (1 + t) / (10 + t)) at step t; 0: act with the trained weights."""


@dataclass
class TrainConfig:
    """One offline training run: data, networks, losses, schedule, logging."""

    task: str = "lift"
    """Task name from the registry (lift, pick_place, stack)."""
    algorithm: Literal["cql", "bc"] = "cql"
    """``cql``: CQL critic + SAC actor (+ DR3); ``bc``: behaviour cloning of the actor alone (the floor to beat)."""
    preset: Literal["auto", "cpu", "gpu", "none"] = "auto"
    """The preset under --config and flags: visual_dr3/configs/<task>.yaml (the method) plus cpu/<task>.yaml or gpu/<task>.yaml (the scale); none: the code's defaults; auto: cpu without CUDA."""
    dataset: Optional[str] = None
    """HDF5 dataset; None means the task's default file under data/ (generated first if missing)."""
    output_dir: Optional[str] = None
    """Run folder (config.yaml, metrics.csv, checkpoints/, wandb/); None means runs/<task>."""
    seed: int = 0
    """Seed of weights, sampling, augmentation and policy noise (each DDP rank offsets its sampling seed)."""
    max_steps: int = 100_000
    """Gradient steps to train."""
    batch_size: int = 256
    """Transitions per step, per device."""
    devices: int = 1
    """Number of devices (processes) for Lightning."""
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    """Lightning accelerator."""
    num_nodes: int = 1
    """Number of nodes for multi-node DDP."""
    precision: Literal["32-true", "bf16-mixed"] = "32-true"
    """Numerical precision; bf16-mixed autocasts the networks on GPU."""
    compile: bool = False
    """Wrap the networks with torch.compile."""
    log_every: int = 100
    """Steps between diagnostics (srank, feature dot, norms, Q); one host sync each time, none in between."""
    checkpoint_every: int = 5000
    """Steps between saves of checkpoints/last.ckpt (also saved at the end)."""
    eval_every: int = 0
    """Steps between evaluation rollouts during training; 0 turns evaluation off."""
    eval_episodes: int = 20
    """Rollouts per evaluation (split across DDP ranks)."""
    eval_workers: Optional[int] = None
    """Env worker processes per rank for evaluation; None means one per spare core (at most 8)."""
    eval_envs_per_worker: int = 2
    """Envs per evaluation worker, stepped in turn: one steps while the policy acts for the other."""
    eval_policy_in: Literal["auto", "parent", "workers"] = "auto"
    """Where the evaluation policy acts: batched in the trainer, or a CPU copy in each worker (one env each); auto: workers when on CPU and they take every core."""
    eval_videos: int = 2
    """Episodes recorded as mp4 at each evaluation (under <output_dir>/eval/videos); 0 records none."""
    eval_horizon: Optional[int] = None
    """Episode length limit for evaluation; None means the task's horizon."""
    eval_deterministic: bool = True
    """Evaluate the policy's mean action (tanh of the Gaussian mean) instead of sampling."""
    resume: Optional[str] = None
    """Checkpoint to resume from, or ``auto`` for <output_dir>/checkpoints/last.ckpt when present."""
    overwrite: bool = False
    """Train into an output_dir that already holds a run (config.yaml or checkpoints/last.ckpt), replacing it."""
    deterministic: bool = False
    """Deterministic algorithms (torch.use_deterministic_algorithms; cuDNN benchmark off): needed for bitwise
    exact resume on GPU, slower there."""
    wandb: Literal["offline", "online", "off"] = "offline"
    """Weights & Biases logging mode (offline by default: a run folder under <output_dir>/wandb)."""
    tensorboard: bool = False
    """Also write TensorBoard event files."""
    progress: bool = True
    """Show a progress bar."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset sources and augmentation."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Networks."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """SAC/TD settings."""
    cql: CQLConfig = field(default_factory=CQLConfig)
    """CQL penalty."""
    dr3: DR3Config = field(default_factory=DR3Config)
    """DR3 regularizer."""
    kl: KLConfig = field(default_factory=KLConfig)
    """KL regularization toward the lagged policy (off by default)."""


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check ranges and combinations; raise a one-line :class:`UserError` naming the flag."""

    def need(ok: bool, flag: str, expected: str, value) -> None:
        if not ok:
            raise UserError(f"--{flag}: got {value!r}; expected {expected}")

    pos_int = [("max_steps", cfg.max_steps), ("batch_size", cfg.batch_size), ("devices", cfg.devices),
               ("num_nodes", cfg.num_nodes), ("log_every", cfg.log_every),
               ("checkpoint_every", cfg.checkpoint_every), ("eval_episodes", cfg.eval_episodes),
               ("model.feature_dim", cfg.model.feature_dim), ("cql.num_actions", cfg.cql.num_actions),
               ("algo.n_step", cfg.algo.n_step), ("model.channels", cfg.model.channels),
               ("model.num_layers", cfg.model.num_layers), ("data.image_size", cfg.data.image_size)]
    for flag, v in pos_int:
        need(isinstance(v, int) and v > 0, flag, "a positive integer", v)
    if cfg.eval_horizon is not None:
        need(cfg.eval_horizon > 0, "eval_horizon", "a positive integer (or null)", cfg.eval_horizon)
    need(cfg.eval_envs_per_worker > 0, "eval_envs_per_worker", "a positive integer", cfg.eval_envs_per_worker)
    need(cfg.eval_policy_in in ("auto", "parent", "workers"), "eval_policy_in", "auto, parent or workers",
         cfg.eval_policy_in)
    if cfg.eval_workers is not None:
        need(cfg.eval_workers > 0, "eval_workers", "a positive integer (or null)", cfg.eval_workers)
    for flag, v in [("eval_every", cfg.eval_every), ("eval_videos", cfg.eval_videos),
                    ("data.augment_pad", cfg.data.augment_pad),
                    ("algo.bc_warmup_steps", cfg.algo.bc_warmup_steps)]:
        need(v >= 0, flag, "an integer >= 0", v)
    need(0 <= cfg.model.proprio_features < cfg.model.feature_dim, "model.proprio_features",
         f"an integer in [0, model.feature_dim) = [0, {cfg.model.feature_dim})", cfg.model.proprio_features)
    need(len(cfg.model.hidden_dims) > 0 and all(h > 0 for h in cfg.model.hidden_dims),
         "model.hidden_dims", "a non-empty list of positive integers", cfg.model.hidden_dims)
    need(0.0 <= cfg.algo.discount < 1.0, "algo.discount", "a number in [0, 1)", cfg.algo.discount)
    need(0.0 < cfg.algo.tau <= 1.0, "algo.tau", "a number in (0, 1]", cfg.algo.tau)
    need(0.0 <= cfg.algo.policy_ema < 1.0, "algo.policy_ema", "a number in [0, 1)", cfg.algo.policy_ema)
    need(0.0 < cfg.kl.tau <= 1.0, "kl.tau", "a number in (0, 1]", cfg.kl.tau)
    need(math.isfinite(cfg.algo.reward_scale) and cfg.algo.reward_scale != 0, "algo.reward_scale",
         "a finite non-zero number", cfg.algo.reward_scale)
    need(math.isfinite(cfg.algo.reward_bias), "algo.reward_bias", "a finite number", cfg.algo.reward_bias)
    need(not (cfg.algo.target_action == "mean" and cfg.algo.entropy_backup), "algo.target_action",
         "sample with --algo.entropy_backup true (the mean action has no entropy estimate)", cfg.algo.target_action)
    if cfg.cql.lagrange_lr is not None:
        need(math.isfinite(cfg.cql.lagrange_lr) and cfg.cql.lagrange_lr > 0, "cql.lagrange_lr",
             "a positive number (or null: algo.critic_lr)", cfg.cql.lagrange_lr)
    if cfg.cql.gap_floor is not None:
        need(math.isfinite(cfg.cql.gap_floor), "cql.gap_floor", "a finite number (or null: no floor)",
             cfg.cql.gap_floor)
    need(cfg.kl.coef == 0 or cfg.algorithm == "cql", "kl.coef", "0 with --algorithm bc (no critic, no greedy "
         "step to regularize)", cfg.kl.coef)
    if cfg.algo.bc_filter is not None:
        from visual_dr3.data.filtering import parse_filter

        need(cfg.algorithm == "bc", "algo.bc_filter", "null unless --algorithm bc (filtered behaviour cloning)",
             cfg.algo.bc_filter)
        need(parse_filter(cfg.algo.bc_filter) is not None, "algo.bc_filter",
             "success or topK with K in 1..100 (e.g. top10)", cfg.algo.bc_filter)
    for flag, v in [("algo.critic_lr", cfg.algo.critic_lr), ("algo.actor_lr", cfg.algo.actor_lr),
                    ("algo.alpha_lr", cfg.algo.alpha_lr), ("algo.init_alpha", cfg.algo.init_alpha),
                    ("algo.awr_beta", cfg.algo.awr_beta), ("algo.awr_max_weight", cfg.algo.awr_max_weight),
                    ("cql.temperature", cfg.cql.temperature), ("cql.init_alpha_prime", cfg.cql.init_alpha_prime)]:
        need(math.isfinite(v) and v > 0, flag, "a positive number", v)
    if cfg.data.episodes is not None:
        need(cfg.data.episodes > 0, "data.episodes", "a positive integer (or null)", cfg.data.episodes)
    for flag, v in [("dr3.coef", cfg.dr3.coef), ("cql.min_q_weight", cfg.cql.min_q_weight),
                    ("algo.grad_clip", cfg.algo.grad_clip), ("algo.bc_weight", cfg.algo.bc_weight),
                    ("kl.coef", cfg.kl.coef)]:
        need(math.isfinite(v) and v >= 0, flag, "a number >= 0", v)
    need(len(cfg.data.sources) > 0, "data.sources", "at least one source", cfg.data.sources)
    weights = [s.weight for s in cfg.data.sources]
    if any(w is not None for w in weights):
        need(all(w is not None and math.isfinite(w) and w >= 0 for w in weights) and sum(weights) > 0,
             "data.sources", "a weight >= 0 on every source (or on none), not all zero", weights)
    return cfg


def to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict of the config (for YAML and checkpoints)."""
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from :func:`to_dict` output (e.g. read from a checkpoint)."""
    d = dict(d)
    nested = {"data": DataConfig, "model": ModelConfig, "algo": AlgoConfig, "cql": CQLConfig, "dr3": DR3Config,
              "kl": KLConfig}
    for key, cls in nested.items():
        if key in d and isinstance(d[key], dict):
            sub = dict(d[key])
            if key == "data" and "sources" in sub:
                sub["sources"] = [SourceConfig(**s) if isinstance(s, dict) else s for s in sub["sources"]]
            d[key] = cls(**sub)
    return TrainConfig(**d)
