"""Conversation data: read any format ``chatforge data import`` reads, and write canonical JSONL.

A conversation is a dict: ``{"messages": [{"role": "user", "content": …}, …], "meta": {…}}``
(preference pairs also carry ``chosen`` and ``rejected``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from . import _chatforge as _cf

PathLike = Union[str, Path]
__all__ = ["load", "import_", "save", "val_path_for"]


def _paths(paths: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    if isinstance(paths, (str, Path)):
        return [str(paths)]
    return [str(p) for p in paths]


def _read(paths: Union[PathLike, Sequence[PathLike]], **options: Any) -> Dict[str, Any]:
    return json.loads(
        _cf.read_data(
            _paths(paths),
            options.get("format"),
            options.get("skip_invalid", False),
            options.get("dedupe", False),
            options.get("min_turns", 1),
            options.get("max_chars"),
        )
    )


def load(
    paths: Union[PathLike, Sequence[PathLike]],
    *,
    format: Optional[str] = None,
    skip_invalid: bool = False,
    dedupe: bool = False,
    min_turns: int = 1,
    max_chars: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """The conversations in ``paths`` (files or folders; JSONL, JSON, CSV, ShareGPT, Alpaca,
    OpenAssistant, parquet, chat exports, …, detected by content unless ``format`` is given).
    A malformed record raises :class:`chatforge.ChatforgeError` naming its file and line, unless
    ``skip_invalid``."""
    r = _read(paths, format=format, skip_invalid=skip_invalid, dedupe=dedupe, min_turns=min_turns, max_chars=max_chars)
    return r["conversations"]


def val_path_for(out: PathLike) -> Path:
    """Where ``chatforge data import`` puts the validation split of ``out``: ``x.jsonl`` → ``x.val.jsonl``."""
    return Path(_cf.val_path_for(str(out)))


def save(
    conversations: Sequence[Dict[str, Any]],
    out: PathLike,
    *,
    val_split: float = 0.0,
    val_out: Optional[PathLike] = None,
    seed: Optional[int] = None,
) -> Dict[str, int]:
    """Writes conversations as canonical JSONL (atomically), holding out ``val_split`` of them
    (seeded; ``data import``'s seed by default) for validation beside it."""
    val = str(val_out) if val_out is not None else None
    train, held = _cf.write_data(json.dumps(list(conversations)), str(out), val, val_split, seed)
    return {"train": train, "val": held}


def import_(
    paths: Union[PathLike, Sequence[PathLike]],
    out: PathLike,
    *,
    val_split: float = _cf.VAL_SPLIT,
    val_out: Optional[PathLike] = None,
    seed: Optional[int] = None,
    format: Optional[str] = None,
    skip_invalid: bool = False,
    dedupe: bool = False,
    min_turns: int = 1,
    max_chars: Optional[int] = None,
) -> Dict[str, Any]:
    """``chatforge data import``: reads ``paths``, writes ``out`` and its validation split; returns
    what was read per file, what was dropped, and how many conversations each file got."""
    r = _read(paths, format=format, skip_invalid=skip_invalid, dedupe=dedupe, min_turns=min_turns, max_chars=max_chars)
    if not r["conversations"]:
        raise _cf.ChatforgeError("no conversations left to write")
    counts = save(r["conversations"], out, val_split=val_split, val_out=val_out, seed=seed)
    return {"files": r["files"], "dropped": r["dropped"], **counts}
