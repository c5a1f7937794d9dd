"""Pinned prompt formats for code evaluation. The exact text of each is written into results.json.

| name            | what the model sees (Python shown; other languages get their own tag and fence)      | output kind |
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

The language tag is CodeGeeX's, written in the language's own comment syntax (`// language: C++`). MBPP problems
have no code prompt: chat formats show the task text and its tests (zero-shot), `completion` shows the standard
3-shot prompt (tasks 2, 3 and 4, `[BEGIN]` ... `[DONE]`).
"""
from __future__ import annotations

from dataclasses import dataclass

INSTRUCTION = (
    "Complete the following {language} function. Answer with the complete function, including the signature, "
    "in one ```{fence} code block.\n\n```{fence}\n{prompt}```"
)
MBPP_TASK = "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{tests}\n"
MBPP_INSTRUCTION = MBPP_TASK + "\nAnswer with the function in one ```python code block."


def mbpp_prompt(problem, shots) -> str:
    """MBPP's standard few-shot prompt: each example's task, tests and `[BEGIN]` code `[DONE]`, then the task."""
    def task(p) -> str:
        return MBPP_TASK.format(text=p.extra["text"], tests="\n".join(p.extra["test_list"]))

    examples = "".join(task(s) + "[BEGIN]\n" + s.canonical_solution.strip("\n") + "\n[DONE]\n" for s in shots)
    return examples + task(problem) + "[BEGIN]\n"


def _shown_code(problem) -> tuple[str, str]:
    """(the code prompt as chat formats show it, the instruction of the chatml/chat formats) of a problem."""
    from mftcoder.eval.languages import LANGUAGES

    if problem.harness == "mbpp":
        task = MBPP_TASK.format(text=problem.extra["text"], tests="\n".join(problem.extra["test_list"]))
        return task, MBPP_INSTRUCTION.format(text=problem.extra["text"], tests="\n".join(problem.extra["test_list"]))
    lang = LANGUAGES[problem.language]
    prompt = problem.prompt if problem.prompt.endswith("\n") else problem.prompt + "\n"
    return problem.prompt, INSTRUCTION.format(language=lang.display, fence=lang.fences[0], prompt=prompt)


@dataclass(frozen=True)
class PromptFormat:
    name: str
    kind: str  # "chat" (answer is parsed for code) or "completion" (answer continues the prompt)
    template: str  # the pinned text, {prompt} / {instruction} filled in; "<chat_template>" for `chat`
    stop: tuple[str, ...]  # stop strings besides the tokenizer's eos
    add_special_tokens: bool = False
    description: str = ""

    def render(self, prompt: str, tokenizer=None) -> str:
        """A Python HumanEval-style prompt as this format shows it."""
        from mftcoder.eval.problems import Problem

        return self.render_problem(Problem("prompt", prompt, "", None), tokenizer)

    def render_problem(self, problem, tokenizer=None) -> str:
        from mftcoder.eval.languages import LANGUAGES

        if self.kind == "completion":
            return problem.prompt
        shown, instruction = _shown_code(problem)
        if self.name == "chat":
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                raise ValueError(
                    "prompt format 'chat' needs a tokenizer with a chat_template; this model has none "
                    "(use --prompt_format completion for a base model, or mftcoder / chatml)"
                )
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
            )
        return self.template.format(tag=LANGUAGES[problem.language].tag, prompt=shown, instruction=instruction)

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
            "mftcoder", "chat", "<s>human\n{tag}{prompt}\n<s>bot\n", ("<s>human", "\n<s>bot"),
            description="CodeFuse's HumanEval recipe with MFTCoder's training tags (models trained with mftcoder)",
        ),
        PromptFormat(
            "codefuse-legacy", "chat", "<|role_start|>human<|role_end|>{tag}{prompt}<|role_start|>bot<|role_end|>",
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
            "completion", "completion", "{prompt}", (),
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
