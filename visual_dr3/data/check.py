"""``python -m visual_dr3.data.check DATASET [--task TASK]``: check a dataset someone sent you before training on it.

Reads it as ``train.py`` does (:func:`visual_dr3.data.loading.load_replay`, on the CPU): the layout, every
demo's arrays (no NaN or infinite action, reward or proprio value; dones 0 or 1), every image, and the checksums
of a file written by this project (a truncated or altered file is refused). Attributes are parsed as JSON data
only. Prints one summary line, or one ``error:`` line naming the file, the key and the demo, with exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from visual_dr3.errors import OneLineParser, UserError, cli_entry, say


def check_dataset(path: "str | Path", task_name: Optional[str] = None) -> dict:
    """Load ``path`` in full for ``task_name`` (None: the task its metadata names); returns a summary dict."""
    from visual_dr3.data.info import dataset_info
    from visual_dr3.data.loading import load_replay
    from visual_dr3.data.validate import open_h5, parse_json_attr
    from visual_dr3.envs.tasks import get_task

    path = Path(path)
    if task_name is None:
        with open_h5(str(path)) as f:
            meta = parse_json_attr(str(path), f["data"], "visual_dr3") if "data" in f else {}
        task_name = meta.get("task")
        if task_name is None:
            raise UserError(f"{path}: its metadata names no task; pass --task")
    task = get_task(task_name)
    info = dataset_info(path, task)
    replay = load_replay(str(path), list(task.image_keys), list(task.proprio_keys), task.action_dim,
                         expect_image_size=info["image_size"], progress=False)
    _read_the_rest(path, set(task.image_keys))
    return {"path": str(path), "task": task.name, "transitions": int(replay.num_transitions),
            "image_size": info["image_size"], "cameras": list(task.image_keys)}


def _read_the_rest(path: Path, images: set) -> None:
    """Read every dataset load_replay did not (states, masks, other obs), so that each checksum is verified."""
    import h5py

    from visual_dr3.data.validate import open_h5

    with open_h5(str(path)) as f:
        names: list = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            if name.rsplit("/", 1)[-1] not in images:
                f[name][()]
            for k in f[name].attrs:
                f[name].attrs[k]


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = OneLineParser(prog="python -m visual_dr3.data.check", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="an HDF5 file in robomimic's layout")
    p.add_argument("--task", default=None, help="the task whose keys to read (default: the one its metadata names)")
    args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    s = check_dataset(args.dataset, args.task)
    say(f"{s['path']}: ok ({s['task']}, {s['transitions']} transitions, {s['image_size']}px "
        f"{', '.join(s['cameras'])})", stdout=True)
    return s


if __name__ == "__main__":
    main()
