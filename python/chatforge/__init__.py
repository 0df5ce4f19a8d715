"""chatforge from Python: the same Rust code as the ``chatforge`` command, for notebooks and scripts.

    import chatforge
    convs = chatforge.data.load("chats.json")                      # any format `data import` reads
    chatforge.data.import_("chats.json", "data/train.jsonl")       # + data/train.val.jsonl
    tok = chatforge.Tokenizer.train(["data/train.jsonl"], "tok", vocab_size=2000)
    result = chatforge.train(chatforge.TrainConfig.preset("small"), data="data/train.jsonl",
                             tokenizer="tok", out="runs/mine", max_steps=300)
    model = chatforge.Model.load("runs/mine")
    print(model.chat("Hello!"))
    for piece in model.chat("Tell me more", stream=True):
        print(piece, end="", flush=True)
    chatforge.export("runs/mine", "exports/mine-hf", format="hf")

Errors are raised as :class:`ChatforgeError` with the message the CLI prints.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from . import _chatforge as _cf
from . import data
from ._chatforge import ChatforgeError, Tokenizer

__version__ = _cf.__version__
__all__ = [
    "ChatforgeError",
    "Model",
    "Reply",
    "Tokenizer",
    "TrainConfig",
    "TrainResult",
    "Training",
    "data",
    "evaluate",
    "export",
    "train",
]

PathLike = Union[str, Path]
Messages = Union[str, Sequence[Dict[str, str]]]


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


class TrainConfig:
    """A run's settings: the ``[model]``, ``[train]`` and ``[lora]`` sections of a config file, with
    the same keys and defaults as ``chatforge train --config``. The sections hold the keys set
    (by a preset, a file or you); :meth:`to_dict` gives every key, defaults and derived values
    (``n_kv_head`` from ``n_head``, …) filled in.

    >>> cfg = TrainConfig(model={"n_layer": 2, "n_embd": 64}, train={"max_steps": 100})
    >>> cfg.train["lr"] = 1e-3
    >>> cfg.to_dict()["train"]["batch_size"]
    8
    """

    def __init__(
        self,
        model: Optional[Dict[str, Any]] = None,
        train: Optional[Dict[str, Any]] = None,
        lora: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.model: Dict[str, Any] = dict(model or {})
        self.train: Dict[str, Any] = dict(train or {})
        self.lora: Dict[str, Any] = dict(lora or {})

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """From a dict shaped like a config file (``{"model": …, "train": …, "lora": …}``)."""
        return cls(d.get("model"), d.get("train"), d.get("lora"))

    @classmethod
    def from_toml(cls, path: PathLike) -> "TrainConfig":
        """Reads a config file, as ``chatforge train --config`` does (unknown keys are errors)."""
        return cls.from_dict(json.loads(_cf.parse_config(Path(path).read_text(), False)))

    @classmethod
    def preset(cls, name: str) -> "TrainConfig":
        """A bundled preset: ``tiny``, ``small``, … (``configs/<name>.toml``)."""
        return cls.from_dict(json.loads(_cf.preset(name)))

    def to_dict(self) -> Dict[str, Any]:
        """Every setting, as the run's manifest records it."""
        given = {"model": self.model, "train": self.train, "lora": self.lora}
        return json.loads(_cf.parse_config(json.dumps(given, default=str), True))

    def validate(self) -> None:
        """Raises :class:`ChatforgeError` for settings ``chatforge train`` would refuse."""
        _cf.validate_config(json.dumps(self.to_dict()))

    def __repr__(self) -> str:
        return f"TrainConfig(model={self.model!r}, train={self.train!r}, lora={self.lora!r})"


@dataclass
class TrainResult:
    """How a run ended: its summary, and its evaluation when one was made."""

    out: Path
    steps: int
    seconds: float
    tokens: int
    last_loss: Optional[float]
    best_val_loss: Optional[float]
    losses: List[float]
    stopped: Optional[str]
    metrics: Optional[Dict[str, Any]] = None
    eval_error: Optional[str] = None
    events: List[Dict[str, Any]] = field(default_factory=list, repr=False)


