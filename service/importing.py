"""What `mend import` reads and how it sends it: a file of corrections, POSTed to /edits/import in batches, with
a progress bar and every item's outcome.

Formats: JSON Lines of {"prompt", "target"} (and an optional "key", the item's idempotency key), or a zsRE or
CounterFact JSON list (each record's edit prompt and new answer), as the data sets in ../shared/data are.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from .client import MendClient
from .schemas import ImportedItem, ImportItem


def read_items(path: Path, n: int | None = None) -> list[ImportItem]:
    """The corrections in a file, in order; ValueError naming the line of a bad one."""
    text = path.read_text()
    if path.suffix == ".jsonl" or not text.lstrip().startswith("["):
        items = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(ImportItem.model_validate_json(line))
                except ValueError as e:
                    raise ValueError(f"{path}:{line_no}: not an item {{prompt, target[, key]}}: {e}") from None
        return items[:n]
    from editor_core import load_records  # the data sets' parser (imports torch): only for their formats

    return [ImportItem(prompt=r.edit.prompt, target=r.edit.target) for r in load_records(str(path), n)]


def send(mend: MendClient, items: list[ImportItem], batch: int, author: str, note: str, force: bool,
         progress: bool = True) -> Iterator[tuple[int, ImportedItem]]:
    """Each item's outcome (its place in `items`, what the server said), batch by batch. Safe to run again after
    a crash: every item is idempotent by its key, so what landed is reported as repeated."""
    counts: Counter[str] = Counter()
    with tqdm(total=len(items), unit="edit", disable=not progress) as bar:
        for start in range(0, len(items), batch):
            out = mend.import_edits(items[start : start + batch], author=author, note=note, force=force)
            for item in out.items:
                counts[item.status] += 1
                yield start + item.index, item
            bar.update(len(out.items))
            bar.set_postfix(counts)


def report_line(index: int, item: ImportedItem) -> str:
    return json.dumps({**item.model_dump(exclude_none=True), "index": index})
