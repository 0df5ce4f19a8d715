"""chatforge.train, Model, evaluate and export: the CLI's runs, from Python."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import chatforge
from conftest import MODEL, ROOT, small_config


def steps_logged(run: Path) -> dict:
    out = {}
    for line in (run / "logs.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "step":
            out[e["step"]] = e["loss"]
    return out


def test_config_keys_are_the_config_files(tmp_path: Path) -> None:
    small = chatforge.TrainConfig.preset("small")
    assert small.to_dict()["model"]["n_layer"] >= 1
    f = tmp_path / "c.toml"
    f.write_text("[model]\nn_layer = 3\nn_head = 2\n[train]\nmax_steps = 7\n")
    cfg = chatforge.TrainConfig.from_toml(f)
    full = cfg.to_dict()
    assert full["model"]["n_layer"] == 3
    assert full["model"]["n_kv_head"] == 2  # derived, as the CLI derives it
    assert full["train"]["max_steps"] == 7
    f.write_text("[train]\nmax_stepz = 7\n")
    with pytest.raises(chatforge.ChatforgeError, match="max_stepz"):
        chatforge.TrainConfig.from_toml(f)
    with pytest.raises(chatforge.ChatforgeError, match="lr"):
        chatforge.TrainConfig(train={"lr": 5.0}).validate()
    with pytest.raises(chatforge.ChatforgeError, match="no preset"):
        chatforge.TrainConfig.preset("enormous")


def test_a_callback_stops_training_and_resume_finishes_it(work: Path) -> None:
    out = work / "runs" / "stopped"
    seen = []

    def on_step(e: dict):
        seen.append(e["step"])
        return e["step"] < 12  # False at step 12: stop there

    r = chatforge.train(
        small_config(30), data=work / "data" / "train.jsonl", tokenizer=work / "tok", out=out,
        on_step=on_step, progress=False,
    )
    assert r.steps == 12 and r.stopped
    assert seen == list(range(1, 13))
    assert any((out / "checkpoints").iterdir())
    done = chatforge.train(
        small_config(30), data=work / "data" / "train.jsonl", tokenizer=work / "tok", out=out,
        resume=True, progress=False,
    )
    assert done.steps == 30 and not done.stopped
    # Every step logged once, in order, across the stop.
    assert sorted(steps_logged(out)) == list(range(1, 31))


def test_a_background_run_streams_events_and_stops(work: Path) -> None:
    h = chatforge.train(
        small_config(2000), data=work / "data" / "train.jsonl", tokenizer=work / "tok",
        out=work / "runs" / "background", wait=False, progress=False,
    )
    assert isinstance(h, chatforge.Training)
    assert h.running
    events = []
    for e in h.events():
        events.append(e["event"])
        if e["event"] == "step" and e["step"] == 5:
            h.stop()
    r = h.wait()
    assert events[0] == "start" and "step" in events
    assert 5 <= r.steps < 2000 and r.stopped
    assert not h.running


def test_a_failing_callback_stops_the_run_and_raises(work: Path) -> None:
    def boom(e: dict):
        if e["step"] == 3:
            raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        chatforge.train(
            small_config(500), data=work / "data" / "train.jsonl", tokenizer=work / "tok",
            out=work / "runs" / "boom", on_step=boom, progress=False,
        )
    assert max(steps_logged(work / "runs" / "boom")) < 500


def test_training_errors_carry_the_cli_message(work: Path, cli: str) -> None:
    missing = work / "nothing.jsonl"
    with pytest.raises(chatforge.ChatforgeError) as e:
        chatforge.train(small_config(5), data=missing, tokenizer=work / "tok", out=work / "runs" / "x", progress=False)
    p = subprocess.run(
        [cli, "train", "--data", str(missing), "--tokenizer", str(work / "tok"), "-o", str(work / "runs" / "y"),
         "--max-steps", "5"],
        capture_output=True, text=True,
    )
    assert p.returncode != 0
    assert str(e.value) in p.stderr, (str(e.value), p.stderr)


def test_the_same_run_from_python_and_from_the_cli(work: Path, tmp_path: Path, cli: str) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        "[model]\nvocab_size = 0\nn_ctx = 64\nn_layer = 2\nn_head = 2\nn_embd = 32\n"
        "[train]\nmax_steps = 25\nbatch_size = 8\neval_every = 5\nlr = 3e-3\nseed = 11\n"
    )
    data, val, tok = work / "data" / "train.jsonl", work / "data" / "train.val.jsonl", work / "tok"
    py = tmp_path / "py"
    chatforge.train(chatforge.TrainConfig.from_toml(cfg), data=data, val=val, tokenizer=tok, out=py, progress=False)
    c = tmp_path / "cli"
    subprocess.run(
        [cli, "train", "--config", str(cfg), "--data", str(data), "--val", str(val), "--tokenizer", str(tok),
         "-o", str(c)],
        check=True, capture_output=True,
    )
    assert steps_logged(py) == steps_logged(c)
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (py, c))
    clock = ("created", "finished", "updated", "seconds", "time", "elapsed", "tokens_per_s", "host", "pid")

    def same(m):
        """The manifest without what the clock or the machine decides."""
        if isinstance(m, dict):
            return {k: same(v) for k, v in m.items() if not any(w in k for w in clock)}
        if isinstance(m, list):
            return [same(v) for v in m]
        return m
    assert json.dumps(a["config"]).replace(str(py), "RUN") == json.dumps(b["config"]).replace(str(c), "RUN")
    assert json.dumps(same(a), sort_keys=True, default=str).replace(str(py), "RUN") == json.dumps(
        same(b), sort_keys=True, default=str
    ).replace(str(c), "RUN")
    assert json.loads((py / "eval" / "metrics.json").read_text())["loss"] == pytest.approx(
        json.loads((c / "eval" / "metrics.json").read_text())["loss"], rel=1e-6
    )


def test_generate_chat_and_streams(run: Path) -> None:
    m = chatforge.Model.load(run)
    assert m.info["n_ctx"] == MODEL["n_ctx"] and m.info["chat"]
    greedy = {"temperature": 0, "max_new_tokens": 12}
    one = m.generate("Hello", **greedy)
    assert isinstance(one, chatforge.Reply) and one.new_tokens <= 12 and one.finish in ("stop", "length")
    both = m.generate(["Hello", "What is the capital of France?"], **greedy)
    assert both[0] == one
    reply = m.chat([{"role": "user", "content": "Hello"}], **greedy)
    assert reply == one  # a one-message chat is the prompt through the template
    s = m.chat("Hello", stream=True, **greedy)
    pieces = list(s)
    assert "".join(pieces).strip() == reply
    assert s.reply == reply and s.reply.finish == reply.finish
    # A stream left half-read stops its decoding; the model serves the next call at once.
    long = m.generate("Tell me a story", stream=True, temperature=0.9, max_new_tokens=50, seed=2)
    first = next(long)
    assert isinstance(first, str)
    long.close()
    del long
    assert m.generate("Hello", **greedy) == one
    with pytest.raises(TypeError, match="temprature"):
        m.generate("Hi", temprature=0)


def test_load_errors_name_the_path(tmp_path: Path, cli: str) -> None:
    with pytest.raises(chatforge.ChatforgeError) as e:
        chatforge.Model.load(tmp_path / "nope")
    assert "nope" in str(e.value)
    p = subprocess.run([cli, "generate", "--model", str(tmp_path / "nope"), "--prompt", "x"], capture_output=True, text=True)
    assert str(e.value) in p.stderr, (str(e.value), p.stderr)


def test_evaluate_and_export(run: Path, tmp_path: Path) -> None:
    metrics = chatforge.evaluate(run)
    assert metrics["loss"] > 0 and metrics["perplexity"] > 1
    assert json.loads((run / "eval" / "metrics.json").read_text())["loss"] == pytest.approx(metrics["loss"])
    hf = chatforge.export(run, tmp_path / "hf", format="hf")
    assert (tmp_path / "hf" / "config.json").is_file() and hf["files"]
    chatforge.export(run, tmp_path / "m.gguf", format="gguf", quant="q8_0")
    gguf = list((tmp_path).glob("m.gguf*"))
    assert gguf
    # The export loads back as a model, and decodes as the run does (f32 HF folder).
    back = chatforge.Model.load(tmp_path / "hf")
    assert back.generate("Hello", temperature=0, max_new_tokens=8, raw=True) == chatforge.Model.load(run).generate(
        "Hello", temperature=0, max_new_tokens=8, raw=True
    )
    with pytest.raises(chatforge.ChatforgeError, match="exists"):
        chatforge.export(run, tmp_path / "hf", format="hf")


def test_progress_bar_with_tqdm(work: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("tqdm")
    chatforge.train(
        small_config(6), data=work / "data" / "train.jsonl", tokenizer=work / "tok", out=work / "runs" / "bar",
        progress=True,
    )
    err = capsys.readouterr().err
    assert "train" in err and "6/6" in err


def test_the_quickstart_example_runs(tmp_path: Path) -> None:
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["quickstart.py", "--out", str(tmp_path / "q"), "--steps", "10"]
    try:
        runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert (tmp_path / "q" / "export-hf" / "config.json").is_file()
    assert any((tmp_path / "q" / "export-gguf").glob("*.gguf"))
    assert json.loads((tmp_path / "q" / "chat" / "manifest.json").read_text())["config"]["train"]["mode"] == "sft"


def test_a_model_by_hub_id() -> None:
    """A Llama-family model by Hub id (fetched from the fixture Hub the harness serves), decoding
    as the same folder loaded locally, through its own chat template."""
    import os

    repo = os.environ.get("CHATFORGE_TEST_HUB_MODEL")
    if not repo:
        pytest.skip("no fixture Hub (crates/cli/tests/python.rs serves one)")
    hub = chatforge.Model.load(repo)
    local = chatforge.Model.load(os.environ["CHATFORGE_TEST_HUB_FOLDER"])
    assert hub.info["chat"]
    greedy = {"temperature": 0, "max_new_tokens": 6}
    assert hub.chat("Hi", **greedy) == local.chat("Hi", **greedy)
    assert hub.tokenizer.encode("Hello world") == local.tokenizer.encode("Hello world")
    with pytest.raises(chatforge.ChatforgeError, match="not-there"):
        chatforge.Model.load("HuggingFaceTB/not-there")
