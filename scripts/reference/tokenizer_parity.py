"""Encodes texts with Python `tokenizers` for the Rust parity test.

usage: tokenizer_parity.py TOKENIZER_JSON TEXTS_JSON
prints a JSON list with the ids of each text (no special tokens added).
"""
import json
import sys

from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as f:
    texts = json.load(f)
ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
decoded = [tok.decode(i, skip_special_tokens=False) for i in ids]
print(json.dumps({"ids": ids, "decoded": decoded, "vocab_size": tok.get_vocab_size(with_added_tokens=True)}))
