"""Reads chatforge exports with the real consumers, for crates/cli/tests/export.rs.

usage: export_check.py hf DIR REQUEST_JSON
    Loads DIR with transformers.AutoModelForCausalLM and AutoTokenizer. REQUEST_JSON holds "ids"
    (rows of token ids), "texts" and "conversations" (lists of {role, content}). Prints JSON:
    "logits" (per row, every position), "encodings" (ids of each text, no special tokens added),
    "chat" (per conversation: the template's text with and without the generation prompt, and the
    prompt's ids).
usage: export_check.py gguf FILE
    Reads FILE with the gguf package (GGUFReader). Prints JSON: "version", every metadata key with
    its value (arrays in full), and every tensor: name, type, shape (ne order), and its values
    dequantised by gguf.quants (sum, sum of |x|, the first 8).
"""
import json
import sys

import numpy as np

kind = sys.argv[1]
if kind == "hf":
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, req = sys.argv[2], json.load(open(sys.argv[3]))
    model = AutoModelForCausalLM.from_pretrained(path).float().eval()
    tok = AutoTokenizer.from_pretrained(path)
    out = {"logits": [], "encodings": [], "chat": []}
    with torch.inference_mode():
        for row in req["ids"]:
            out["logits"].append(model(torch.tensor([row])).logits[0].tolist())
    for t in req["texts"]:
        out["encodings"].append(tok.encode(t, add_special_tokens=False))
    for conv in req["conversations"]:
        out["chat"].append({
            "text": tok.apply_chat_template(conv, tokenize=False),
            "prompt_text": tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True),
            "prompt_ids": list(tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=True,
                                                        return_dict=True)["input_ids"]),
        })
    print(json.dumps(out))
elif kind == "gguf":
    from gguf import GGUFReader, GGUFValueType
    from gguf.quants import dequantize

    r = GGUFReader(sys.argv[2])
    meta = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        t = f.types[0]
        if t == GGUFValueType.STRING:
            meta[name] = bytes(f.parts[f.data[0]]).decode("utf-8")
        elif t == GGUFValueType.ARRAY:
            if f.types[1] == GGUFValueType.STRING:
                meta[name] = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            else:
                meta[name] = [f.parts[i].tolist()[0] for i in f.data]
        else:
            meta[name] = f.parts[f.data[0]].tolist()[0]
    tensors = []
    for t in r.tensors:
        x = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64).ravel()
        tensors.append({"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in t.shape],
                        "sum": float(x.sum()), "abs_sum": float(np.abs(x).sum()),
                        "first": x[:8].tolist()})
    version = int(r.fields["GGUF.version"].parts[-1][0])
    print(json.dumps({"version": version, "meta": meta, "tensors": tensors}))
else:
    sys.exit(f"unknown kind {kind}")
