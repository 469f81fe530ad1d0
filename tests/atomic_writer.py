"""Helper of test_atomic_checkpoint: saves a checkpoint through AtomicCheckpointIO and hangs mid-write.

An object in the checkpoint prints ``writing`` while it is being pickled and then sleeps, so the test can
SIGKILL this process while the save is in progress (the target file already opened by a non-atomic writer).
"""

import sys
import time

import torch

from visual_dr3.learner.resume import AtomicCheckpointIO


class Stall:
    def __reduce__(self):
        print("writing", flush=True)
        time.sleep(300)
        return (int, (0,))


if __name__ == "__main__":
    path = sys.argv[1]
    ckpt = {"state_dict": {"w": torch.full((1000, 1000), 2.0)}, "global_step": 999, "stall": Stall()}
    AtomicCheckpointIO().save_checkpoint(ckpt, path)
