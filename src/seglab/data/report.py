"""The result of :func:`~seglab.data.check_dataset`: per-split counts, class histograms and problems.

Errors (the data would fail to load, or load wrongly) make :attr:`DatasetReport.ok`
False; warnings point at things that are legal but often a mistake.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Issue", "SplitSummary", "DatasetReport", "files_text"]


def files_text(paths: Sequence[object], limit: int = 5) -> str:
    """``a.png, b.png, c.png (+12 more)``: file names only, a few of them."""
    names = [Path(str(p)).name for p in paths]
    text = ", ".join(names[:limit])
    return text + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


@dataclass
class Issue:
    """One problem found by the check.

    Attributes:
        level: ``error`` or ``warning``.
        split: The split it concerns, or None for the whole data set.
        message: What is wrong, which files, and how to fix it.
    """

    level: str
    split: str | None
    message: str


@dataclass
class SplitSummary:
    """Counts and the mask value histogram (value -> pixels) of one split."""

    name: str
    source: str
    images: int = 0
    masks: int = 0
    pairs: int = 0
    histogram: Counter = field(default_factory=Counter)


@dataclass
class DatasetReport:
    """What :func:`~seglab.data.check_dataset` found.

    Attributes:
        root: The checked folder.
        layout: ``camvid``, ``folder`` or ``unknown``.
        num_classes: Given, known (CamVid) or inferred from the masks; None when unknown.
        num_classes_source: ``given``, ``camvid`` or ``inferred``.
        class_names: Names when known.
        ignore_index: Value treated as void.
        splits: One summary per checked split.
        issues: Errors and warnings.
    """

    root: Path
    layout: str
    num_classes: int | None = None
    num_classes_source: str = "given"
    class_names: list[str] | None = None
    ignore_index: int = 255
    splits: list[SplitSummary] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        """Issues that make the data set unusable as it is."""
        return [i for i in self.issues if i.level == "error"]

    @property
    def warnings(self) -> list[Issue]:
        """Issues worth a look that do not stop loading."""
        return [i for i in self.issues if i.level == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    def add(self, level: str, split: str | None, message: str) -> None:
        """Record an issue."""
        self.issues.append(Issue(level, split, message))

    def class_label(self, value: int) -> str:
        """``"  3 Road"``, ``" 11 (ignore)"`` or ``"  7 (out of range)"`` for a mask value."""
        if value == self.ignore_index:
            return f"{value:>3} (ignore)"
        if self.num_classes is not None and 0 <= value < self.num_classes:
            name = self.class_names[value] if self.class_names else f"class_{value}"
            return f"{value:>3} {name}"
        return f"{value:>3} (out of range)"

    def _histogram_lines(self, summary: SplitSummary) -> list[str]:
        total = sum(summary.histogram.values())
        if total == 0:
            return ["  (no readable masks)"]
        values = set(summary.histogram)
        if self.num_classes is not None:
            values |= set(range(self.num_classes))  # show absent classes as 0 too
        lines = [f"  {'value / class':<24}{'pixels':>14}{'share':>9}"]
        for value in sorted(values):
            count = summary.histogram.get(value, 0)
            lines.append(f"  {self.class_label(value):<24}{count:>14,}{100.0 * count / total:>8.2f}%")
        return lines

    def format(self) -> str:
        """A readable multi-line report."""
        classes = "unknown number of classes"
        if self.num_classes is not None:
            classes = f"{self.num_classes} classes ({self.num_classes_source})"
        lines = [f"Data set {str(self.root)!r}: {self.layout} layout, {classes}, ignore index {self.ignore_index}"]
        for s in self.splits:
            lines.append("")
            lines.append(f"Split {s.name!r} ({s.source}): {s.images} images, {s.masks} masks, {s.pairs} pairs")
            lines.extend(self._histogram_lines(s))
        lines.append("")
        if self.issues:
            lines.append("Problems:")
            for issue in sorted(self.issues, key=lambda i: i.level != "error"):
                where = f"[{issue.split}] " if issue.split else ""
                lines.append(f"  {issue.level.upper():<8}{where}{issue.message}")
            lines.append("")
        n_err, n_warn = len(self.errors), len(self.warnings)
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"Result: {verdict} ({n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()
