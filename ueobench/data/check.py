"""``ueobench data check``: per split and role counts, and every missing or unreadable file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from .protocols import Protocol
from .sources import DomainData


def check_domain(protocol: Protocol, shift: str, data: DomainData, verify: bool = True, progress: Any = None) -> dict[str, Any]:
    """Count images per split and role, and list missing or unreadable files."""
    split = protocol.split(shift)
    known, target = set(split.known), set(split.target)
    report: dict[str, Any] = {"dataset": protocol.name, "domain": data.domain, "shift": shift,
                              "source": data.source, "location": data.location, "splits": {}}
    missing: list[str] = []
    unreadable: list[str] = []
    checked: set[str | int] = set()
    for role, entries in (("adapt", [e for e in data.adapt if e.label in target]), ("test", data.test)):
        counts = {"images": len(entries), "known": sum(e.label in known for e in entries)}
        counts["unknown"] = counts["images"] - counts["known"]
        counts["classes"] = len({e.label for e in entries})
        report["splits"][role] = counts
        task = progress.add_task(f"checking {data.domain}/{role}", total=len(entries)) if progress else None
        for e in entries:
            if task is not None:
                progress.advance(task)
            if e.ref in checked:
                continue
            checked.add(e.ref)
            if isinstance(e.ref, str) and os.path.isabs(e.ref):  # a file (array rows and dataset rows are not)
                if not Path(e.ref).is_file():
                    missing.append(e.ref)
                    continue
                if verify:
                    try:
                        with Image.open(e.ref) as im:
                            im.convert("RGB")
                    except Exception:  # noqa: BLE001
                        unreadable.append(e.ref)
            elif verify:
                try:
                    data.opener(e.ref)
                except Exception:  # noqa: BLE001
                    unreadable.append(str(e.ref))
    report["missing"] = missing
    report["unreadable"] = unreadable
    report["skipped"] = data.skipped
    return report
