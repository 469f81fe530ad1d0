"""``metrics.csv`` that survives a resume.

Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts in a folder that holds one, so a
run resumed with ``--resume`` would lose every row logged before the interruption. :class:`RunCSVLogger`
keeps them: on a resume from a checkpoint at global step ``G`` it keeps the rows of steps below ``G`` (rows
of later steps, logged after that checkpoint was written, are dropped: the resumed run logs those steps
again) and appends the new rows after them, under the union of the old and new columns.

Every write is whole or nothing: a new column rewrites the file atomically, an append that fails (full disk,
read-only folder) is cut back to the rows before it and stops the run with one line naming the file
(:class:`~visual_dr3.fileio.WriteError`), and ``hparams.yaml`` is written atomically.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Optional

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from visual_dr3.fileio import atomic_path, write_error, write_text_atomic


class _KeepingWriter(ExperimentWriter):
    """Lightning's writer, but the rows of steps below ``keep_below`` of an existing file are kept."""

    def __init__(self, log_dir: str, keep_below: Optional[int]):
        self._keep_below = keep_below
        super().__init__(log_dir)  # calls _check_log_dir_exists

    def _check_log_dir_exists(self) -> None:
        path = self.metrics_file_path
        if self._keep_below is None or not os.path.isfile(path):
            super()._check_log_dir_exists()  # a fresh run: Lightning replaces an old file
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            kept = [row for row in reader
                    if row.get("step") not in (None, "") and int(float(row["step"])) < self._keep_below]
        self.metrics_keys = sorted(keys)  # Lightning keeps its columns sorted
        # atomically: a crash here leaves the old file or the kept rows, never neither
        write_text_atomic(path, _rows_to_csv(self.metrics_keys, kept))

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        write_text_atomic(self.metrics_file_path, _rows_to_csv(fieldnames, rows))

    def save(self) -> None:
        """Lightning's append, cut back to the previous rows if it fails; a refused write is one line."""
        path = self.metrics_file_path
        size = os.path.getsize(path) if os.path.isfile(path) else None
        try:
            super().save()
        except OSError as e:
            try:
                if size is None:
                    os.unlink(path)
                else:
                    os.truncate(path, size)
            except OSError:
                pass
            err = write_error(path, e)
            if err is None:
                raise
            raise err from None

    def log_hparams(self, params: dict) -> None:
        from lightning.pytorch.core.saving import save_hparams_to_yaml

        self.hparams.update(params)
        with atomic_path(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)) as tmp:
            save_hparams_to_yaml(str(tmp), self.hparams)


def _rows_to_csv(keys: list[str], rows: list[dict]) -> str:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class RunCSVLogger(CSVLogger):
    """``CSVLogger(save_dir, name="", version="")`` writing ``<save_dir>/metrics.csv``; ``resume_step`` = the
    global step of the checkpoint a run resumes from (None for a fresh run: an old file is replaced);
    rows are written to disk every ``flush_every`` steps (train.py: every log step) and at the end."""

    def __init__(self, save_dir: str, resume_step: Optional[int] = None, flush_every: int = 100):
        super().__init__(save_dir=save_dir, name="", version="", flush_logs_every_n_steps=flush_every)
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _KeepingWriter(self.log_dir, self._resume_step)
        return self._experiment
