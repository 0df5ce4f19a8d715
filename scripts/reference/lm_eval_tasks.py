"""lm-evaluation-harness on local multiple-choice tasks, for chatforge's parity test and bench.

    lm_eval_tasks.py parquet IN.jsonl OUT.parquet
    lm_eval_tasks.py hf DIR TASK_DIR TASKS [BATCH]
    lm_eval_tasks.py completions URL MODEL_ID TOKENIZER_DIR TASK_DIR TASKS

`hf` scores with lm-eval's HF backend on the transformers folder DIR (float32, CPU); `completions`
with its `local-completions` model against an OpenAI-style /v1/completions at URL (chatforge
serve), tokenizing with the HF tokenizer in TOKENIZER_DIR. TASK_DIR holds the task YAMLs
(`--include_path`), TASKS is a comma-separated list of task names. Prints JSON: per task, `acc`,
`acc_norm`, `lls` (each document's choices' log-likelihoods, in document order), `docs` and
`seconds` (the evaluation, after the model is loaded: what `chatforge bench eval` compares).
`parquet` writes a JSONL file's records as a parquet table, as pyarrow (and so `datasets`) writes it.
"""
import json
import sys
import time

import lm_eval
from lm_eval.tasks import TaskManager

kind = sys.argv[1]
if kind == "parquet":
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
    pq.write_table(pa.Table.from_pylist(rows), sys.argv[3])
    sys.exit(0)
if kind == "hf":
    model, model_args = "hf", f"pretrained={sys.argv[2]},dtype=float32"
    task_dir, tasks = sys.argv[3], sys.argv[4].split(",")
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 8
elif kind == "completions":
    url, model_id, tok = sys.argv[2], sys.argv[3], sys.argv[4]
    model = "local-completions"
    model_args = (f"model={model_id},base_url={url},tokenizer={tok},tokenizer_backend=huggingface,"
                  "tokenized_requests=True,num_concurrent=1,max_retries=1")
    task_dir, tasks = sys.argv[5], sys.argv[6].split(",")
    batch = 1
else:
    sys.exit(f"unknown backend {kind}")

if kind == "hf":
    from lm_eval.models.huggingface import HFLM

    model = HFLM(pretrained=sys.argv[2], dtype="float32", batch_size=batch, device="cpu")
    model_args = None
t0 = time.time()
res = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, device="cpu",
                              batch_size=batch, log_samples=True,
                              task_manager=TaskManager(include_path=task_dir))
seconds = time.time() - t0
out = {}
for task in tasks:
    r = res["results"][task]
    samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
    out[task] = {
        "acc": r["acc,none"],
        "acc_norm": r["acc_norm,none"],
        "lls": [[float(x[0]) for x in s["filtered_resps"]] for s in samples],
        "docs": len(samples),
        "seconds": seconds,
    }
print(json.dumps(out))
