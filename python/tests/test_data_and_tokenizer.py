"""chatforge.data and chatforge.Tokenizer: the same readers and tokenizer as the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import chatforge
from conftest import ROOT


def test_load_reads_every_format_the_cli_reads(tmp_path: Path) -> None:
    convs = chatforge.data.load(ROOT / "data" / "sample")
    assert len(convs) > 100
    first = convs[0]
    assert [m["role"] for m in first["messages"]][:2] == ["user", "assistant"]
    # ShareGPT-style JSON, detected by content.
    sharegpt = tmp_path / "chats.json"
    sharegpt.write_text(
        json.dumps([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}])
    )
    (conv,) = chatforge.data.load(sharegpt)
    assert conv["messages"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def test_a_malformed_record_names_its_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    bad.write_text(good + "\n{not json\n")
    with pytest.raises(chatforge.ChatforgeError, match=r"bad\.jsonl.*2"):
        chatforge.data.load(bad)
    assert len(chatforge.data.load(bad, skip_invalid=True)) == 1


def test_import_writes_what_the_cli_writes(tmp_path: Path, cli: str) -> None:
    report = chatforge.data.import_(ROOT / "data" / "sample", tmp_path / "py" / "train.jsonl", dedupe=True)
    assert report["train"] > 0 and report["val"] > 0
    assert report["files"][0]["detected"]
    (tmp_path / "cli").mkdir()
    subprocess.run(
        [cli, "data", "import", str(ROOT / "data" / "sample"), "-o", str(tmp_path / "cli" / "train.jsonl"), "--dedupe"],
        check=True,
        capture_output=True,
    )
    for name in ["train.jsonl", "train.val.jsonl"]:
        assert (tmp_path / "py" / name).read_text() == (tmp_path / "cli" / name).read_text(), name


def test_save_round_trips(tmp_path: Path) -> None:
    convs = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(20)]
    counts = chatforge.data.save(convs, tmp_path / "c.jsonl", val_split=0.25, seed=3)
    assert counts == {"train": 15, "val": 5}
    back = chatforge.data.load([tmp_path / "c.jsonl", tmp_path / "c.val.jsonl"])
    assert sorted(c["messages"][0]["content"] for c in back) == sorted(f"q{i}" for i in range(20))


def test_tokenizer_trains_loads_encodes_and_decodes(work: Path, tmp_path: Path) -> None:
    tok = chatforge.Tokenizer.load(work / "tok")
    assert tok.vocab_size == 400
    text = "What is the capital of France?"
    ids = tok.encode(text)
    assert ids and all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == text
    # Trained again with the same settings: the same tokenizer (seeded).
    again, stats = chatforge.Tokenizer.train([work / "data" / "train.jsonl"], tmp_path / "tok2", vocab_size=400)
    assert again.encode(text) == ids
    assert json.loads(stats)["vocab_size"] == 400
    prompt = tok.render_prompt(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}))
    assert tok.decode(prompt) == "<|user|>Hi<|end|><|assistant|>"


def test_tokenizer_errors_are_chatforge_errors(tmp_path: Path) -> None:
    with pytest.raises(chatforge.ChatforgeError):
        chatforge.Tokenizer.load(tmp_path / "missing.json")
    with pytest.raises(chatforge.ChatforgeError, match="kind"):
        chatforge.Tokenizer.train([ROOT / "data" / "sample"], tmp_path / "t", vocab_size=300, kind="nonsense")
