"""Run by tests/test_ddp.py in a subprocess (DDP re-launches the script, so it cannot run inside pytest).

    python tests/ddp_script.py DUMP_DIR [--fixed-batch B] -- <train.py arguments>

Trains through the real ``run()`` (real Trainer, real DDP on gloo) and adds a callback that writes, per
rank, the parameters at the end (``params_rank<r>.pt``), the gradients of the first step as the
optimizer sees them, i.e. after DDP's all-reduce (``grads_rank<r>.pt``), and with an evaluation, what the
rank's evaluation callback holds at the end (``eval_rank<r>.json``). With ``--fixed-batch B`` every
step uses the same B transitions of the dataset (sampled once with seed 0, no augmentation); under W
ranks, rank r takes rows [r*B/W, (r+1)*B/W): the W-rank and 1-rank runs then see the same data.
"""

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

import visual_dr3  # noqa: F401
from visual_dr3.data.replay import Batch
from visual_dr3.evaluation.callback import EvalCallback
from visual_dr3.app.cli_args import parse_train_args
from visual_dr3.learner.datamodule import ReplayDataModule
from visual_dr3.app.train import CONFIGS_DIR, run


class Dump(Callback):
    def __init__(self, out: Path):
        self.out, self.done_grads = out, False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not self.done_grads:
            grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save(grads, self.out / f"grads_rank{trainer.global_rank}.pt")
            self.done_grads = True

    def on_train_end(self, trainer, pl_module):  # after the evaluation callback's own (it comes first)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.out / f"params_rank{trainer.global_rank}.pt")
        cb = next((c for c in trainer.callbacks if isinstance(c, EvalCallback)), None)
        if cb is not None:  # what this rank's evaluation callback holds at the end
            res = {"rank": trainer.global_rank, "best": cb.best_success_rate, "best_step": cb.best_step,
                   "last_eval_step": cb.last_eval_step, "summary": cb.last_summary,
                   "episodes": [r["episode"] for r in cb.last_records],
                   "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("eval/")}}
            (self.out / f"eval_rank{trainer.global_rank}.json").write_text(json.dumps(res))


def fixed_batch_datamodule(total: int):
    class FixedBatch(ReplayDataModule):
        def train_dataloader(self):
            g = torch.Generator(device=self.replay.device).manual_seed(0)
            full = self.replay.sample(total, g)
            world = self.trainer.world_size if self.trainer is not None else 1
            rank = self.trainer.global_rank if self.trainer is not None else 0
            n = total // world
            sl = slice(rank * n, (rank + 1) * n)
            part = Batch(obs={k: v[sl] for k, v in full.obs.items()},
                         next_obs={k: v[sl] for k, v in full.next_obs.items()},
                         action=full.action[sl], reward=full.reward[sl], done=full.done[sl],
                         next_action=full.next_action[sl], source=full.source[sl])

            class Repeat(torch.utils.data.IterableDataset):
                def __iter__(self):
                    while True:
                        yield part

            return torch.utils.data.DataLoader(Repeat(), batch_size=None, collate_fn=lambda x: x)

    return FixedBatch


if __name__ == "__main__":
    argv = sys.argv[1:]
    sep = argv.index("--")
    own, train_args = argv[:sep], argv[sep + 1:]
    dump = Path(own[0])
    dump.mkdir(parents=True, exist_ok=True)
    factory = None
    if "--fixed-batch" in own:
        factory = fixed_batch_datamodule(int(own[own.index("--fixed-batch") + 1]))
    cfg = parse_train_args(train_args, configs_dir=CONFIGS_DIR)
    run(cfg, extra_callbacks=[Dump(dump)], datamodule_factory=factory)
