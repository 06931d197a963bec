"""Chat templates by name, and ``auto``: the template most of the models share."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from mergeflow.errors import InputError
from mergeflow.files import read_text_capped

MAX_CONFIG = 64 << 20

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ message['content'] + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
)
ALPACA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)
NAMED = {"chatml": CHATML, "llama3": LLAMA3, "mistral": MISTRAL, "alpaca": ALPACA}
# the special tokens a named template writes, which the output tokenizer should know
TEMPLATE_TOKENS = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
}


def model_template(path: Path) -> str | None:
    """A model's chat template (tokenizer_config.json's, else chat_template.jinja), or None."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return read_text_capped(jinja, "chat template", MAX_CONFIG)
    cfg = path / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        value = json.loads(read_text_capped(cfg, "tokenizer config", MAX_CONFIG)).get("chat_template")
    except (ValueError, AttributeError) as exc:
        raise InputError(f"{cfg}: unreadable tokenizer config ({exc})") from None
    if isinstance(value, list):  # named templates: the default one
        value = next(
            (t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None
        )
    return value if isinstance(value, str) else None


def resolve_template(value: str, model_dirs: Mapping[str, Path]) -> str | None:
    """The Jinja text of ``chat_template:``; ``auto`` gives the most common among the models (ties: the
    first in recipe order), None when no model has one."""
    if value in NAMED:
        return NAMED[value]
    if value != "auto":
        return value
    found = [t for t in (model_template(p) for p in model_dirs.values()) if t]
    if not found:
        return None
    counts = Counter(found)
    best = max(counts.values())
    return next(t for t in found if counts[t] == best)
