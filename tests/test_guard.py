"""The divergence guard (issue 37): between log steps, a non-finite loss, Q-value or gradient is never applied
to the weights in memory (the step is skipped on the device, no host sync), and the run stops at the next log
step with one line; real training through ``run()`` (real Trainer), in-process."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback


class Watch(Callback):
    """After every step: whether the guard has flagged a non-finite value, and the weights."""

    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        flagged = pl_module._first_bad is not None and bool((pl_module._first_bad >= 0).any())
        weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.steps.append((trainer.global_step, flagged, weights))


def test_non_finite_gradients_between_log_steps_are_never_applied(lift_dataset, tmp_path):
    from visual_dr3.app.cli_args import parse_train_args
    from visual_dr3.app.train import CONFIGS_DIR, DivergedError, run

    # A huge critic learning rate: finite but enormous weights after the first step, then inf/NaN losses and
    # gradients. One log step (the last), no checkpoint before it: only the skip protects the weights.
    cfg = parse_train_args(["--task", "lift", "--dataset", str(lift_dataset), "--max-steps", "12", "--batch-size",
                            "8", "--log-every", "100", "--checkpoint-every", "100", "--algo.critic_lr", "1e30",
                            "--output-dir", str(tmp_path / "run"), "--wandb", "off", "--progress", "false",
                            "--model.feature_dim", "16", "--model.hidden_dims", "[16,16]", "--cql.num_actions", "2"],
                           configs_dir=CONFIGS_DIR)
    watch = Watch()
    with pytest.raises(DivergedError, match=r"non-finite .* at step (\d+) \(checked at step 11\)") as e:
        run(cfg, extra_callbacks=[watch])
    flagged = [i for i, (_, f, _) in enumerate(watch.steps) if f]
    assert flagged and flagged[0] < len(watch.steps) - 1, [s[:2] for s in watch.steps]  # before the log step
    first = flagged[0]
    for step, _, weights in watch.steps:
        for k, v in weights.items():
            assert torch.isfinite(v).all(), f"{k} non-finite in memory after step {step}"
    # from the flagged step on, nothing moves: the optimizer steps were skipped
    frozen = watch.steps[first][2]
    for step, _, weights in watch.steps[first:]:
        for k in frozen:
            if not k.startswith(("q_target.", "ema_", "kl_actor.")):  # Polyak copies move toward frozen weights
                assert torch.equal(weights[k], frozen[k]), f"{k} changed after step {step}"
    # the failing step the message names is the one the guard flagged (global_step counts it once done)
    assert f"at step {watch.steps[first][0] - 1} (checked" in str(e.value)
