"""llama.cpp reference for `chatforge bench gguf`: batch-1 greedy decoding of a GGUF file.

usage: bench_decode_llamacpp.py FILE [--context 16] [--new 128] [--runs 3] [--threads 2]
Loads FILE with llama-cpp-python (CPU, n_threads), feeds a random prompt of --context tokens (seed 1),
then decodes --new tokens greedily (top-k 1, no repetition penalty), one llama_decode per token.
Prints one JSON line: the median decode tokens/s over --runs runs (the prompt's pass excluded: timed
from the first new token to the last), and llama.cpp's version.
"""
import argparse
import json
import random
import statistics
import time

import llama_cpp
from llama_cpp import Llama

p = argparse.ArgumentParser()
p.add_argument("file")
p.add_argument("--context", type=int, default=16)
p.add_argument("--new", type=int, default=128)
p.add_argument("--runs", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
args = p.parse_args()
llm = Llama(model_path=args.file, n_ctx=args.context + args.new + 8, n_threads=args.threads,
            n_threads_batch=args.threads, n_batch=512, verbose=False, seed=0)
rng = random.Random(1)
prompt = [rng.randrange(llm.n_vocab()) for _ in range(args.context)]


def once():
    llm.reset()
    stamps = []
    for _ in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        stamps.append(time.perf_counter())
        if len(stamps) == args.new:
            break
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


once()  # warm-up
rates = [once() for _ in range(args.runs)]
print(json.dumps({"tokens_per_s": statistics.median(rates), "llama_cpp": llama_cpp.__version__}))
