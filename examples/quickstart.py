"""Seed 004's path from Python: load conversations, fine-tune a model on them, chat with it,
export it. Runs on the bundled sample data in about a minute:

    pip install ./python          # or: maturin develop, from python/
    python examples/quickstart.py                     # a small base trained here, then fine-tuned
    python examples/quickstart.py --init distilgpt2   # fine-tune a Hub model instead (downloads it)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import chatforge

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data" / "sample"), help="conversations, any format")
    ap.add_argument("--init", help="a model to fine-tune: a run, an HF folder or a Hub id")
    ap.add_argument("--out", default="runs/quickstart", help="where the runs and exports go")
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps")
    args = ap.parse_args()
    out = Path(args.out)

    # 1. Data: any format `chatforge data import` reads, as dicts; then canonical JSONL + a split.
    convs = chatforge.data.load(args.data)
    print(f"{len(convs)} conversations; the first: {convs[0]['messages'][0]['content']!r}")
    report = chatforge.data.import_(args.data, out / "data" / "train.jsonl")
    train, val = out / "data" / "train.jsonl", chatforge.data.val_path_for(out / "data" / "train.jsonl")
    print(f"{report['train']} for training, {report['val']} for validation")

    # 2. A model to fine-tune: the one given, or a small base pre-trained here on the same text.
    init, tokenizer = args.init, None
    if init is None:
        tokenizer = out / "tokenizer"
        chatforge.Tokenizer.train([train], tokenizer, vocab_size=2000)
        base = chatforge.TrainConfig.preset("tiny")
        chatforge.train(base, data=train, val=val, tokenizer=tokenizer, out=out / "base", mode="pretrain",
                        max_steps=max(args.steps // 2, 1), evaluate=False)
        init = out / "base"

    # 3. Fine-tune on the conversations (loss on the assistant's turns), watching the loss.
    losses = []
    result = chatforge.train(
        data=train, val=val, init=init, tokenizer=tokenizer, out=out / "chat", mode="sft",
        max_steps=args.steps, eval_every=max(args.steps // 5, 1), on_step=lambda e: losses.append(e["loss"]),
    )
    print(f"fine-tuned {result.steps} steps: loss {losses[0]:.3f} → {losses[-1]:.3f}, "
          f"best validation loss {result.best_val_loss}")
    if result.metrics:
        print(f"validation perplexity {result.metrics['perplexity']:.2f}")

    # 4. Chat, whole replies and streamed.
    model = chatforge.Model.load(out / "chat")
    print("Q: What is the capital of France?\nA:", model.chat("What is the capital of France?", temperature=0))
    print("Q: How do I make tea?\nA: ", end="")
    for piece in model.chat("How do I make tea?", stream=True, max_new_tokens=60):
        print(piece, end="", flush=True)
    print()

    # 5. Export for transformers (HF folder) and llama.cpp (GGUF).
    for fmt, dest in (("hf", out / "export-hf"), ("gguf", out / "export-gguf")):
        chatforge.export(out / "chat", dest, format=fmt, force=True)
        print(f"exported {fmt}: {dest}")


if __name__ == "__main__":
    main()
