"""Reference for crates/infer/tests/hf_generate.rs: greedy generation by transformers.

usage: hf_generate.py OUT_DIR TOKENIZER_DIR
Saves a random-weight GPT2LMHeadModel (vocab of the GPT-2-style tokenizer in TOKENIZER_DIR, whose
vocab.json and merges.txt are copied beside it: a plain GPT-2 folder) to OUT_DIR/model, then runs
`generate(do_sample=False)` for 50 new tokens from a fixed prompt, with and without the KV cache,
and writes OUT_DIR/reference.json: the prompt ids, both generations, and the logits of every step.
"""
import json
import os
import shutil
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel

torch.manual_seed(0)
torch.set_num_threads(2)
out, tok_dir = sys.argv[1], sys.argv[2]
vocab = json.load(open(os.path.join(tok_dir, "vocab.json")))
cfg = GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=64, n_layer=3, n_head=4,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
                 bos_token_id=0, eos_token_id=None)
model = GPT2LMHeadModel(cfg).float().eval()
# Larger weights than the default init make the next-token distribution peaked, so greedy
# decoding does not hinge on near-ties.
with torch.no_grad():
    for name, p in model.named_parameters():
        p.add_((0.3 if p.ndim > 1 else 0.1) * torch.randn_like(p))
folder = os.path.join(out, "model")
model.save_pretrained(folder, safe_serialization=True)
for f in ("vocab.json", "merges.txt"):
    shutil.copy(os.path.join(tok_dir, f), folder)

prompt = torch.tensor([[31, 7, 120, 64, 5, 201, 88, 17, 42, 3]])
ref = {"prompt": prompt[0].tolist()}
for use_cache in (True, False):
    with torch.inference_mode():
        g = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                           max_new_tokens=50, min_new_tokens=50, use_cache=use_cache,
                           output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    key = "cache" if use_cache else "no_cache"
    ref[key] = {
        "tokens": g.sequences[0, prompt.shape[1]:].tolist(),
        "logits": [l[0].tolist() for l in g.logits],
    }
json.dump(ref, open(os.path.join(out, "reference.json"), "w"))
