"""Pinned prompt formats for code evaluation. The exact text of each is written into results.json.

| name            | what the model sees                                                                  | output kind |
|-----------------|--------------------------------------------------------------------------------------|-------------|
| mftcoder        | `<s>human\\n# language: Python\\n{prompt}\\n<s>bot\\n` (CodeFuse's HumanEval recipe     | chat        |
|                 | rendered with MFTCoder's training role tags)                                         |             |
| codefuse-legacy | `<|role_start|>human<|role_end|># language: Python\\n{prompt}<|role_start|>bot<|role_end|>` | chat   |
|                 | (what CodeFuse gave for its published CodeFuse-CodeLlama numbers)                    |             |
| chatml          | `<|im_start|>user\\n{instruction}<|im_end|>\\n<|im_start|>assistant\\n`                 | chat        |
| chat            | the model's own chat template applied to [{user: instruction}]                       | chat        |
| completion      | the HumanEval prompt itself (base models)                                            | completion  |

All are tokenised with `add_special_tokens=False`, except `completion`, which lets the tokenizer add what it
adds to plain text (a BOS for Llama-style tokenizers), as base models saw in pretraining.
"""
from __future__ import annotations

from dataclasses import dataclass

LANGUAGE_TAG = "# language: Python\n"
INSTRUCTION = (
    "Complete the following Python function. Answer with the complete function, including the signature, "
    "in one ```python code block.\n\n```python\n{prompt}```"
)


@dataclass(frozen=True)
class PromptFormat:
    name: str
    kind: str  # "chat" (answer is parsed for code) or "completion" (answer continues the prompt)
    template: str  # the pinned text, {prompt} / {instruction} filled in; "<chat_template>" for `chat`
    stop: tuple[str, ...]  # stop strings besides the tokenizer's eos
    add_special_tokens: bool = False
    description: str = ""

    def render(self, prompt: str, tokenizer=None) -> str:
        instruction = INSTRUCTION.format(prompt=prompt if prompt.endswith("\n") else prompt + "\n")
        if self.name == "chat":
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                raise ValueError(
                    "prompt format 'chat' needs a tokenizer with a chat_template; this model has none "
                    "(use --prompt_format completion for a base model, or mftcoder / chatml)"
                )
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
            )
        return self.template.format(prompt=prompt, instruction=instruction)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "template": self.template, "stop": list(self.stop),
            "add_special_tokens": self.add_special_tokens,
            "instruction": INSTRUCTION if self.name in ("chat", "chatml") else None,
        }


FORMATS: dict[str, PromptFormat] = {
    f.name: f
    for f in [
        PromptFormat(
            "mftcoder", "chat", "<s>human\n" + LANGUAGE_TAG + "{prompt}\n<s>bot\n", ("<s>human", "\n<s>bot"),
            description="CodeFuse's HumanEval recipe with MFTCoder's training tags (models trained with mftcoder)",
        ),
        PromptFormat(
            "codefuse-legacy", "chat", "<|role_start|>human<|role_end|>" + LANGUAGE_TAG + "{prompt}<|role_start|>bot<|role_end|>",
            ("<|role_start|>",),
            description="the format CodeFuse published for CodeFuse-CodeLlama-34B and other v0.1 models",
        ),
        PromptFormat(
            "chatml", "chat", "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
            ("<|im_end|>", "<|im_start|>"),
            description="ChatML without a system message (Qwen, SmolLM2 and other ChatML-trained models)",
        ),
        PromptFormat(
            "chat", "chat", "<chat_template>", (),
            description="the model's own chat template (with its default system message, if it has one)",
        ),
        PromptFormat(
            "completion", "completion", "{prompt}", ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"),
            add_special_tokens=True, description="the raw prompt, for base (non-chat) models",
        ),
    ]
}


def get_format(name: str) -> PromptFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown prompt format {name!r}; choose one of: {', '.join(FORMATS)} (or auto)")
    return FORMATS[name]


def resolve_format(name: str, tokenizer=None) -> PromptFormat:
    """`auto` picks by the tokenizer's chat template: MFTCoder tags -> mftcoder, role_start tags ->
    codefuse-legacy, any other template -> chat, none -> completion."""
    if name != "auto":
        return get_format(name)
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str):  # several named templates: use the default one
        template = str(template)
    if "<s>human" in template:
        return FORMATS["mftcoder"]
    if "<|role_start|>" in template:
        return FORMATS["codefuse-legacy"]
    if template:
        return FORMATS["chat"]
    return FORMATS["completion"]
