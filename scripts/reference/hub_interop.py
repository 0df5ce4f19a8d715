"""huggingface_hub against chatforge's cache: `download REPO` fills HF_HUB_CACHE from HF_ENDPOINT as
Python users do; `offline REPO FILE…` reads files from the cache with HF_HUB_OFFLINE=1. Prints JSON."""
import json
import sys

from huggingface_hub import hf_hub_download, snapshot_download

mode, repo = sys.argv[1], sys.argv[2]
if mode == "download":
    path = snapshot_download(repo)
    print(json.dumps({"path": path}))
elif mode == "offline":
    files = sys.argv[3:]
    snap = snapshot_download(repo, allow_patterns=files)
    read = {f: open(hf_hub_download(repo, f), "rb").read().hex() for f in files}
    print(json.dumps({"path": snap, "files": read}))
else:
    raise SystemExit(f"unknown mode {mode}")
