"""Shared fixtures: the sample conversations imported, a tokenizer trained on them, and a small
run trained once per session (all in temporary folders)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import chatforge

ROOT = Path(__file__).resolve().parents[2]

# A model small enough to train in seconds in a debug build.
MODEL = {"vocab_size": 0, "n_ctx": 64, "n_layer": 2, "n_head": 2, "n_embd": 32}


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("work")
    chatforge.data.import_(ROOT / "data" / "sample", d / "data" / "train.jsonl")
    chatforge.Tokenizer.train([d / "data" / "train.jsonl"], d / "tok", vocab_size=400)
    return d


def small_config(steps: int = 30, **train) -> chatforge.TrainConfig:
    return chatforge.TrainConfig(
        model=MODEL,
        train={"max_steps": steps, "batch_size": 8, "eval_every": 10, "checkpoint_every": 10, "lr": 3e-3, **train},
    )


@pytest.fixture(scope="session")
def run(work: Path) -> Path:
    out = work / "runs" / "base"
    chatforge.train(
        small_config(40),
        data=work / "data" / "train.jsonl",
        val=work / "data" / "train.val.jsonl",
        tokenizer=work / "tok",
        out=out,
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def cli() -> str:
    """The chatforge binary the Rust test harness built (CHATFORGE_BIN)."""
    path = os.environ.get("CHATFORGE_BIN")
    if not path:
        pytest.skip("CHATFORGE_BIN is not set (crates/cli/tests/python.rs sets it)")
    return path
