"""The official `openai` client against chatforge's chat API, and `prometheus_client`'s parser on
its /metrics. Usage: openai_client.py BASE_URL TOKEN MODEL. Prints one JSON line: the reply
whole and streamed (greedy: they must agree), the number of choices `n` gave, and the metric
families the parser found."""

import json
import sys
import urllib.request

from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

base, token, model = sys.argv[1:4]
client = OpenAI(base_url=f"{base}/v1", api_key=token, max_retries=5)
messages = [{"role": "user", "content": "Hello there, how are you?"}]
whole = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=20)
assert whole.object == "chat.completion" and whole.usage.completion_tokens > 0, whole
stream = client.chat.completions.create(
    model=model,
    messages=messages,
    temperature=0,
    max_tokens=20,
    stream=True,
    stream_options={"include_usage": True},
)
streamed, usage, finish = "", None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        streamed += c.delta.content or ""
        finish = c.finish_reason or finish
assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens, usage
assert finish == whole.choices[0].finish_reason, finish
two = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=5, n=2)
assert client.models.list().object == "list"

req = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"})
text = urllib.request.urlopen(req).read().decode()
families = {f.name: f for f in text_string_to_metric_families(text)}
for name in ["chatforge_http_requests", "chatforge_time_to_first_token_seconds", "chatforge_batch_size"]:
    assert name in families, sorted(families)
ttft = [s for s in families["chatforge_time_to_first_token_seconds"].samples if s.name.endswith("_count")]
assert ttft and ttft[0].value >= 3, ttft
print(json.dumps({
    "whole": whole.choices[0].message.content,
    "streamed": streamed,
    "choices": len(two.choices),
    "families": sorted(families),
}))
