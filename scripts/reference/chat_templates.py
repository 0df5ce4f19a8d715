"""Reference for crates/tokenizer/tests/chat_templates.rs: transformers' apply_chat_template.

usage: chat_templates.py OUT_DIR
Builds small tokenizers the way the models' own are built (byte-level BPE with ChatML or Llama 3
special tokens; a SentencePiece-style BPE with byte fallback as TinyLlama's) and, for the chat
template each family ships (SmolLM2, Qwen2.5, TinyLlama, Llama 3.2, and a ChatML template with
{% generation %} blocks), writes OUT_DIR/NAME/ (tokenizer.json, tokenizer_config.json) and
OUT_DIR/reference.json: per template and conversation, the ids of the whole conversation, the
ids of the prompt that asks for its last reply (add_generation_prompt), and for the template
with generation blocks the assistant mask transformers returns.
"""
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

out = sys.argv[1]
corpus = ["Hello there! How are you doing today?", "I am fine, thanks. The weather is lovely.",
          "You are a helpful assistant. Answer briefly.", "Ünïcödé tèxt and émojis 🙂 too",
          "numbers 12345 and code: def f(x): return x * 2"] * 20

CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def byte_level(specials):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def sentencepiece_like():
    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    # Byte fallback needs <0x00>..<0xFF> in the vocabulary, as Llama's tokenizer has them.
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    return Tokenizer.from_str(json.dumps(data))


TEMPLATES = {
    "smollm2": (CHATML, "<|im_start|>", "<|im_end|>",
                "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
                "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "qwen25": (CHATML, None, "<|im_end|>", """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""),
    "tinyllama": (None, "<s>", "</s>", """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""),
    "llama32": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- else %}
        {{- raise_exception("tool calls are not in this test") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""),
    "chatml_generation": (CHATML, None, "<|im_end|>",
                          "{%- for message in messages -%}{%- if message['role'] == 'assistant' -%}"
                          "{{ '<|im_start|>assistant\n' }}{%- generation -%}{{ message['content'] + '<|im_end|>' }}"
                          "{%- endgeneration -%}{{ '\n' }}{%- else -%}"
                          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
                          "{%- endif -%}{%- endfor -%}"
                          "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"),
}

CONVERSATIONS = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there!"},
     {"role": "assistant", "content": "Hi. How are you?"}, {"role": "user", "content": " Ünïcödé 🙂 and  spaces "},
     {"role": "assistant", "content": "Fine, thanks: def f(x): return x * 2"}],
    [{"role": "user", "content": "numbers 12345?"}, {"role": "assistant", "content": "The weather is lovely."}],
]

reference = {}
for name, (specials, bos, eos, template) in TEMPLATES.items():
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    tok = sentencepiece_like() if specials is None else byte_level(specials)
    tok.save(os.path.join(folder, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template, "eos_token": eos,
              "bos_token": bos, "model_max_length": 8192}
    if specials is None:
        config["unk_token"] = "<unk>"
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    fast = PreTrainedTokenizerFast.from_pretrained(folder)
    cases = []
    for conv in CONVERSATIONS:
        full = fast.apply_chat_template(conv, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=name == "chatml_generation")
        prompt = fast.apply_chat_template(conv[:-1], tokenize=True, add_generation_prompt=True, return_dict=True)
        case = {"messages": conv, "ids": full["input_ids"], "prompt": prompt["input_ids"]}
        if "assistant_masks" in full:
            case["mask"] = full["assistant_masks"]
        cases.append(case)
    reference[name] = cases
with open(os.path.join(out, "reference.json"), "w") as f:
    json.dump(reference, f)
print("ok")
