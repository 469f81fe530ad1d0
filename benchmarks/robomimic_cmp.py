"""Case 2: our training steps/s against robomimic 0.3.0's CQL on the same HDF5 file, batch and image size.

robomimic is run the way its ``train.py`` runs it: ``config_factory("cql")``, ``ObsUtils`` initialised from
the config, ``algo_factory``, ``TrainUtils.load_data_for_training`` (its ``SequenceDataset``), a torch
``DataLoader`` over it, and per step the body of ``TrainUtils.run_epoch``: next batch,
``process_batch_for_training``, ``postprocess_batch_for_training``, ``train_on_batch``, ``log_info``.

Two robomimic settings:
- ``matched``: the image encoder made as close to ours as its config allows. Its ``VisualCore`` takes a
  backbone class *by name*; we register our exact conv stack (4 convs, 32 channels, 3x3, first stride 2)
  under the name ``VisualDR3Conv``, no pooling, flatten, ``Linear`` to 128 per camera (2 cameras = our
  256-d phi), critic and actor MLPs (256, 256) as ours, images cached in memory (``hdf5_cache_mode="all"``,
  robomimic's fastest), augmentation ``CropRandomizer`` to (H-8)x(W-8) (its nearest to our pad-4 shift; the
  smaller crop makes its convs slightly cheaper than ours).
- ``default``: ``config_factory("cql")`` as shipped (ResNet18Conv + SpatialSoftmax + Linear 64 per camera,
  MLPs (300, 400), ``hdf5_cache_mode="all"``, no augmentation), only the data path, obs keys and batch
  size set; at batch 8, the batch of robomimic's own image CQL configs (ours is measured at the same batch).

robomimic's CQL runs its encoders on every copy of the observations its CQL term needs (the batch repeated
for each sampled action, per critic), which is where most of its time goes.

robomimic 0.3.0 imports ``mujoco_py`` at the top of its env module (never used here): a stand-in module is
put in ``sys.modules`` first (see :func:`import_robomimic`).
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import h5py
import torch
from torch import nn

from benchmarks.common import Row, Timing, cuda_sync_for, ratio_row, timing_row
from visual_dr3.envs.tasks import get_task

CAMS = list(get_task("lift").image_keys)  # what our lift datasets hold, read by both learners
PROPRIO = list(get_task("lift").proprio_keys)


def import_robomimic():
    """Import robomimic 0.3.0 with a stand-in ``mujoco_py`` (its env module imports it at top level)."""
    if "mujoco_py" not in sys.modules:
        mujoco_py = types.ModuleType("mujoco_py")
        builder = types.ModuleType("mujoco_py.builder")

        class MujocoException(Exception):
            pass

        builder.MujocoException = MujocoException
        mujoco_py.builder = builder
        sys.modules["mujoco_py"] = mujoco_py
        sys.modules["mujoco_py.builder"] = builder
    import robomimic  # noqa: F401

    return robomimic


def add_next_obs(path: Path) -> None:
    """Give every demo of ``path`` a ``next_obs`` group (obs shifted by one step; the last repeats), in place.

    robomimic's CQL reads s' from ``next_obs``; our generator does not store it (our loader takes s' as frame
    t+1), so the comparison file gets it, in robomimic's own layout, and both learners read that file.
    """
    with h5py.File(path, "a") as f:
        for name, demo in f["data"].items():
            if "next_obs" in demo:
                continue
            nxt = demo.create_group("next_obs")
            for key, ds in demo["obs"].items():
                x = ds[()]
                shifted = x.copy()
                shifted[:-1] = x[1:]
                kw = {}
                if ds.chunks is not None:
                    kw = dict(chunks=ds.chunks, compression=ds.compression, compression_opts=ds.compression_opts)
                nxt.create_dataset(key, data=shifted, **kw)


def _register_backbone() -> str:
    """Register our conv stack as a robomimic backbone class name (robomimic resolves it with eval)."""
    import robomimic.models.base_nets as BaseNets
    import robomimic.models.obs_core as ObsCore

    from visual_dr3.learner.encoders import ConvEncoder

    class VisualDR3Conv(BaseNets.ConvBase):
        """visual-dr3's per-camera DrQ conv stack (the same modules and init as ``ConvEncoder``)."""

        def __init__(self, input_channel: int = 3):
            super().__init__()
            assert input_channel == 3
            self._size = None
            self.nets = None

        def build(self, h: int, w: int) -> None:
            enc = ConvEncoder(["cam"], (h, w), proprio_dim=0, feature_dim=1)
            self.nets: nn.Module = enc.convs["cam"]
            self._out = [32, (h - 3) // 2 + 1 - 6, (w - 3) // 2 + 1 - 6]

        def output_shape(self, input_shape):
            if self.nets is None:
                self.build(int(input_shape[1]), int(input_shape[2]))
            return list(self._out)

    ObsCore.VisualDR3Conv = VisualDR3Conv
    return "VisualDR3Conv"


def robomimic_setup(path: Path, setting: str, batch: int, image_size: int, device: str):
    """(model, data iterator factory, config) for robomimic's CQL on ``path``."""
    import_robomimic()
    import robomimic.utils.file_utils as FileUtils
    import robomimic.utils.obs_utils as ObsUtils
    import robomimic.utils.train_utils as TrainUtils
    from robomimic.algo import algo_factory
    from robomimic.config import config_factory
    from torch.utils.data import DataLoader

    config = config_factory("cql")
    with config.values_unlocked():
        config.train.data = str(path)
        config.train.batch_size = batch
        config.train.cuda = torch.device(device).type == "cuda"
        config.train.hdf5_load_next_obs = True
        config.experiment.validate = False
        config.observation.modalities.obs.low_dim = list(PROPRIO)
        config.observation.modalities.obs.rgb = list(CAMS)
        if setting == "matched":
            rgb = config.observation.encoder.rgb
            rgb.core_kwargs.backbone_class = _register_backbone()
            rgb.core_kwargs.backbone_kwargs = {}
            rgb.core_kwargs.pool_class = None
            rgb.core_kwargs.feature_dimension = 128
            rgb.obs_randomizer_class = "CropRandomizer"
            rgb.obs_randomizer_kwargs.crop_height = image_size - 8
            rgb.obs_randomizer_kwargs.crop_width = image_size - 8
            rgb.obs_randomizer_kwargs.num_crops = 1
            rgb.obs_randomizer_kwargs.pos_enc = False
            config.algo.critic.layer_dims = (256, 256)
            config.algo.actor.layer_dims = (256, 256)
        elif setting != "default":
            raise ValueError(f"unknown robomimic setting {setting!r}")
    ObsUtils.initialize_obs_utils_with_config(config)
    shape_meta = FileUtils.get_shape_metadata_from_dataset(str(path), all_obs_keys=config.all_obs_keys,
                                                           verbose=False)
    model = algo_factory(algo_name="cql", config=config, obs_key_shapes=shape_meta["all_shapes"],
                         ac_dim=shape_meta["ac_dim"], device=torch.device(device))
    trainset, _ = TrainUtils.load_data_for_training(config, obs_keys=shape_meta["all_obs_keys"])
    sampler = trainset.get_dataset_sampler()
    loader = DataLoader(trainset, sampler=sampler, batch_size=batch, shuffle=(sampler is None),
                        num_workers=config.train.num_data_workers, drop_last=True)
    return model, loader, config


def robomimic_rate(path: Path, setting: str, batch: int, image_size: int, device: str, warmup: int, block: int,
                   reps: int) -> Timing:
    """Steps/s of robomimic's CQL training loop (the body of ``TrainUtils.run_epoch``), per block."""
    model, loader, _ = robomimic_setup(path, setting, batch, image_size, device)
    model.set_train()
    it = iter(loader)
    sync = cuda_sync_for(device)

    def step() -> None:
        nonlocal it
        try:
            batch_ = next(it)
        except StopIteration:  # a new pass over the data, as run_epoch does
            it = iter(loader)
            batch_ = next(it)
        input_batch = model.process_batch_for_training(batch_)
        input_batch = model.postprocess_batch_for_training(input_batch, obs_normalization_stats=None)
        info = model.train_on_batch(input_batch, 0, validate=False)
        model.log_info(info)

    for _ in range(warmup):
        step()
    sync()
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(block):
            step()
        sync()
        rates.append(block / (time.perf_counter() - t0))
    return Timing(rates)


def compare(path: Path, s, device: str) -> list[Row]:
    """Ours (``train.py``'s pipeline) vs robomimic matched and default, same file, batch and image size."""
    from benchmarks.training import pipeline_rate, train_config

    import shutil

    path = shutil.copyfile(path, Path(path).parent / "with_next_obs.hdf5")
    add_next_obs(path)
    b, size = s.robomimic_batch, s.image_size
    tag = f"{size}x{size} x2 cams"
    ours = pipeline_rate(train_config(str(path), "", b, 0, device), s.warmup, s.block, s.reps, device)
    matched = robomimic_rate(path, "matched", b, size, device, s.warmup, s.block, s.reps)
    bd, wd, kd = s.rm_default_batch, s.rm_default_warmup, s.rm_default_block
    # robomimic's default image config (ResNet18 + spatial softmax) against ours with the same kind of encoder
    # (--model.encoder resnet18: ResNet18 trunk with GroupNorm + spatial softmax), same batch, warm-up and blocks
    ours_d = pipeline_rate(train_config(str(path), "", bd, 0, device, encoder="resnet18"), wd, kd, s.reps, device)
    default = robomimic_rate(path, "default", bd, size, device, wd, kd, s.reps)
    steps = f"{wd} warm-up step(s), {s.reps} blocks of {kd}, both sides"
    return [
        timing_row("robomimic", f"ours: train.py steps/s (batch {b}, {tag}, drq, DR3 on)", ours, "steps/s"),
        timing_row("robomimic", f"robomimic 0.3.0 CQL steps/s, matched encoder (batch {b})", matched, "steps/s"),
        ratio_row("robomimic", f"ours / robomimic matched (batch {b})", ours, matched, target=3.0,
                  note="the same conv stack (ours registered as robomimic's VisualCore backbone)"),
        timing_row("robomimic", f"ours: train.py steps/s (batch {bd}, {tag}, resnet18, DR3 on)", ours_d, "steps/s",
                   note=steps),
        timing_row("robomimic", f"robomimic 0.3.0 CQL steps/s, default image config (ResNet18; batch {bd}"
                   + (", its image batch size)" if bd == 8 else ")"), default, "steps/s", note=steps),
        ratio_row("robomimic", f"ours / robomimic default, both ResNet18 + spatial softmax (batch {bd})", ours_d,
                  default, target=3.0, note="ours: GroupNorm and DrQ shifts; robomimic: BatchNorm, no augmentation"),
    ]