class Training:
    """A run training on a background thread (the GIL released). Iterate :meth:`events`, or pass
    ``on_step`` to :func:`train`; :meth:`stop` ends it after the current step with a checkpoint."""

    def __init__(self, inner: Any, on_event: Optional[Callable[[Dict[str, Any]], Any]], bar: Any) -> None:
        self._inner = inner
        self._sync = on_event is not None
        self._on_event = on_event
        self._bar = bar
        self._events: List[Dict[str, Any]] = []
        self._error: Optional[BaseException] = None
        self._pump: Optional[threading.Thread] = None

    @property
    def out(self) -> Path:
        return Path(self._inner.out)

    @property
    def running(self) -> bool:
        return not self._inner.finished

    def stop(self) -> None:
        """Asks the run to stop after the current step (it saves a checkpoint first)."""
        self._inner.stop()

    def events(self, timeout: float = 0.1) -> Iterator[Dict[str, Any]]:
        """Each event as it happens (``start``, ``step``, ``eval``, ``checkpoint``, …: the lines of
        the run's logs.jsonl), until the run ends. A run started with callbacks sends its events
        to them instead."""
        if self._pump is not None and threading.current_thread() is not self._pump:
            raise ChatforgeError("this run's events go to its callbacks (on_step, on_event, progress)")
        while True:
            line = self._inner.next_event(timeout)
            if line is not None:
                e = json.loads(line)
                self._events.append(e)
                yield e
            elif self._inner.finished:
                # Events sent just before the end are still queued.
                line = self._inner.next_event(0.0)
                if line is None:
                    return
                e = json.loads(line)
                self._events.append(e)
                yield e

    def _follow(self) -> None:
        try:
            for e in self.events():
                if self._bar is not None:
                    self._bar(e)
                try:
                    if self._on_event is not None and self._on_event(e) is False:
                        self.stop()
                finally:
                    if self._sync and e["event"] == "step":
                        self._inner.ack()
        except BaseException as e:  # a callback's error stops the run and is raised by wait()
            self._error = e
            self.stop()
            for _ in self.events():
                pass
        finally:
            if self._bar is not None:
                self._bar(None)

    def _start_follower(self) -> None:
        self._pump = threading.Thread(target=self._follow, name="chatforge-train-events", daemon=True)
        self._pump.start()

    def wait(self) -> TrainResult:
        """Waits for the end (Ctrl-C stops the run with a checkpoint, then raises KeyboardInterrupt)."""
        try:
            if self._pump is None:
                self._follow()
            else:
                while self._pump.is_alive():
                    self._pump.join(0.1)
        except KeyboardInterrupt:
            self.stop()
            if self._pump is not None:
                self._pump.join()
            self._inner.result()
            raise
        r = json.loads(self._inner.result())
        if self._error is not None:
            raise self._error
        s = r["summary"]
        return TrainResult(
            out=self.out,
            steps=s["steps"],
            seconds=s["seconds"],
            tokens=s["tokens"],
            last_loss=s["last_loss"],
            best_val_loss=s["best_val_loss"],
            losses=s["losses"],
            stopped=s["stopped"],
            metrics=r.get("metrics"),
            eval_error=r.get("eval_error"),
            events=self._events,
        )


def _progress_bar(enabled: Optional[bool]) -> Optional[Callable[[Optional[Dict[str, Any]]], None]]:
    """A tqdm bar fed by the run's events, when tqdm is installed (``progress=None``) or asked for."""
    if enabled is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if enabled:
            raise ChatforgeError("progress=True needs tqdm: pip install tqdm")
        return None
    bar: Dict[str, Any] = {}

    def update(e: Optional[Dict[str, Any]]) -> None:
        if e is None:
            if "bar" in bar:
                bar["bar"].close()
            return
        if e["event"] == "start":
            bar["bar"] = tqdm(total=e["steps"], initial=e["start_step"], unit="step", desc="train")
        elif e["event"] == "step" and "bar" in bar:
            b = bar["bar"]
            b.update(e["step"] - b.n)
            b.set_postfix(loss=f"{e['loss']:.4f}", tok_s=f"{e['tokens_per_s']:.0f}", refresh=False)
        elif e["event"] == "eval" and "bar" in bar:
            bar["bar"].set_postfix(val_loss=f"{e['val_loss']:.4f}", refresh=False)

    return update


