"""A durable local journal of settlements the store could not take yet.

One small JSON file per pending settlement, written atomically (temp file, fsync, rename) in
DATA_DIR/journal. Any worker may replay any file: settlement is idempotent per request id, so
a file replayed twice still charges once.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class PendingSettlement:
    user_id: str
    request_id: str
    cost: str  # Decimal as text: exact, never float
    model: str
    prompt_tokens: int
    completion_tokens: int
    description: str
    deployment: str | None = None
    usage: dict[str, Any] | None = None

    @property
    def amount(self) -> Decimal:
        return Decimal(self.cost)


class SettlementJournal:
    """Append-only files of unsettled charges; removed once the store has them."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def write(self, entry: PendingSettlement) -> Path:
        """Persist one settlement durably before the caller moves on."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{_safe(entry.request_id)}.json"
        tmp = self.directory / f".{final.name}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, orjson.dumps(asdict(entry)))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    def pending(self) -> list[tuple[Path, PendingSettlement]]:
        """Every settlement still waiting, oldest first."""
        if not self.directory.is_dir():
            return []
        out: list[tuple[Path, PendingSettlement]] = []
        files = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for path in files:
            try:
                out.append((path, PendingSettlement(**orjson.loads(path.read_bytes()))))
            except (OSError, ValueError, TypeError):
                continue  # removed by another worker meanwhile, or a torn file we can't use
        return out

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def set_aside(self, path: Path) -> None:
        """Move a settlement the store refuses into `refused/`, for an operator to look at."""
        refused = self.directory / "refused"
        refused.mkdir(exist_ok=True)
        path.replace(refused / path.name)


def _safe(request_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in request_id)[:128]
