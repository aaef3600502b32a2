"""Human-readable class names for the exported metadata.

Two file formats are accepted:
- a TSV with a header ``index  wnid  name`` (like ``imagenet_classes.tsv``): classes are matched by wnid
  to the training folders, or taken in index order when there are no folders (random-init exports);
- a plain list, one name per line, in class-index order.
"""

from __future__ import annotations

import csv
from pathlib import Path

from alexnet_store import Label


class LabelsError(ValueError):
    pass


def read_label_file(path: str | Path) -> list[Label]:
    """Labels in index order; TSV rows keep their wnid as the label id."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LabelsError(f"cannot read labels file {path}: {exc.strerror}") from exc
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise LabelsError(f"labels file {path} is empty")
    header = [h.strip().lower() for h in lines[0].split("\t")]
    if "\t" in lines[0] and "name" in header:
        rows = list(csv.DictReader(lines, delimiter="\t", fieldnames=header))[1:]
        id_key = "wnid" if "wnid" in header else ("id" if "id" in header else None)
        labels = []
        for i, row in enumerate(rows):
            if "index" in header and row.get("index") and int(row["index"]) != i:
                raise LabelsError(f"{path}: row {i + 2} has index {row['index']}, expected {i} (rows must be in order)")
            name = (row.get("name") or "").strip()
            labels.append(Label(id=(row.get(id_key) or name).strip() if id_key else name, name=name))
        return labels
    return [Label(id=ln.strip(), name=ln.strip()) for ln in lines]


def labels_for_classes(classes: list[str], label_file: str | Path | None,
                       names: list[str] | None = None) -> list[Label]:
    """Labels for `classes` (training folders, in class-index order), named from `label_file` if given, else by
    the data set's own `names` (Fashion-MNIST's), else by the folder names."""
    if label_file is None:
        return [Label(id=c, name=n) for c, n in zip(classes, names or classes, strict=True)]
    return name_classes(classes, read_label_file(label_file), label_file)


def name_classes(classes: list[str], known: list[Label], label_file: str | Path) -> list[Label]:
    """Labels for `classes` named from `known`, the labels already read from `label_file` (named in errors).

    Folder names are looked up by id (wnid) and by name; a file that matches no folder but has one entry
    per class is taken positionally. A partial match is an error: silently mislabelled classes are worse.
    """
    by_key = {lab.id: lab for lab in known} | {lab.name: lab for lab in known}
    missing = [c for c in classes if c not in by_key]
    if not missing:
        return [Label(id=c, name=by_key[c].name) for c in classes]
    if len(missing) == len(classes) and len(known) == len(classes):
        return [Label(id=c, name=lab.name) for c, lab in zip(classes, known, strict=True)]
    raise LabelsError(
        f"labels file {label_file} does not name the classes {missing[:5]}{'...' if len(missing) > 5 else ''} "
        f"({len(missing)} of {len(classes)} folders; the file has {len(known)} entries)"
    )
