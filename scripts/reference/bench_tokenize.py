"""Reference for `chatforge bench tokenize`: Python `tokenizers` encoding the same message texts.

usage: bench_tokenize.py TOKENIZER_JSON CONVERSATIONS_JSONL [REPEATS]
prints JSON: text bytes, tokens, and the median seconds of `encode_batch` over all message texts
(the Rust core's parallel batch path; RAYON_NUM_THREADS is left at its default, all cores).
"""
import json
import statistics
import sys
import time

from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
texts = []
with open(sys.argv[2], encoding="utf-8") as f:
    for line in f:
        if line.strip():
            texts.extend(m["content"] for m in json.loads(line)["messages"])
text_bytes = sum(len(t.encode("utf-8")) for t in texts)
times = []
tokens = 0
for _ in range(repeats):
    start = time.perf_counter()
    encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
    times.append(time.perf_counter() - start)
    tokens = sum(len(e.ids) for e in encodings)
print(json.dumps({"texts": len(texts), "text_bytes": text_bytes, "tokens": tokens, "seconds": statistics.median(times)}))
