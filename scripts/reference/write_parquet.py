"""Writes the parquet (and zstd) files the data crate's parquet tests read, with pyarrow as
datasets on the Hub are written: `write_parquet.py OUT_DIR`."""
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)

messages = pa.table({
    "messages": [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4, ünïcödé 🍵"}],
    ],
    "source": ["a", "b"],
})
pq.write_table(messages, out / "messages.parquet")  # snappy, pyarrow's default
pq.write_table(messages, out / "messages-zstd.parquet", compression="zstd")
pq.write_table(messages, out / "messages-gzip.parquet", compression="gzip")

instructions = pa.table({
    "instruction": [f"What is {i} plus {i}?" for i in range(50)],
    "input": ["" for _ in range(50)],
    "output": [f"It is {2 * i}." for i in range(50)],
})
pq.write_table(instructions, out / "alpaca.parquet", row_group_size=16)

oasst = pa.table({
    "message_id": ["m1", "m2", "m3"],
    "parent_id": [None, "m1", "m2"],
    "text": ["How do I boil water?", "Use a kettle.", "Thanks!"],
    "role": ["prompter", "assistant", "prompter"],
    "lang": ["en", "en", "en"],
    "rank": [None, 0, None],
    "message_tree_id": ["m1", "m1", "m1"],
})
pq.write_table(oasst, out / "oasst.parquet")

pq.write_table(pa.table({"text": ["First document.", "Second document."]}), out / "text.parquet")

bad = pa.table({"messages": [
    [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}],
    [{"role": "wizard", "content": "?"}],
]})
pq.write_table(bad, out / "bad-row.parquet")

with pa.CompressedOutputStream(str(out / "chats.jsonl.zst"), "zstd") as f:
    for i in range(3):
        f.write((json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}) + "\n").encode())
print("ok")
