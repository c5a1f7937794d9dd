"""Pinned prompts for multiple-choice questions: MMLU's English one and CMMLU's Chinese one, zero- or k-shot.

    en: The following are multiple choice questions (with answers) about {subject}.\\n\\n
        [{question}\\nA. {a}\\nB. {b}\\n...\\nAnswer: {letter}\\n\\n] x k
        {question}\\nA. {a}\\nB. {b}\\n...\\nAnswer:          scored continuations " A", " B", ...
    zh: 以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\\n\\n
        [题目：{question}\\nA. {a}\\n...\\n答案是：{letter}\\n\\n] x k
        题目：{question}\\nA. {a}\\n...\\n答案是：               scored continuations "A", "B", ...

With `chat`, the whole text is the user turn of the model's chat template (with its generation prompt), and the
continuations are the bare letters: they start the assistant's reply.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mftcoder.eval.mc_data import Question


@dataclass(frozen=True)
class PromptStyle:
    name: str
    header: str  # {subject} filled in
    question_prefix: str
    answer_cue: str
    letter_prefix: str  # before the letter in the continuation (not in chat mode)

    def block(self, q: Question, answered: bool) -> str:
        lines = [self.question_prefix + q.question.strip()]
        lines += [f"{letter}. {choice}" for letter, choice in zip(q.letters, q.choices)]
        text = "\n".join(lines) + "\n" + self.answer_cue
        return text + f"{self.letter_prefix}{q.letters[q.answer]}\n\n" if answered else text


STYLES: dict[str, PromptStyle] = {
    s.name: s
    for s in [
        PromptStyle("en", "The following are multiple choice questions (with answers) about {subject}.\n\n", "",
                    "Answer:", " "),
        PromptStyle("zh", "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n", "题目：", "答案是：", ""),
    ]
}
LANGUAGES = ("auto", *STYLES)


def is_cjk(ch: str) -> bool:
    code = ord(ch)
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F


def detect_language(questions: Sequence[Question]) -> str:
    """zh when at least half of the letters in the questions and choices are CJK characters, else en."""
    letters = [ch for q in questions for text in (q.question, *q.choices) for ch in text if ch.isalpha()]
    cjk = sum(is_cjk(ch) for ch in letters)
    return "zh" if letters and cjk * 2 >= len(letters) else "en"


def resolve_language(requested: str, questions: Sequence[Question]) -> str:
    if requested == "auto":
        return detect_language(questions)
    if requested not in STYLES:
        raise ValueError(f"--prompt_language must be one of {', '.join(LANGUAGES)}; got {requested!r}")
    return requested


def subject_title(subject: str) -> str:
    return subject.replace("_", " ")


def build_prompt(q: Question, shots: Sequence[Question], language: str) -> str:
    """The text before the answer letter: header, k answered examples, the question and the answer cue."""
    style = STYLES[language]
    parts = [style.header.format(subject=subject_title(q.subject))]
    parts += [style.block(s, answered=True) for s in shots]
    parts.append(style.block(q, answered=False))
    return "".join(parts)


def continuations(q: Question, language: str, chat: bool) -> list[str]:
    prefix = "" if chat else STYLES[language].letter_prefix
    return [prefix + letter for letter in q.letters]


def wrap_chat(prompt: str, tokenizer) -> str:
    """The prompt as the user turn of the tokenizer's chat template, ending with the assistant's generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("--chat needs a tokenizer with a chat_template; this model has none (drop --chat for a "
                         "base model)")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
