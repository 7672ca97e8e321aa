"""Per-epoch metrics logs in the run folder (JSONL or CSV), plus TensorBoard when installed."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from seglab.core.atomic import atomic_write_text

__all__ = ["MetricsLogger", "json_safe", "dumps", "epoch_line"]


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by None, so the JSON is strict (undefined metrics are null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


class MetricsLogger:
    """Appends one record per epoch to ``metrics.jsonl`` or ``metrics.csv`` (flushed at once)."""

    def __init__(self, run_dir: Path, fmt: str = "jsonl") -> None:
        if fmt not in ("jsonl", "csv"):
            from seglab.core.errors import SeglabError

            raise SeglabError(f"train.log_format must be jsonl or csv, got {fmt!r}.")
        self.fmt = fmt
        self.path = Path(run_dir) / f"metrics.{fmt}"
        self._tb = None
        try:  # TensorBoard is optional: `pip install tensorboard` to get event files.
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        except ImportError:
            pass

    def log(self, record: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            with self.path.open("a") as f:
                f.write(dumps(record) + "\n")
        else:
            flat = {k: v for k, v in record.items() if not isinstance(v, (list, dict))}
            new = not self.path.exists()
            with self.path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(flat))
                if new:
                    writer.writeheader()
                writer.writerow(flat)
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch" and value == value:
                    self._tb.add_scalar(key, value, record.get("epoch", 0))
            self._tb.flush()

    def trim(self, last_epoch: int) -> None:
        """Drop records of epochs after ``last_epoch`` (logged after the checkpoint a run resumes from)."""
        if not self.path.exists():
            return
        if self.fmt == "jsonl":
            lines = self.path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if line.strip() and json.loads(line).get("epoch", 0) <= last_epoch]
            if len(kept) != len(lines):
                atomic_write_text(self.path, "".join(kept))
            return
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        kept_rows = [r for r in rows if int(float(r.get("epoch") or 0)) <= last_epoch]
        if len(kept_rows) != len(rows):
            fields = list(rows[0]) if rows else []
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept_rows)
            atomic_write_text(self.path, buffer.getvalue())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The line printed after each epoch: loss, learning rate, speed and the val summary."""
    line = (f"epoch {record['epoch']}/{epochs}  loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  "
            f"{record['train_images_per_s']:.1f} img/s")
    if "val_miou" in record:
        line += (f"  | val G {100 * record['val_global_acc']:.1f}  C {100 * record['val_class_acc']:.1f}  "
                 f"mIoU {100 * record['val_miou']:.1f}")
        if record.get("val_bf") is not None and record["val_bf"] == record["val_bf"]:
            line += f"  BF {100 * record['val_bf']:.1f}"
    if "val_mask_ap" in record:
        line += "  | val " + "  ".join(f"{k[4:]} {100 * record[k]:.1f}" for k in
                                       ("val_mask_ap", "val_mask_ap50", "val_mask_ap75", "val_box_ap", "val_mask_iou"))
    return line
