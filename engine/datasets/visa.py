"""VisA, read through its split CSV (columns object, split, label, image, mask).

The CSV, not the folder tree, defines VisA's splits, so the reader starts from `ROOT/split_csv/1cls.csv`
(or a CSV passed as root). Paths in the CSV are relative to the VisA root, the folder holding split_csv/.
Objects are the categories; label 'normal' is GOOD, 'anomaly' is DEFECTIVE with defect_type "anomaly"
(the 1cls split carries no finer defect type).

Missing image files are LoadIssues, capped at 20 lines plus one summary, because a CSV downloaded without
its images would otherwise produce 10k issue lines. `check_files=False` parses the CSV without touching
the image files (for inspecting a split before the images are downloaded).
"""

from __future__ import annotations

import csv
from pathlib import Path

from engine.datasets.common import add_capped, checked_mask, finish, probe_size, select_categories, split_name
from engine.datasets.registry import register_format
from engine.datasets.types import DEFECTIVE, GOOD, Dataset, LoadIssue, Sample
from engine.errors import DatasetError

DEFAULT_CSV = Path("split_csv") / "1cls.csv"
REQUIRED_COLUMNS = ("object", "split", "label", "image")
LABELS = {"normal": GOOD, "anomaly": DEFECTIVE}


def _csv_and_base(root: Path) -> tuple[Path, Path]:
    if root.is_file():
        base = root.parent.parent if root.parent.name == "split_csv" else root.parent
        return root, base
    return root / DEFAULT_CSV, root


def _has_visa_header(csv_path: Path) -> bool:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError):
        return False
    return all(c in [h.strip() for h in header] for c in REQUIRED_COLUMNS)


@register_format("visa", "VisA split CSV (split_csv/1cls.csv: object, split, label, image, mask)")
class VisaReader:
    """VisA anomaly-detection set, splits taken from its CSV."""

    name = "visa"

    def __init__(self, check_files: bool = True) -> None:
        self.check_files = check_files

    def detect(self, root: Path) -> bool:
        if root.is_file() and root.suffix.lower() != ".csv":
            return False
        csv_path, _ = _csv_and_base(root)
        return csv_path.is_file() and _has_visa_header(csv_path)

    def load(self, root: Path, category: str | None = None) -> Dataset:
        csv_path, base = _csv_and_base(root)
        if not csv_path.is_file():
            raise DatasetError(f"{csv_path}: VisA split CSV not found")
        issues: list[LoadIssue] = []
        rows = _read_rows(csv_path, issues)
        objects = sorted({r["object"] for _, r in rows})
        chosen = select_categories(root, "VisA", objects, category)
        ds = Dataset(root=root, format=self.name, categories=chosen, issues=issues)
        missing_images: list[Path] = []
        missing_masks: list[Path] = []
        for line_no, row in rows:
            if row["object"] not in chosen:
                continue
            label = LABELS.get(row["label"].lower())
            if label is None:
                issues.append(LoadIssue(csv_path, f"line {line_no}: unknown label '{row['label']}'"))
                continue
            image = base / row["image"]
            mask_rel = (row.get("mask") or "").strip()
            mask = base / mask_rel if mask_rel else None
            if self.check_files:
                if not image.is_file():
                    missing_images.append(image)
                    continue
                size = probe_size(image, issues)
                if size is None:
                    continue
                if mask is not None and not mask.is_file():
                    missing_masks.append(mask)
                    mask = None
                mask = checked_mask(image, size, mask, issues)
            ds.samples.append(
                Sample(
                    image,
                    split=split_name(row["split"]),
                    label=label,
                    defect_type="good" if label == GOOD else "anomaly",
                    mask_path=mask,
                    category=row["object"],
                )
            )
        if not ds.samples and missing_images:
            raise DatasetError(
                f"{base}: none of the {len(missing_images)} images listed in {csv_path.name} exist there "
                "(is this the VisA root, with the images downloaded?)"
            )
        add_capped(issues, missing_images, f"image listed in {csv_path.name} not found", csv_path)
        add_capped(issues, missing_masks, f"mask listed in {csv_path.name} not found", csv_path)
        return finish(ds)


def _read_rows(csv_path: Path, issues: list[LoadIssue]) -> list[tuple[int, dict[str, str]]]:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in REQUIRED_COLUMNS if c not in fields]
            if missing:
                raise DatasetError(f"{csv_path}: not a VisA split CSV (missing columns {', '.join(missing)})")
            reader.fieldnames = fields
            rows: list[tuple[int, dict[str, str]]] = []
            for row in reader:
                values = [row.get(c) for c in REQUIRED_COLUMNS]
                if any(v is None or not v.strip() for v in values):
                    issues.append(LoadIssue(csv_path, f"line {reader.line_num}: missing object/split/label/image"))
                    continue
                rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{csv_path}: cannot read VisA split CSV ({exc})") from None
