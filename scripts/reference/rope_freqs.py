"""The rotary inverse frequencies transformers computes for a Llama-family config.json:
`rope_freqs.py CONFIG_JSON` prints them as a JSON list (LlamaRotaryEmbedding's inv_freq)."""
import json
import sys

from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

cfg = LlamaConfig(**json.load(open(sys.argv[1])))
print(json.dumps(LlamaRotaryEmbedding(config=cfg).inv_freq.tolist()))
