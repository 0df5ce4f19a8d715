"""Reads chatforge exports with the real consumers, for crates/cli/tests/export.rs.

usage: export_check.py hf DIR REQUEST_JSON
    Loads DIR with transformers.AutoModelForCausalLM and AutoTokenizer. REQUEST_JSON holds "ids"
    (rows of token ids), "texts" and "conversations" (lists of {role, content}). Prints JSON:
    "logits" (per row, every position), "encodings" (ids of each text, no special tokens added),
    "chat" (per conversation: the template's text with and without the generation prompt, and the
    prompt's ids).
usage: export_check.py onnx DIR REQUEST_JSON
    Checks DIR/model.onnx with onnx.checker (full check), then runs it with onnxruntime (CPU).
    REQUEST_JSON holds "prompt" (token ids) and "new" (tokens to generate). Prints JSON: "logits" of
    the prompt's pass (every position, empty past), "tokens" of a greedy generation that feeds each
    step's present.* back as past_key_values.*, and "batch2_diff" (the prompt as a batch of two
    rows against the single row).
usage: export_check.py gguf FILE
    Reads FILE with the gguf package (GGUFReader). Prints JSON: "version", every metadata key with
    its value (arrays in full), and every tensor: name, type, shape (ne order), and its values
    dequantised by gguf.quants (sum, sum of |x|, the first 8).
usage: export_check.py llamacpp FILE REQUEST_JSON
    Loads FILE with llama.cpp (llama-cpp-python). REQUEST_JSON holds "prompt" (token ids) and
    "new" (tokens to generate). Prints JSON: "tokens" of a greedy generation from the prompt (no
    repetition penalty), and "architecture", "n_vocab" and "chat_template" as llama.cpp reads them.
"""
import json
import sys

import numpy as np

kind = sys.argv[1]
if kind == "llamacpp":
    from llama_cpp import Llama

    path, req = sys.argv[2], json.load(open(sys.argv[3]))
    # An f32 KV cache (llama.cpp's default is f16), so an f32 file is compared at f32 throughout.
    import llama_cpp

    llm = Llama(model_path=path, n_ctx=256, n_threads=2, verbose=False, seed=0,
                type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    tokens = []
    for t in llm.generate(req["prompt"], top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        tokens.append(int(t))
        if len(tokens) == req["new"]:
            break
    print(json.dumps({"tokens": tokens, "architecture": llm.metadata.get("general.architecture"),
                      "n_vocab": llm.n_vocab(), "chat_template": llm.metadata.get("tokenizer.chat_template")}))
    sys.exit(0)
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
            # The persona instruction, as `chat --persona Alice --channel general` renders it.
            "persona_prompt_text": tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True,
                                                           persona="Alice", channel="general"),
        })
    print(json.dumps(out))
elif kind == "onnx":
    import os

    import onnx
    import onnxruntime as ort

    path, req = os.path.join(sys.argv[2], "model.onnx"), json.load(open(sys.argv[3]))
    onnx.checker.check_model(path, full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    pasts = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    heads, head_dim = pasts[0].shape[1], pasts[0].shape[3]

    def run(ids, past, start):
        b, t = ids.shape
        feed = {"input_ids": ids, "attention_mask": np.ones((b, start + t), dtype=np.int64),
                "position_ids": np.tile(np.arange(start, start + t, dtype=np.int64), (b, 1))}
        for i in pasts:
            feed[i.name] = past[i.name] if past else np.zeros((b, heads, 0, head_dim), dtype=np.float32)
        outs = sess.run(None, feed)
        names = [o.name for o in sess.get_outputs()]
        res = dict(zip(names, outs))
        nxt = {n.replace("present.", "past_key_values."): v for n, v in res.items() if n.startswith("present.")}
        return res["logits"], nxt

    prompt = np.array([req["prompt"]], dtype=np.int64)
    logits, past = run(prompt, None, 0)
    logits2, _ = run(np.concatenate([prompt, prompt]), None, 0)
    tokens, pos = [], prompt.shape[1]
    tok = int(logits[0, -1].argmax())
    for _ in range(req["new"]):
        tokens.append(tok)
        step, past = run(np.array([[tok]], dtype=np.int64), past, pos)
        pos += 1
        tok = int(step[0, -1].argmax())
    print(json.dumps({"logits": logits[0].tolist(), "tokens": tokens,
                      "batch2_diff": float(np.abs(logits2 - np.concatenate([logits, logits])).max()),
                      "inputs": [i.name for i in sess.get_inputs()],
                      "outputs": [o.name for o in sess.get_outputs()]}))
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