def train(
    config: Optional[TrainConfig] = None,
    data: Optional[PathLike] = None,
    out: PathLike = "runs/python",
    *,
    val: Optional[PathLike] = None,
    tokenizer: Optional[PathLike] = None,
    init: Optional[PathLike] = None,
    mode: Optional[str] = None,
    resume: bool = False,
    evaluate: bool = True,
    on_step: Optional[Callable[[Dict[str, Any]], Any]] = None,
    on_event: Optional[Callable[[Dict[str, Any]], Any]] = None,
    progress: Optional[bool] = None,
    wait: bool = True,
    **train_settings: Any,
) -> Union[TrainResult, Training]:
    """Trains a run into ``out``, as ``chatforge train`` does.

    ``data`` (and ``val``) are token shards or conversation files (tokenized with ``tokenizer``);
    ``init`` is a run, an HF folder or a Hub id to fine-tune; ``mode`` is pretrain, sft, lora,
    qlora, dpo or orpo; further keywords set ``[train]`` keys (``max_steps=300``, ``lr=1e-3``).
    ``on_step(event)`` is called after each optimizer step with its dict (step, loss, lr,
    tokens_per_s, …); returning ``False`` stops the run after that step, with a checkpoint.
    ``on_event`` sees every event. With a callback, each step waits for it, so its verdict
    stops the run at exactly that step. A tqdm bar is shown when tqdm is installed
    (``progress``). With ``wait=False`` the run's :class:`Training` handle is returned at once:
    iterate its :meth:`Training.events`, or its callbacks run on a thread of their own.
    """
    given = config or TrainConfig()
    t = dict(given.train)
    t.update(train_settings)
    for key, value in (("data", data), ("val", val), ("init", init)):
        if value is not None:
            t[key] = str(value)
    if mode is not None:
        t["mode"] = mode
    cfg = TrainConfig(given.model, t, given.lora).to_dict()

    def dispatch(e: Dict[str, Any]) -> Any:
        verdict = on_event(e) if on_event is not None else None
        if e["event"] == "step" and on_step is not None and on_step(e) is False:
            return False
        return verdict

    callbacks = on_step is not None or on_event is not None
    # In the background, a bar only when asked for (a notebook cell has returned by then).
    bar = _progress_bar(progress if wait or progress else False)
    inner = _cf.Training.start(
        json.dumps(cfg), str(out), str(tokenizer) if tokenizer is not None else None, resume, evaluate, callbacks
    )
    handle = Training(inner, dispatch if callbacks else None, bar)
    if not wait:
        if callbacks or bar is not None:
            handle._start_follower()
        return handle
    return handle.wait()


class Reply(str):
    """A reply's text, with how it was made: ``finish`` (stop, length, …), token counts, speed."""

    finish: str
    prompt_tokens: int
    new_tokens: int
    tokens_per_s: float

    @classmethod
    def _of(cls, r: Dict[str, Any]) -> "Reply":
        s = cls(r["text"])
        s.finish = r["finish"]
        s.prompt_tokens = r["prompt_tokens"]
        s.new_tokens = r["new_tokens"]
        s.tokens_per_s = r["tokens_per_s"]
        return s


