"""The learner learns: short runs of the real module on a real generated dataset (no Lightning, ~1 minute).

- BC drives the action error far below both its start and the error of the best constant action (the
  dataset's mean), so the policy reads the observation (images + proprio) to choose its action.
- CQL + DR3 (n-step backups) ranks dataset actions above random ones and learns values that follow the
  data's discounted return-to-go: Q near a success is higher than Q far from it.

Each fails if a loss, the gradient routing, the n-step targets or the data path (frames, actions, rewards and
dones out of step) is broken.
"""

import os

import numpy as np
import pytest
import torch

from visual_dr3.data.replay import SourceSpec, load_replay
from visual_dr3.data.stats import dataset_stats
from visual_dr3.envs.tasks import get_task
from visual_dr3.learner.config import TrainConfig, to_dict
from visual_dr3.learner.module import DR3CQL
from cli_helpers import set_fields

TASK = get_task("lift")


def small_config(**over) -> TrainConfig:
    cfg = TrainConfig(task="lift", batch_size=64, wandb="off", progress=False)
    cfg.model.feature_dim, cfg.model.hidden_dims = 64, [128, 128]
    cfg.model.channels, cfg.model.num_layers = 16, 3
    cfg.data.augment_pad = 0
    return set_fields(cfg, **over)


def build(cfg: TrainConfig, path):
    keys, pkeys = list(TASK.image_keys), list(TASK.proprio_keys)
    stats = dataset_stats([SourceSpec(str(path))], keys, pkeys, TASK.action_dim)
    replay = load_replay([SourceSpec(str(path))], keys, pkeys, TASK.action_dim, n_step=cfg.algo.n_step,
                         discount=cfg.algo.discount, progress=False)
    torch.manual_seed(cfg.seed)
    module = DR3CQL(to_dict(cfg), keys, pkeys, replay.proprio_dim, replay.image_size[0], TASK.action_dim,
                    dataset_stats=stats)
    replay.select_action_dims(module.learned_dims)
    return module, replay


def train(module: DR3CQL, replay, steps: int, seed: int = 0):
    opt = module.configure_optimizers()
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        batch = replay.sample(module.cfg.batch_size, gen)
        module.backward_step(batch, step, opt, gen, lambda loss: loss.backward())
        module.optimizer_step(opt)


def all_transitions(replay):
    return replay.gather(replay._src_table)  # every sampleable transition once, in file order


@pytest.fixture(scope="module")
def torch_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # (conftest: this worker's share)
    yield
    torch.set_num_threads(old)


def test_scripted_data_fixes_rotation_and_learns_the_rest(lift_dataset):
    module, replay = build(small_config(), lift_dataset)
    # the scripted policy never rotates: dims 3-5 are held at 0, the networks see xyz + gripper
    assert module.learned_dims == [0, 1, 2, 6] and replay.action_dim == 4
    a = module.act({k: v[:3] for k, v in all_transitions(replay).obs.items()})
    assert a.shape == (3, 7) and torch.all(a[:, 3:6] == 0)


def test_bc_learns_actions_from_observations(lift_expert_dataset, torch_threads):
    module, replay = build(small_config(algorithm="bc", **{"algo.actor_lr": 1e-3, "algo.bc_loss": "mse"}),
                           lift_expert_dataset)
    batch = all_transitions(replay)
    const_mse = (batch.action - batch.action.mean(0)).pow(2).mean().item()

    def mse():
        with torch.no_grad():
            return (module.actor.mode(module.encoder(batch.obs)) - batch.action).pow(2).mean().item()

    start = mse()
    train(module, replay, 400)  # with the squared-error imitation of the CPU preset
    end = mse()
    assert module.q is None and module.critic_parameters() == []
    # measured: 0.39 -> 1.6e-4 in 400 steps on the 4-demo file (1e-5 in 1,000; best constant action: 0.26)
    assert end < 0.05 * start, (start, end)
    assert end < 0.1 * const_mse, (const_mse, end)


def test_cql_ranks_data_actions_and_propagates_reward(lift_dataset, torch_threads):
    cfg = small_config(**{"algo.n_step": 3, "algo.init_alpha": 0.1, "algo.tau": 0.05, "algo.critic_lr": 1e-3,
                          "algo.bc_warmup_steps": 400, "dr3.coef": 0.01})
    module, replay = build(cfg, lift_dataset)
    batch = all_transitions(replay)
    train(module, replay, 400)
    with torch.no_grad():
        phi = module.encoder(batch.obs)
        q_data = torch.min(*module.q(phi, batch.action))
        a_rand = torch.rand((len(q_data), 10, replay.action_dim), generator=torch.Generator().manual_seed(1)) * 2 - 1
        q_rand = torch.min(*module.q(phi, a_rand))
    # CQL: dataset actions above random ones, for most states
    assert (q_data > q_rand.mean(1)).float().mean().item() > 0.9
    # TD with n-step returns: Q follows the discounted return-to-go of the data (successful demos end in r=1)
    # the 1-step return-to-go, from one-step rewards and demo boundaries (s'_t == s_{t+1} inside a demo)
    rtg = np.zeros(len(q_data))
    one = load_replay([SourceSpec(str(lift_dataset))], list(TASK.image_keys), list(TASK.proprio_keys),
                      TASK.action_dim, progress=False)
    g = 0.0
    for t in reversed(range(len(q_data))):
        cont = t + 1 < len(q_data) and one.obs_index[t + 1] == one.next_index[t] and one.done[t] == 0
        g = one.reward[t].item() + (cfg.algo.discount * g if cont else 0.0)
        rtg[t] = g
    ret = torch.from_numpy(rtg).float()
    succ = ret > 0
    assert succ.sum() > 20 and (~succ).sum() > 20
    corr = torch.corrcoef(torch.stack([q_data[succ], ret[succ]]))[0, 1].item()
    assert corr > 0.5, corr
    # states of failed demos (return 0) are valued below states of successful ones
    assert q_data[succ].mean() > q_data[~succ].mean()
