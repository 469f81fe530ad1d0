"""Helpers shared by the tests: set nested config fields by dotted name, run a CLI ``main`` in-process."""

import contextlib
import io


def set_fields(cfg, **over):
    """``cfg`` with each ``"a.b" = v`` of ``over`` set on the nested dataclasses (``algo.tau=0.1``: pass as a dict
    with ``**{"algo.tau": 0.1}``); returns ``cfg``."""
    for k, v in over.items():
        obj = cfg
        *path, last = k.split(".")
        for p in path:
            obj = getattr(obj, p)
        setattr(obj, last, v)
    return cfg


def run_main(main, argv):
    """``main(argv)`` in-process as the CLI runs it: (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()