class Stream:
    """A reply streamed piece by piece; leaving it half-read (``close()``, ``break``, or dropping
    it) stops the decoding. ``reply`` is the whole :class:`Reply` once it has ended."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> str:
        piece = self._inner.__next__()
        if piece is None:
            raise StopIteration
        return piece

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def reply(self) -> Optional[Reply]:
        r = self._inner.result
        return Reply._of(json.loads(r)) if r is not None else None


def _conversation(messages: Messages) -> Dict[str, Any]:
    if isinstance(messages, str):
        return {"messages": [{"role": "user", "content": messages}]}
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}


class Model:
    """A model loaded for decoding: a run directory, an HF folder, a Hub id or a GGUF file."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.info: Dict[str, Any] = json.loads(inner.info())

    @classmethod
    def load(
        cls,
        path: PathLike,
        *,
        checkpoint: str = "best",
        tokenizer: Optional[PathLike] = None,
        weights: str = "f32",
        adapter: Optional[str] = None,
    ) -> "Model":
        """``checkpoint``: best, latest or a step (runs); ``weights``: f32, bf16 or q8;
        ``adapter``: a PEFT folder or the name of one of the run's adapters."""
        tok = str(tokenizer) if tokenizer is not None else None
        return cls(_cf.Model.load(str(path), checkpoint, tok, weights, adapter))

    @property
    def tokenizer(self) -> Tokenizer:
        return self._inner.tokenizer

    def _decode(self, conversations: List[Dict[str, Any]], raw: Optional[bool], settings: Dict[str, Any]) -> str:
        known = {
            "temperature", "top_k", "top_p", "repetition_penalty", "seed", "max_new_tokens",
            "stop", "batch_size", "system", "persona",
        }
        unknown = set(settings) - known
        if unknown:
            raise TypeError(f"unknown decoding settings: {', '.join(sorted(unknown))}")
        args = {k: v for k, v in settings.items() if v is not None}
        if isinstance(args.get("stop"), str):
            args["stop"] = [args["stop"]]
        return json.dumps({"conversations": conversations, "raw": raw, **args})

    def generate(
        self, prompt: Union[str, Sequence[str]], *, stream: bool = False, raw: Optional[bool] = None, **settings: Any
    ) -> Union[Reply, List[Reply], Stream]:
        """Continues ``prompt`` (a list of prompts is decoded in batches). Through the chat template
        for runs and chat models, as plain text with ``raw=True``. Settings: temperature (0 is
        greedy), top_k, top_p, repetition_penalty, seed, max_new_tokens, stop, system, batch_size;
        those not given come from the model's generation_config.json, as in the CLI."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        args = self._decode([_conversation(p) for p in prompts], raw, settings)
        if stream:
            if len(prompts) != 1:
                raise ValueError("stream=True decodes one prompt")
            return Stream(self._inner.stream(args))
        replies = [Reply._of(r) for r in json.loads(self._inner.generate(args))]
        return replies[0] if isinstance(prompt, str) else replies

    def chat(self, messages: Messages, *, stream: bool = False, **settings: Any) -> Union[Reply, Stream]:
        """The assistant's next reply to ``messages`` (a user message, or a list of
        ``{"role", "content"}`` turns), through the model's chat template."""
        args = self._decode([_conversation(messages)], False, settings)
        if stream:
            return Stream(self._inner.stream(args))
        return Reply._of(json.loads(self._inner.generate(args))[0])

    def __repr__(self) -> str:
        i = self.info
        return f"Model({i['root']!r}, {i['params'] / 1e6:.1f} M parameters, context {i['n_ctx']})"


def evaluate(run: PathLike, *, val: Optional[PathLike] = None, checkpoint: str = "best") -> Dict[str, Any]:
    """A run's loss, perplexity, BLEU and ROUGE on its validation data (or ``val``), as
    ``chatforge eval`` reports them."""
    return json.loads(_cf.evaluate(str(run), str(val) if val is not None else None, checkpoint))


def export(
    model: PathLike,
    out: PathLike,
    *,
    format: str = "hf",
    quant: Optional[str] = None,
    int8: bool = False,
    checkpoint: str = "best",
    force: bool = False,
) -> Dict[str, Any]:
    """Exports a run (or model) as an HF folder (``hf``), ONNX (``onnx``, ``int8``), GGUF
    (``gguf``, ``quant`` f32/f16/q8_0/q4_0) or a PEFT adapter (``peft``); returns its manifest."""
    return json.loads(_cf.export(str(model), str(out), format, quant, int8, checkpoint, force))
