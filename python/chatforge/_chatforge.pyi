"""The Rust module under :mod:`chatforge`: structured values cross as JSON text; use the
``chatforge`` package's functions and classes, which wrap these."""

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

__version__: str
VAL_SPLIT: float

class ChatforgeError(Exception):
    """A chatforge operation failed; the message is the one the CLI prints."""

def read_data(
    paths: Sequence[str],
    format: Optional[str] = None,
    skip_invalid: bool = False,
    dedupe: bool = False,
    min_turns: int = 1,
    max_chars: Optional[int] = None,
) -> str: ...
def write_data(
    conversations: str, out: str, val_out: Optional[str] = None, val_split: float = 0.0, seed: Optional[int] = None
) -> Tuple[int, int]: ...
def val_path_for(out: str) -> Path: ...
def parse_config(text: str, resolve: bool = True) -> str: ...
def preset(name: str) -> str: ...
def validate_config(config: str) -> None: ...
def evaluate(run: str, val: Optional[str] = None, checkpoint: str = "best") -> str: ...
def export(
    model: str,
    out: str,
    format: str = "hf",
    quant: Optional[str] = None,
    int8: bool = False,
    checkpoint: str = "best",
    force: bool = False,
) -> str: ...

class Tokenizer:
    """A tokenizer with its chat template."""

    @staticmethod
    def load(path: "str | Path") -> "Tokenizer":
        """A tokenizer.json, a folder holding one (a run, an HF folder), a Hub id, or GPT-2's two files."""
    @staticmethod
    def train(
        inputs: Sequence["str | Path"],
        out: "str | Path",
        vocab_size: int,
        kind: str = "bpe",
        min_frequency: Optional[int] = None,
        seed: Optional[int] = None,
        val: Optional["str | Path"] = None,
    ) -> Tuple["Tokenizer", str]:
        """Trains on conversation files into the folder ``out``; the tokenizer and its stats (JSON)."""
    def encode(self, text: str) -> List[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...
    def render_prompt(self, conversation: str, system: Optional[str] = None) -> List[int]:
        """The ids of a conversation (JSON) rendered for the assistant's next reply."""
    @property
    def vocab_size(self) -> int: ...
    def save(self, path: "str | Path") -> None: ...

class Training:
    @staticmethod
    def start(
        config: str,
        out: str,
        tokenizer: Optional[str] = None,
        resume: bool = False,
        evaluate: bool = True,
        sync: bool = False,
    ) -> "Training": ...
    def next_event(self, timeout: float = 0.1) -> Optional[str]: ...
    def ack(self) -> None: ...
    def stop(self) -> None: ...
    @property
    def finished(self) -> bool: ...
    @property
    def out(self) -> Path: ...
    def result(self) -> str: ...

class Stream:
    def __iter__(self) -> "Stream": ...
    def __next__(self) -> Optional[str]: ...
    def close(self) -> None: ...
    @property
    def result(self) -> Optional[str]: ...

class Model:
    @staticmethod
    def load(
        path: str,
        checkpoint: str = "best",
        tokenizer: Optional[str] = None,
        weights: str = "f32",
        adapter: Optional[str] = None,
    ) -> "Model": ...
    def info(self) -> str: ...
    @property
    def tokenizer(self) -> Tokenizer: ...
    def generate(self, args: str) -> str: ...
    def stream(self, args: str) -> Stream: ...
