"""``python -m visual_dr3.app.convert_checkpoint --trust-this-file OLD.ckpt NEW.ckpt``: rewrite a checkpoint that
holds more than plain data (an object of some class, a ``pathlib`` path, a dict subclass) as one that
``eval.py`` and ``train.py --resume`` load with ``weights_only=True``.

Reading OLD.ckpt unpickles it in full, which runs whatever code its author put in it: do it only for a file whose
author you trust (the flag says so). Mappings become dicts, sequences lists/tuples, paths strings, numpy scalars
numbers; tensors and numpy arrays are kept; anything else is refused (one line naming where it is in the file).
NEW.ckpt is written atomically and then read back the safe way, to prove it loads.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import PurePath
from typing import Optional, Sequence

from visual_dr3.errors import OneLineParser, UserError, cli_entry, say


def plain(obj, where: str = "checkpoint"):
    """``obj`` with every value made plain data (see the module docstring); UserError naming ``where``."""
    import numpy as np
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, np.ndarray, torch.dtype,
                                       torch.device, torch.Size)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Mapping):
        return {k: plain(v, f"{where}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        seq = [plain(v, f"{where}/{i}") for i, v in enumerate(obj)]
        return seq if isinstance(obj, list) else tuple(seq)
    raise UserError(f"{where}: holds a {type(obj).__module__}.{type(obj).__qualname__}, which has no plain-data "
                    f"form; expected tensors, numbers, strings, containers of them")


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> str:
    p = OneLineParser(prog="python -m visual_dr3.app.convert_checkpoint",
                      description="Rewrite a checkpoint you trust so that it loads without running code.")
    p.add_argument("src", help="the checkpoint to convert (it is unpickled in full: trusted files only)")
    p.add_argument("dst", help="where to write the converted checkpoint")
    p.add_argument("--trust-this-file", action="store_true", required=True,
                   help="required: you trust the author of SRC (loading it can run any code it holds)")
    args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    import torch

    from visual_dr3.checkpoint import read_checkpoint
    from visual_dr3.learner.resume import save_atomic

    try:
        ckpt = torch.load(args.src, map_location="cpu", weights_only=False)  # trusted by the flag above
    except FileNotFoundError:
        raise UserError(f"{args.src}: file not found") from None
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise UserError(f"{args.src}: does not load ({type(e).__name__}: {first})") from None
    save_atomic(plain(ckpt, where=args.src), args.dst)
    read_checkpoint(args.dst, flag="converted")  # the safe reader takes it
    say(f"wrote {args.dst}: loads without running code", stdout=True)
    return str(args.dst)


if __name__ == "__main__":
    main()
