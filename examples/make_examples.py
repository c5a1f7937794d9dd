#!/usr/bin/env python
"""Generate the bundled example multi-task data set under ``examples/data/``.

    python examples/make_examples.py              # rewrite examples/data/
    python examples/make_examples.py --out DIR    # write the same files under DIR
    python examples/make_examples.py --heldout 12 --sizes 400,200,100,50 --out DIR  # train split + held-out problems

Four small code tasks are built from one library of short Python functions written for this project:

- ``code_completion/``  (chat_rounds) the user gives a signature + docstring, maybe a partial body; the bot completes it
- ``text_to_code/``     (chat_rounds) an English request; the bot answers with a function in a python fence
- ``unit_tests/``       (chat_rounds) the user gives a function; the bot writes pytest tests for it
- ``code_explain/``     (OpenAI ``messages``) the user gives a function; the bot explains it in 1-3 sentences

Only the standard library is used and every random choice comes from seeded ``random.Random`` objects, so the
output is byte-identical on every run (and independent of PYTHONHASHSEED). Nothing is written unless every
piece of code in it has been executed first: each library function must pass its own cases, every completed or
written function must pass them too, doctests in docstrings are run, and every test answer is run against its
function. A failure stops the script with the function and sample named.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import doctest
import json
import math
import random
import re
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Callable

SEED = 20240611
MAX_SAMPLE_CHARS = 1200
MAX_SAMPLE_TOKENS = 350  # estimated by approx_tokens(); the demo trains on 2 CPU cores

# Samples per task and how they are spread over files (deliberately unequal sizes, nested folders).
COMPLETION_FILES = {"code_completion/part-000.jsonl": 130, "code_completion/part-001.jsonl": 120}
TEXT_TO_CODE_FILES = {"text_to_code/part-000.jsonl": 150, "text_to_code/multi_turn/part-000.jsonl": 50}
UNIT_TEST_FILES = {"unit_tests/unit_tests.jsonl": 150}
EXPLAIN_FILES = {"code_explain/explain.jsonl": 80}
TASK_DIRS = ("code_completion", "text_to_code", "unit_tests", "code_explain")


class GenerationError(RuntimeError):
    """A library function or a generated sample failed validation."""


# ---------------------------------------------------------------------------------------------------------------
# The function library
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    name: str
    type: str | None
    default: str | None  # source text of the default value


@dataclass(frozen=True)
class Fn:
    """One library function. Texts use ``$param`` / ``$fn`` placeholders so names can vary per sample."""

    name: str
    category: str
    params: tuple[Param, ...]
    returns: str | None
    doc: str  # imperative summary, e.g. "Return the words of $text in reverse order."
    note: str | None  # extra imperative sentence, e.g. "Raise ValueError if $n is negative."
    bodies: tuple[str, ...]  # alternative implementations of the same behaviour
    hows: tuple[str, ...]  # one "how it works" sentence per body
    cases: tuple[tuple[tuple, object], ...]  # (args, expected result)
    raises: tuple[tuple[tuple, type], ...]  # (args, exception type)
    names: tuple[str, ...]  # accepted function names, the first is canonical
    param_names: tuple[tuple[str, ...], ...]  # accepted parameter name sets, the first is canonical
    imports: tuple[str, ...]
    gen: Callable[[random.Random], tuple] | None  # draws extra arguments; expected values come from the function


_PARAM_RE = re.compile(r"^\s*(\w+)\s*(?::\s*([^=]+?))?\s*(?:=\s*(.+?))?\s*$")
LIBRARY: list[Fn] = []
_CATEGORY = "strings"


def category(name: str) -> None:
    global _CATEGORY
    _CATEGORY = name


def fn(name, sig, returns, doc, body, *, cases, how, note=None, raises=(), names=(), alts=(), imports=(),
       gen=None):
    params = []
    for part in sig.split("; "):
        m = _PARAM_RE.match(part)
        if not m:
            raise GenerationError(f"{name}: bad parameter spec {part!r}")
        params.append(Param(m.group(1), m.group(2), m.group(3)))
    bodies = (body,) if isinstance(body, str) else tuple(body)
    hows = (how,) if isinstance(how, str) else tuple(how)
    if len(bodies) != len(hows):
        raise GenerationError(f"{name}: {len(bodies)} bodies but {len(hows)} 'how' sentences")
    canonical = tuple(p.name for p in params)
    alt_sets = [canonical] + [(a,) if isinstance(a, str) else tuple(a) for a in alts]
    for names_set in alt_sets:
        if len(names_set) != len(params):
            raise GenerationError(f"{name}: parameter names {names_set} do not match {canonical}")
    LIBRARY.append(Fn(
        name=name, category=_CATEGORY, params=tuple(params), returns=returns, doc=doc, note=note,
        bodies=tuple(textwrap.dedent(b).strip("\n") for b in bodies), hows=hows,
        cases=tuple(cases), raises=tuple(raises), names=(name,) + tuple(names), param_names=tuple(alt_sets),
        imports=tuple(imports), gen=gen,
    ))


def _ints(r: random.Random, lo=-9, hi=9, max_len=6) -> list[int]:
    return [r.randint(lo, hi) for _ in range(r.randint(0, max_len))]


_WORDS = ["apple", "river", "stone", "code", "light", "data", "moon", "tree", "blue", "fast", "echo", "loop"]


def _sentence(r: random.Random) -> str:
    return " ".join(r.choice(_WORDS) for _ in range(r.randint(1, 4)))


# --- strings ---------------------------------------------------------------------------------------------------
category("strings")

fn("reverse_words", "text: str", "str",
   "Return the words of $text in reverse order, joined by single spaces.",
   ['return " ".join(reversed($text.split()))',
    """
    words = $text.split()
    words.reverse()
    return " ".join(words)
    """],
   cases=[(("hello big world",), "world big hello"), (("  one  ",), "one"), (("",), ""), (("a b",), "b a")],
   how=["It splits $text on whitespace, reverses the words and joins them back with spaces.",
        "It splits $text into a list of words, reverses that list in place and joins it with spaces."],
   names=["reverse_word_order"], alts=["sentence", "s"], gen=lambda r: (_sentence(r),))

fn("is_palindrome", "text: str", "bool",
   "Check whether $text reads the same forwards and backwards, ignoring case and non-alphanumeric characters.",
   ["""
    cleaned = [ch.lower() for ch in $text if ch.isalnum()]
    return cleaned == cleaned[::-1]
    """,
    """
    left, right = 0, len($text) - 1
    while left < right:
        if not $text[left].isalnum():
            left += 1
        elif not $text[right].isalnum():
            right -= 1
        elif $text[left].lower() != $text[right].lower():
            return False
        else:
            left += 1
            right -= 1
    return True
    """],
   cases=[(("Racecar",), True), (("A man, a plan, a canal: Panama",), True), (("hello",), False), (("",), True)],
   how=["It keeps only the letters and digits, lowercases them and compares the result with its reverse.",
        "It moves two indices towards each other, skipping characters that are not letters or digits and "
        "comparing the others case-insensitively."],
   names=["is_palindromic"], alts=["s", "phrase"])

fn("count_vowels", "text: str", "int",
   "Count the vowels (a, e, i, o, u) in $text, ignoring case.",
   ['return sum(1 for ch in $text.lower() if ch in "aeiou")',
    """
    count = 0
    for ch in $text.lower():
        if ch in "aeiou":
            count += 1
    return count
    """],
   cases=[(("Hello World",), 3), (("rhythm",), 0), (("AEIOU",), 5), (("",), 0)],
   how=["It lowercases $text and counts the characters that are one of a, e, i, o or u.",
        "It loops over the lowercased text and increments a counter for every vowel."],
   alts=["s", "word"], gen=lambda r: (_sentence(r),))

fn("capitalize_words", "text: str", "str",
   "Return $text with the first letter of every space-separated word in upper case.",
   'return " ".join(word[:1].upper() + word[1:] for word in $text.split(" "))',
   cases=[(("hello world",), "Hello World"), (("python is fun",), "Python Is Fun"),
          (("already Upper",), "Already Upper"), (("",), "")],
   how="It splits on single spaces, upper-cases the first character of each word and leaves the rest unchanged.",
   names=["title_case_words"], alts=["sentence", "s"], gen=lambda r: (_sentence(r),))

fn("snake_to_camel", "name: str", "str",
   "Convert a snake_case $name to camelCase.",
   """
   first, *rest = $name.split("_")
   return first + "".join(part[:1].upper() + part[1:] for part in rest)
   """,
   cases=[(("hello_world",), "helloWorld"), (("make_it_work",), "makeItWork"), (("plain",), "plain")],
   how="It splits the name on underscores, keeps the first part as it is and capitalises the first letter "
       "of every later part.",
   alts=["identifier", "snake"])

fn("camel_to_snake", "name: str", "str",
   "Convert a camelCase or PascalCase $name to snake_case.",
   """
   out = []
   for i, ch in enumerate($name):
       if ch.isupper() and i > 0:
           out.append("_")
       out.append(ch.lower())
   return "".join(out)
   """,
   cases=[(("helloWorld",), "hello_world"), (("CamelCase",), "camel_case"), (("x",), "x"),
          (("getHttpResponse",), "get_http_response")],
   how="It walks through the characters, puts an underscore before every upper-case letter except the first "
       "and lowercases everything.",
   alts=["identifier", "camel"])

fn("truncate", 'text: str; limit: int = 20; suffix: str = "..."', "str",
   "Shorten $text to at most $limit characters, ending with $suffix when it was cut.",
   """
   if len($text) <= $limit:
       return $text
   return $text[: max($limit - len($suffix), 0)] + $suffix
   """,
   cases=[(("hello world", 8), "hello..."), (("short", 10), "short"), (("abcdef", 4, "!"), "abc!"),
          (("a" * 25,), "a" * 17 + "...")],
   how="Text that is short enough is returned unchanged; otherwise it keeps the first $limit minus "
       "len($suffix) characters and appends $suffix.",
   alts=[("s", "max_len", "suffix"), ("message", "width", "ellipsis")])

fn("word_frequencies", "text: str", "dict[str, int]",
   "Return a dict that maps each lower-cased word in $text to how often it occurs.",
   """
   counts = {}
   for word in $text.lower().split():
       counts[word] = counts.get(word, 0) + 1
   return counts
   """,
   cases=[(("the cat and the hat",), {"the": 2, "cat": 1, "and": 1, "hat": 1}), (("A a A",), {"a": 3}),
          (("",), {})],
   how="It lowercases $text, splits it on whitespace and counts each word in a dictionary with dict.get.",
   names=["count_words"], alts=["document", "sentence"], gen=lambda r: (_sentence(r),))

fn("dedupe_chars", "text: str", "str",
   "Return $text with repeated characters removed, keeping the first occurrence of each.",
   ["""
    seen = set()
    out = []
    for ch in $text:
        if ch not in seen:
            seen.add(ch)
            out.append(ch)
    return "".join(out)
    """,
    'return "".join(dict.fromkeys($text))'],
   cases=[(("banana",), "ban"), (("hello world",), "helo wrd"), (("",), ""), (("abc",), "abc")],
   how=["It remembers the characters already seen in a set and keeps a character only the first time it appears.",
        "dict.fromkeys keeps the first occurrence of each character in order, and joining the keys gives the "
        "result."],
   names=["remove_duplicate_chars"], alts=["s", "word"], gen=lambda r: (r.choice(_WORDS),))

fn("is_anagram", "first: str; second: str", "bool",
   "Check whether $first and $second are anagrams of each other, ignoring spaces and case.",
   """
   clean_a = sorted($first.replace(" ", "").lower())
   clean_b = sorted($second.replace(" ", "").lower())
   return clean_a == clean_b
   """,
   cases=[(("listen", "silent"), True), (("Dormitory", "dirty room"), True), (("abc", "abd"), False),
          (("aab", "abb"), False)],
   how="It removes spaces, lowercases both strings and compares their sorted characters.",
   alts=[("a", "b"), ("word1", "word2")])

fn("most_common_char", "text: str", "str",
   "Return the character that occurs most often in $text; ties go to the one that appears first.",
   """
   if not $text:
       raise ValueError("input must not be empty")
   counts = {}
   for ch in $text:
       counts[ch] = counts.get(ch, 0) + 1
   return max(counts, key=counts.get)
   """,
   cases=[(("hello",), "l"), (("abcabc",), "a"), (("z",), "z"), (("aabbbc",), "b")],
   raises=[(("",), ValueError)], note="Raise ValueError if $text is empty.",
   how="It counts every character in a dictionary and returns the key with the largest count; the dictionary "
       "keeps insertion order, so ties go to the earliest character.",
   alts=["s", "word"], gen=lambda r: (r.choice(_WORDS),))

fn("run_length_encode", "text: str", "str",
   "Encode $text with run-length encoding: each character followed by the length of its run.",
   """
   if not $text:
       return ""
   parts = []
   current, run = $text[0], 1
   for ch in $text[1:]:
       if ch == current:
           run += 1
       else:
           parts.append(f"{current}{run}")
           current, run = ch, 1
   parts.append(f"{current}{run}")
   return "".join(parts)
   """,
   cases=[(("aaabcc",), "a3b1c2"), (("",), ""), (("abc",), "a1b1c1"), (("zzzz",), "z4")],
   how="It walks through $text counting how often the current character repeats and writes the character "
       "and its count whenever the run ends.",
   names=["compress_runs"], alts=["s", "data"],
   gen=lambda r: ("".join(r.choice("ab") * r.randint(1, 3) for _ in range(r.randint(1, 4))),))

fn("strip_punctuation", "text: str", "str",
   "Remove every character from $text that is not a letter, a digit or whitespace.",
   'return "".join(ch for ch in $text if ch.isalnum() or ch.isspace())',
   cases=[(("Hello, world!",), "Hello world"), (("no-op: ok?",), "noop ok"), (("42",), "42")],
   how="It keeps only the characters for which isalnum() or isspace() is true and joins them back together.",
   alts=["s", "sentence"])

fn("pad_number", "n: int; width: int = 3", "str",
   "Return $n as a string padded with leading zeros to at least $width characters.",
   "return str($n).zfill($width)",
   cases=[((7,), "007"), ((1234,), "1234"), ((5, 2), "05"), ((-4, 3), "-04")],
   how="str.zfill adds zeros on the left until the string is $width characters long and keeps a minus sign "
       "in front.",
   names=["zero_pad"], alts=[("number", "width"), ("value", "digits")],
   gen=lambda r: (r.randint(0, 999), r.randint(1, 5)))

fn("caesar_shift", "text: str; shift: int = 3", "str",
   "Shift every ASCII letter in $text by $shift places in the alphabet, keeping its case and leaving other "
   "characters alone.",
   """
   result = []
   for ch in $text:
       if ch.isascii() and ch.isalpha():
           base = ord("A") if ch.isupper() else ord("a")
           result.append(chr((ord(ch) - base + $shift) % 26 + base))
       else:
           result.append(ch)
   return "".join(result)
   """,
   cases=[(("abc",), "def"), (("Hello, World!", 1), "Ifmmp, Xpsme!"), (("xyz", 3), "abc"), (("abc", -1), "zab")],
   how="For each ASCII letter it moves the code point $shift places within its alphabet, wrapping around with "
       "% 26, and copies every other character unchanged.",
   names=["caesar_cipher"], alts=[("message", "key"), ("s", "k")],
   gen=lambda r: (_sentence(r), r.randint(-30, 30)))

fn("count_overlapping", "text: str; sub: str", "int",
   "Count how many times $sub occurs in $text, including overlapping occurrences.",
   """
   if not $sub:
       raise ValueError("$sub must not be empty")
   count = 0
   start = $text.find($sub)
   while start != -1:
       count += 1
       start = $text.find($sub, start + 1)
   return count
   """,
   cases=[(("aaaa", "aa"), 3), (("hello", "l"), 2), (("abc", "d"), 0), (("abababa", "aba"), 3)],
   raises=[(("abc", ""), ValueError)], note="Raise ValueError if $sub is empty.",
   how="It calls str.find repeatedly, starting one character after the previous match, so overlapping matches "
       "are counted too.",
   names=["count_occurrences"], alts=[("haystack", "needle"), ("s", "pattern")])

fn("longest_word", "text: str", "str",
   "Return the longest word in $text (the first one on ties), or an empty string if there are no words.",
   ["""
    best = ""
    for word in $text.split():
        if len(word) > len(best):
            best = word
    return best
    """,
    'return max($text.split(), key=len, default="")'],
   cases=[(("the quick brown fox",), "quick"), (("a bb cc",), "bb"), (("",), ""), (("   ",), "")],
   how=["It scans the words and replaces the current best only when it finds a strictly longer word, so the "
        "first longest word wins.",
        'max with key=len returns the first longest word, and default="" covers a text without words.'],
   alts=["sentence", "s"], gen=lambda r: (_sentence(r),))

fn("initials", "full_name: str", "str",
   "Return the upper-case initials of $full_name, each followed by a dot.",
   'return "".join(part[0].upper() + "." for part in $full_name.split())',
   cases=[(("ada lovelace",), "A.L."), (("Grace Brewster Hopper",), "G.B.H."), (("",), "")],
   how="It splits the name on whitespace and joins the upper-cased first letter of every part with a dot "
       "after it.",
   alts=["name", "person"])

fn("mask_string", 's: str; visible: int = 4; char: str = "*"', "str",
   "Replace all but the last $visible characters of $s with $char.",
   """
   if len($s) <= $visible:
       return $s
   return $char * (len($s) - $visible) + $s[len($s) - $visible:]
   """,
   cases=[(("1234567890",), "******7890"), (("abc",), "abc"), (("secret", 2, "#"), "####et"),
          (("abcd", 0), "****")],
   how="It keeps the last $visible characters and puts $char in place of each character before them; short "
       "strings come back unchanged.",
   names=["mask_secret"], alts=[("secret", "keep", "fill"), ("card_number", "shown", "mask")])

fn("is_valid_identifier", "name: str", "bool",
   "Check whether $name can be used as a Python variable name: a valid identifier that is not a keyword.",
   "return $name.isidentifier() and not keyword.iskeyword($name)",
   cases=[(("total",), True), (("2fast",), False), (("class",), False), (("_private",), True)],
   how="str.isidentifier checks the syntax and keyword.iskeyword rules out reserved words such as class or def.",
   alts=["word", "candidate"], imports=["import keyword"])

fn("count_uppercase", "text: str", "int",
   "Return the number of upper-case letters in $text.",
   "return sum(ch.isupper() for ch in $text)",
   cases=[(("Hello World",), 2), (("abc",), 0), (("ABC def G",), 4)],
   how="It sums the booleans returned by isupper() for each character, since True counts as 1.",
   alts=["s", "line"])

fn("normalize_spaces", "text: str", "str",
   "Collapse every run of whitespace in $text into one space, without spaces at either end.",
   'return " ".join($text.split())',
   cases=[(("  hello   world  ",), "hello world"), (("a\tb\nc",), "a b c"), (("",), "")],
   how="str.split() without arguments splits on any run of whitespace and drops empty pieces, so joining with "
       "one space normalises the spacing.",
   names=["collapse_whitespace"], alts=["s", "line"])

fn("slugify", "text: str", "str",
   "Turn $text into a URL slug: lower case, with every run of other characters replaced by one hyphen.",
   'return re.sub(r"[^a-z0-9]+", "-", $text.lower()).strip("-")',
   cases=[(("Hello, World!",), "hello-world"), (("  Python 3.12 Release ",), "python-3-12-release"),
          (("already-slug",), "already-slug")],
   how="It lowercases $text, replaces every run of characters other than a-z and 0-9 with a hyphen using "
       "re.sub and strips hyphens from both ends.",
   alts=["title", "s"], imports=["import re"], gen=lambda r: (_sentence(r).title() + r.choice(["!", "?", ""]),))

fn("parse_key_values", 'text: str; sep: str = ";"', "dict[str, str]",
   "Parse a string like 'a=1;b=2' into a dict, splitting pairs on $sep and skipping empty pairs.",
   """
   result = {}
   for pair in $text.split($sep):
       if pair.strip():
           key, _, value = pair.partition("=")
           result[key.strip()] = value.strip()
   return result
   """,
   cases=[(("a=1;b=2",), {"a": "1", "b": "2"}), (("x = 10 ; ; y=",), {"x": "10", "y": ""}),
          (("k=v,w=z", ","), {"k": "v", "w": "z"}), (("",), {})],
   how="It splits $text on $sep, ignores blank pieces and uses str.partition to separate each key from its "
       "value, stripping spaces from both.",
   names=["parse_pairs"], alts=[("line", "delimiter"), ("config", "separator")])

fn("word_lengths", "text: str", "list[int]",
   "Return the length of every word in $text, in order.",
   "return [len(word) for word in $text.split()]",
   cases=[(("to be or not",), [2, 2, 2, 3]), (("",), []), (("hello",), [5])],
   how="It splits $text on whitespace and takes len() of each word in a list comprehension.",
   alts=["sentence", "s"], gen=lambda r: (_sentence(r),))

fn("alternate_case", "text: str", "str",
   "Return $text with its characters alternating between upper and lower case, starting with upper case.",
   'return "".join(ch.upper() if i % 2 == 0 else ch.lower() for i, ch in enumerate($text))',
   cases=[(("hello",), "HeLlO"), (("ABCD",), "AbCd"), (("",), "")],
   how="It enumerates the characters and upper-cases those at even positions while lowercasing those at odd "
       "positions.",
   alts=["s", "word"], gen=lambda r: (r.choice(_WORDS),))

fn("hamming_distance", "a: str; b: str", "int",
   "Return the number of positions at which the equal-length strings $a and $b differ.",
   """
   if len($a) != len($b):
       raise ValueError("strings must have equal length")
   return sum(x != y for x, y in zip($a, $b))
   """,
   cases=[(("karolin", "kathrin"), 3), (("abc", "abc"), 0), (("", ""), 0)],
   raises=[(("a", "ab"), ValueError)], note="Raise ValueError if their lengths differ.",
   how="After checking the lengths, it zips the two strings and counts the positions where the characters "
       "differ.",
   alts=[("first", "second"), ("s1", "s2")])

# --- lists -----------------------------------------------------------------------------------------------------
category("lists")

fn("chunk", "items: list; size: int", "list[list]",
   "Split $items into consecutive chunks of length $size; the last chunk may be shorter.",
   """
   if $size <= 0:
       raise ValueError("$size must be positive")
   return [$items[i:i + $size] for i in range(0, len($items), $size)]
   """,
   cases=[(([1, 2, 3, 4, 5], 2), [[1, 2], [3, 4], [5]]), (([], 3), []), ((["a", "b", "c"], 3), [["a", "b", "c"]])],
   raises=[(([1], 0), ValueError)], note="Raise ValueError if $size is not positive.",
   how="It steps through the indices in strides of $size and slices out one chunk at each step.",
   names=["split_into_chunks"], alts=[("values", "n"), ("seq", "chunk_size")],
   gen=lambda r: (_ints(r), r.randint(1, 3)))

fn("flatten", "nested: list[list]", "list",
   "Flatten $nested, a list of lists, by one level.",
   ["return [item for sub in $nested for item in sub]",
    """
    flat = []
    for sub in $nested:
        flat.extend(sub)
    return flat
    """],
   cases=[(([[1, 2], [3], []],), [1, 2, 3]), (([],), []), (([["a"], ["b", "c"]],), ["a", "b", "c"])],
   how=["A nested list comprehension iterates over each inner list and then over its items.",
        "It extends a result list with every inner list in turn."],
   names=["flatten_once"], alts=["lists", "rows"])

fn("deep_flatten", "nested: list", "list",
   "Flatten the arbitrarily nested lists in $nested into one flat list.",
   """
   flat = []
   for item in $nested:
       if isinstance(item, list):
           flat.extend($fn(item))
       else:
           flat.append(item)
   return flat
   """,
   cases=[(([1, [2, [3, [4]]], 5],), [1, 2, 3, 4, 5]), (([],), []), (([[[]]],), []), ((["a", ["b"]],), ["a", "b"])],
   how="It calls itself on every element that is a list and appends everything else, so any depth of nesting "
       "is flattened.",
   names=["flatten_all"], alts=["data", "tree"])

fn("unique_in_order", "items: list", "list",
   "Return the distinct elements of $items in the order they first appear.",
   ["""
    seen = set()
    result = []
    for item in $items:
        if item not in seen:
            seen.add(item)
            result.append(item)
    return result
    """,
    "return list(dict.fromkeys($items))"],
   cases=[(([3, 1, 3, 2, 1],), [3, 1, 2]), (([],), []), ((["a", "a"],), ["a"])],
   how=["It tracks the elements already seen in a set and appends an element only the first time it appears.",
        "dict.fromkeys keeps one key per distinct element in first-seen order, and list() turns the keys back "
        "into a list."],
   names=["dedupe"], alts=["values", "seq"], gen=lambda r: (_ints(r, 0, 4, 7),))

fn("second_largest", "nums: list[int]", "int",
   "Return the second largest distinct value in $nums.",
   """
   distinct = sorted(set($nums))
   if len(distinct) < 2:
       raise ValueError("need at least two distinct values")
   return distinct[-2]
   """,
   cases=[(([4, 1, 7, 7, 3],), 4), (([2, 1],), 1), (([-5, -2, -9],), -5)],
   raises=[(([5, 5],), ValueError), (([],), ValueError)],
   note="Raise ValueError if there are fewer than two distinct values.",
   how="It sorts the distinct values taken from a set and returns the one just below the largest.",
   alts=["numbers", "values"], gen=lambda r: (_ints(r),))

fn("running_sum", "nums: list[int]", "list[int]",
   "Return the running totals of $nums.",
   """
   total = 0
   result = []
   for x in $nums:
       total += x
       result.append(total)
   return result
   """,
   cases=[(([1, 2, 3, 4],), [1, 3, 6, 10]), (([],), []), (([5, -5, 5],), [5, 0, 5])],
   how="It keeps a running total and appends it after adding each number.",
   names=["cumulative_sum"], alts=["numbers", "values"], gen=lambda r: (_ints(r),))

fn("moving_average", "nums: list[float]; window: int", "list[float]",
   "Return the average of every run of $window consecutive values in $nums.",
   """
   if $window <= 0:
       raise ValueError("$window must be positive")
   return [sum($nums[i:i + $window]) / $window for i in range(len($nums) - $window + 1)]
   """,
   cases=[(([1, 2, 3, 4], 2), [1.5, 2.5, 3.5]), (([2, 4, 6], 3), [4.0]), (([1, 2], 3), [])],
   raises=[(([1, 2], 0), ValueError)], note="Raise ValueError if $window is not positive.",
   how="For each start position it sums the next $window values and divides by $window, so a list shorter "
       "than the window gives no averages.",
   alts=[("values", "size"), ("series", "k")])

fn("rotate_right", "items: list; k: int", "list",
   "Return a new list with $items rotated to the right by $k positions.",
   """
   if not $items:
       return []
   shift = $k % len($items)
   return $items[len($items) - shift:] + $items[:len($items) - shift]
   """,
   cases=[(([1, 2, 3, 4, 5], 2), [4, 5, 1, 2, 3]), (([1, 2, 3], 0), [1, 2, 3]), (([1, 2, 3], 4), [3, 1, 2]),
          (([], 3), []), (([1, 2, 3], -1), [2, 3, 1])],
   how="It reduces $k modulo the length and puts that many elements from the end in front of the rest.",
   names=["rotate_list"], alts=[("values", "steps"), ("seq", "n")],
   gen=lambda r: (_ints(r), r.randint(-5, 8)))

fn("pairwise_differences", "nums: list[int]", "list[int]",
   "Return the differences between consecutive elements of $nums.",
   "return [b - a for a, b in zip($nums, $nums[1:])]",
   cases=[(([1, 4, 9, 16],), [3, 5, 7]), (([5],), []), (([3, 1],), [-2])],
   how="It zips the list with itself shifted by one and subtracts each element from the next.",
   names=["differences"], alts=["values", "series"], gen=lambda r: (_ints(r),))

fn("find_index", "items: list; target", "int",
   "Return the index of the first element of $items equal to $target, or -1 if there is none.",
   """
   for i, item in enumerate($items):
       if item == $target:
           return i
   return -1
   """,
   cases=[(([5, 3, 5], 5), 0), ((["a", "b"], "b"), 1), (([], 1), -1), (([1, 2], 3), -1)],
   how="It enumerates the elements and returns the first index whose element equals $target, falling back "
       "to -1 after the loop.",
   alts=[("values", "value"), ("seq", "wanted")], gen=lambda r: (_ints(r, 0, 5), r.randint(0, 5)))

fn("count_greater", "nums: list[int]; threshold: int", "int",
   "Count the elements of $nums that are strictly greater than $threshold.",
   "return sum(1 for x in $nums if x > $threshold)",
   cases=[(([1, 5, 8, 10], 5), 2), (([], 0), 0), (([-1, -2], -3), 2)],
   how="A generator expression yields 1 for every element above $threshold and sum adds them up.",
   names=["count_above"], alts=[("values", "limit"), ("scores", "cutoff")],
   gen=lambda r: (_ints(r), r.randint(-5, 5)))

fn("merge_sorted", "left: list[int]; right: list[int]", "list[int]",
   "Merge the sorted lists $left and $right into one sorted list.",
   """
   merged = []
   i = j = 0
   while i < len($left) and j < len($right):
       if $left[i] <= $right[j]:
           merged.append($left[i])
           i += 1
       else:
           merged.append($right[j])
           j += 1
   merged.extend($left[i:])
   merged.extend($right[j:])
   return merged
   """,
   cases=[(([1, 4, 6], [2, 3, 7]), [1, 2, 3, 4, 6, 7]), (([], [1]), [1]), (([1, 1], [1]), [1, 1, 1])],
   how="It walks both lists with two indices, always taking the smaller front element, then appends what is "
       "left of either list.",
   alts=[("a", "b"), ("first", "second")], gen=lambda r: (sorted(_ints(r, 0, 20, 4)), sorted(_ints(r, 0, 20, 4))))

fn("interleave", "first: list; second: list", "list",
   "Alternate the elements of $first and $second, followed by the leftovers of the longer list.",
   """
   result = []
   for x, y in zip($first, $second):
       result.extend([x, y])
   shorter = min(len($first), len($second))
   result.extend($first[shorter:] or $second[shorter:])
   return result
   """,
   cases=[(([1, 2, 3], ["a", "b"]), [1, "a", 2, "b", 3]), (([], [1, 2]), [1, 2]), (([1], [2]), [1, 2])],
   how="It zips the lists to take pairs in turn and then extends the result with the tail of whichever list "
       "is longer.",
   alts=[("a", "b"), ("xs", "ys")], gen=lambda r: (_ints(r, 0, 9, 3), _ints(r, 0, 9, 4)))

fn("split_even_odd", "nums: list[int]", "tuple[list[int], list[int]]",
   "Split $nums into a tuple (even numbers, odd numbers), keeping their order.",
   """
   evens = [x for x in $nums if x % 2 == 0]
   odds = [x for x in $nums if x % 2 != 0]
   return evens, odds
   """,
   cases=[(([1, 2, 3, 4],), ([2, 4], [1, 3])), (([],), ([], [])), (([-3, 0],), ([0], [-3]))],
   how="Two list comprehensions pick the elements whose remainder modulo 2 is zero and non-zero.",
   alts=["numbers", "values"], gen=lambda r: (_ints(r),))

fn("max_subarray_sum", "nums: list[int]", "int",
   "Return the largest sum of a non-empty contiguous slice of $nums.",
   """
   if not $nums:
       raise ValueError("$nums must not be empty")
   best = current = $nums[0]
   for x in $nums[1:]:
       current = max(x, current + x)
       best = max(best, current)
   return best
   """,
   cases=[(([-2, 1, -3, 4, -1, 2, 1, -5, 4],), 6), (([-3, -1, -2],), -1), (([5],), 5)],
   raises=[(([],), ValueError)], note="Raise ValueError if $nums is empty.",
   how="It uses Kadane's algorithm: the best sum ending at each position is either the element alone or the "
       "element added to the previous best, and the overall maximum is tracked.",
   alts=["values", "arr"])

fn("binary_search", "items: list[int]; target: int", "int",
   "Return an index of $target in the sorted list $items, or -1 if it is absent.",
   """
   lo, hi = 0, len($items) - 1
   while lo <= hi:
       mid = (lo + hi) // 2
       if $items[mid] == $target:
           return mid
       if $items[mid] < $target:
           lo = mid + 1
       else:
           hi = mid - 1
   return -1
   """,
   cases=[(([1, 3, 5, 7, 9], 7), 3), (([1, 3, 5], 4), -1), (([], 1), -1), (([2], 2), 0)],
   how="It keeps a search range from lo to hi and halves it at every step by comparing $target with the middle "
       "element.",
   alts=[("sorted_values", "value"), ("arr", "key")])

fn("transpose", "matrix: list[list[int]]", "list[list[int]]",
   "Return the transpose of a rectangular $matrix given as a list of rows.",
   "return [list(row) for row in zip(*$matrix)]",
   cases=[(([[1, 2, 3], [4, 5, 6]],), [[1, 4], [2, 5], [3, 6]]), (([[1]],), [[1]]), (([],), [])],
   how="Unpacking the rows into zip groups the i-th elements of all rows together, and each group becomes a "
       "row of the result.",
   alts=["grid", "m"])

fn("zip_to_dict", "keys: list; values: list", "dict",
   "Build a dict from the parallel lists $keys and $values.",
   """
   if len($keys) != len($values):
       raise ValueError("$keys and $values must have the same length")
   return dict(zip($keys, $values))
   """,
   cases=[((["a", "b"], [1, 2]), {"a": 1, "b": 2}), (([], []), {}), ((["x", "x"], [1, 2]), {"x": 2})],
   raises=[((["a"], []), ValueError)], note="Raise ValueError if the lists have different lengths.",
   how="After checking that the lengths match, it pairs the lists with zip and passes the pairs to dict().",
   names=["pairs_to_dict"], alts=[("names", "items"), ("fields", "data")])

fn("most_frequent", "items: list", None,
   "Return the most frequent element of $items (the earliest one on ties), or None for an empty list.",
   """
   counts = {}
   for item in $items:
       counts[item] = counts.get(item, 0) + 1
   return max(counts, key=counts.get) if counts else None
   """,
   cases=[(([1, 2, 2, 3, 3, 3],), 3), ((["a", "b", "a"],), "a"), (([],), None), (([4, 5],), 4)],
   how="It counts the elements in a dictionary and takes the key with the highest count; the dictionary keeps "
       "insertion order, so ties go to the earliest element.",
   alts=["values", "votes"], gen=lambda r: (_ints(r, 0, 3, 6),))

fn("remove_all", "items: list; value", "list",
   "Return a new list with every occurrence of $value removed from $items.",
   "return [item for item in $items if item != $value]",
   cases=[(([1, 2, 1, 3], 1), [2, 3]), (([], 0), []), ((["a"], "b"), ["a"])],
   how="A list comprehension keeps only the elements that differ from $value and leaves the input untouched.",
   alts=[("values", "unwanted"), ("seq", "target")], gen=lambda r: (_ints(r, 0, 3), r.randint(0, 3)))

fn("all_equal", "items: list", "bool",
   "Check whether all elements of $items are equal; an empty list counts as all equal.",
   "return all(item == $items[0] for item in $items)",
   cases=[(([2, 2, 2],), True), (([1, 2],), False), (([],), True)],
   how="It compares every element with the first one; all() of an empty sequence is True, so an empty list "
       "never reads a first element.",
   alts=["values", "seq"])

fn("is_sorted", "items: list; descending: bool = False", "bool",
   "Check whether $items is sorted in ascending order, or in descending order when $descending is true.",
   """
   pairs = zip($items, $items[1:])
   if $descending:
       return all(a >= b for a, b in pairs)
   return all(a <= b for a, b in pairs)
   """,
   cases=[(([1, 2, 2, 5],), True), (([3, 1],), False), (([3, 1], True), True), (([],), True)],
   how="It zips the list with itself shifted by one and checks that every neighbouring pair is in the "
       "requested order.",
   names=["is_ordered"], alts=[("values", "reverse"), ("seq", "decreasing")])

fn("product", "nums: list[int]", "int",
   "Return the product of all numbers in $nums (1 for an empty list).",
   """
   result = 1
   for x in $nums:
       result *= x
   return result
   """,
   cases=[(([2, 3, 4],), 24), (([],), 1), (([5, 0, 2],), 0), (([-1, 3],), -3)],
   how="It starts from 1, the neutral element of multiplication, and multiplies in every number.",
   names=["multiply_all"], alts=["values", "factors"], gen=lambda r: (_ints(r, -5, 5, 4),))

fn("clip_values", "nums: list[int]; low: int; high: int", "list[int]",
   "Return $nums with every value limited to the range from $low to $high.",
   "return [min(max(x, $low), $high) for x in $nums]",
   cases=[(([1, 5, 10], 2, 8), [2, 5, 8]), (([], 0, 1), []), (([-3, 3], -1, 1), [-1, 1])],
   how="Each value is raised to at least $low with max and then lowered to at most $high with min.",
   names=["clamp_all"], alts=[("values", "lo", "hi"), ("data", "minimum", "maximum")],
   gen=lambda r: (_ints(r), r.randint(-5, 0), r.randint(1, 5)))

fn("sum_of_squares", "nums: list[int]", "int",
   "Return the sum of the squares of $nums.",
   "return sum(x * x for x in $nums)",
   cases=[(([1, 2, 3],), 14), (([],), 0), (([-2],), 4)],
   how="A generator expression squares each number and sum adds the squares up.",
   alts=["values", "xs"], gen=lambda r: (_ints(r),))

fn("index_of_max", "nums: list[int]", "int",
   "Return the index of the largest value in $nums (the first one on ties).",
   """
   if not $nums:
       raise ValueError("$nums must not be empty")
   best = 0
   for i in range(1, len($nums)):
       if $nums[i] > $nums[best]:
           best = i
   return best
   """,
   cases=[(([3, 9, 2, 9],), 1), (([5],), 0), (([-1, -7],), 0)],
   raises=[(([],), ValueError)], note="Raise ValueError if $nums is empty.",
   how="It remembers the position of the best value so far and moves it only when it finds a strictly larger "
       "value.",
   names=["argmax"], alts=["values", "scores"])

fn("diagonal_sum", "matrix: list[list[int]]", "int",
   "Return the sum of the main diagonal of the square $matrix.",
   "return sum($matrix[i][i] for i in range(len($matrix)))",
   cases=[(([[1, 2], [3, 4]],), 5), (([[5]],), 5), (([],), 0)],
   how="It adds up the elements whose row index equals their column index.",
   names=["trace"], alts=["grid", "m"])

# --- dicts -----------------------------------------------------------------------------------------------------
category("dicts")

fn("invert_dict", "mapping: dict", "dict",
   "Return a new dict with the keys and values of $mapping swapped.",
   "return {value: key for key, value in $mapping.items()}",
   cases=[(({"a": 1, "b": 2},), {1: "a", 2: "b"}), (({},), {}), (({"x": 1, "y": 1},), {1: "y"})],
   how="A dict comprehension uses each value as the new key; when values repeat, the last key wins.",
   names=["swap_keys_values"], alts=["d", "table"])

fn("merge_dicts", "base: dict; override: dict", "dict",
   "Return a new dict with the entries of $base updated by those of $override.",
   ["""
    merged = dict($base)
    merged.update($override)
    return merged
    """,
    "return {**$base, **$override}"],
   cases=[(({"a": 1, "b": 2}, {"b": 3}), {"a": 1, "b": 3}), (({}, {"x": 0}), {"x": 0}), (({"k": "v"}, {}), {"k": "v"})],
   how=["It copies $base so the input is not modified and then updates the copy with $override, whose values "
        "win on shared keys.",
        "Unpacking both dicts into a new literal lets the later one, $override, win on shared keys."],
   alts=[("a", "b"), ("defaults", "updates")])

fn("group_by_length", "words: list[str]", "dict[int, list[str]]",
   "Group $words by length into a dict that maps each length to the words of that length.",
   """
   groups = {}
   for word in $words:
       groups.setdefault(len(word), []).append(word)
   return groups
   """,
   cases=[((["a", "bb", "cc", "d"],), {1: ["a", "d"], 2: ["bb", "cc"]}), (([],), {}), ((["xyz"],), {3: ["xyz"]})],
   how="dict.setdefault creates an empty list the first time a length is seen, and each word is appended to "
       "the list for its length.",
   alts=["items", "names"], gen=lambda r: (r.sample(_WORDS, r.randint(1, 4)),))

fn("pick_keys", "mapping: dict; keys: list", "dict",
   "Return a dict with only the entries of $mapping whose key is in $keys, in the order of $keys.",
   "return {key: $mapping[key] for key in $keys if key in $mapping}",
   cases=[(({"a": 1, "b": 2, "c": 3}, ["c", "a"]), {"c": 3, "a": 1}), (({"a": 1}, ["z"]), {}), (({}, []), {})],
   how="A dict comprehension walks $keys and copies only the keys that exist in $mapping.",
   names=["filter_keys"], alts=[("d", "wanted"), ("record", "fields")])

fn("sum_values", "mapping: dict[str, int]", "int",
   "Return the sum of all values in $mapping.",
   "return sum($mapping.values())",
   cases=[(({"a": 1, "b": 2},), 3), (({},), 0), (({"x": -4, "y": 4, "z": 1},), 1)],
   how="It passes the dict's values view straight to sum().",
   alts=["d", "totals"])

fn("key_of_max", "mapping: dict", None,
   "Return the key with the largest value in $mapping, or None if it is empty.",
   """
   if not $mapping:
       return None
   return max($mapping, key=$mapping.get)
   """,
   cases=[(({"a": 3, "b": 7, "c": 5},), "b"), (({},), None), (({"x": 1, "y": 1},), "x")],
   how="max iterates over the keys and compares them by their values through $mapping.get.",
   names=["argmax_key"], alts=["d", "scores"])

fn("count_by_first_letter", "words: list[str]", "dict[str, int]",
   "Count how many of $words start with each letter, ignoring case and skipping empty strings.",
   """
   counts = {}
   for word in $words:
       if word:
           letter = word[0].lower()
           counts[letter] = counts.get(letter, 0) + 1
   return counts
   """,
   cases=[((["apple", "Avocado", "banana", ""],), {"a": 2, "b": 1}), (([],), {}), ((["Zebra", "zoo"],), {"z": 2})],
   how="For each non-empty word it lowercases the first character and increments that letter's count in a "
       "dictionary.",
   alts=["names", "items"], gen=lambda r: (r.sample(_WORDS, r.randint(1, 5)),))

fn("nested_get", "data: dict; path: list; default = None", None,
   "Return the value found by following the keys in $path through the nested dicts in $data, or $default "
   "if a key is missing.",
   """
   current = $data
   for key in $path:
       if not isinstance(current, dict) or key not in current:
           return $default
       current = current[key]
   return current
   """,
   cases=[(({"a": {"b": {"c": 1}}}, ["a", "b", "c"]), 1), (({"a": {}}, ["a", "x"]), None),
          (({"a": 1}, ["a", "b"], 0), 0), (({"k": 2}, []), {"k": 2})],
   how="It walks down one level per key and returns $default as soon as a level is not a dict or lacks the key.",
   alts=[("obj", "keys", "fallback"), ("config", "path", "default")])

fn("sort_by_value", "mapping: dict; descending: bool = False", "list[tuple]",
   "Return the (key, value) pairs of $mapping sorted by value, largest first when $descending is true.",
   "return sorted($mapping.items(), key=lambda pair: pair[1], reverse=$descending)",
   cases=[(({"a": 3, "b": 1, "c": 2},), [("b", 1), ("c", 2), ("a", 3)]),
          (({"a": 3, "b": 1}, True), [("a", 3), ("b", 1)]), (({},), [])],
   how="sorted orders the items using each value as the sort key, and reverse flips the order when $descending "
       "is true.",
   alts=[("d", "reverse"), ("scores", "highest_first")])

fn("changed_keys", "old: dict; new: dict", "list",
   "Return the sorted keys whose values differ between $old and $new, including keys found in only one of them.",
   """
   missing = object()
   keys = set($old) | set($new)
   return sorted(k for k in keys if $old.get(k, missing) != $new.get(k, missing))
   """,
   cases=[(({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}), ["b", "c"]), (({}, {}), []), (({"x": None}, {}), ["x"])],
   how="It looks at the union of both key sets and keeps a key when its values differ, using a private sentinel "
       "so that a missing key never equals a stored None.",
   names=["diff_keys"], alts=[("before", "after"), ("a", "b")])

fn("flatten_dict", 'data: dict; sep: str = "."', "dict",
   "Flatten the nested dicts in $data into one level, joining keys with $sep.",
   """
   flat = {}
   for key, value in $data.items():
       if isinstance(value, dict):
           for sub_key, sub_value in $fn(value, $sep).items():
               flat[f"{key}{$sep}{sub_key}"] = sub_value
       else:
           flat[key] = value
   return flat
   """,
   cases=[(({"a": {"b": 1, "c": {"d": 2}}, "e": 3},), {"a.b": 1, "a.c.d": 2, "e": 3}), (({},), {}),
          (({"x": {"y": 1}}, "/"), {"x/y": 1})],
   how="It recurses into every value that is a dict and prefixes the inner keys with the outer key and $sep.",
   alts=[("nested", "joiner"), ("config", "separator")])

# --- math ------------------------------------------------------------------------------------------------------
category("math")

fn("factorial", "n: int", "int",
   "Return the factorial of $n.",
   ["""
    if $n < 0:
        raise ValueError("$n must be non-negative")
    result = 1
    for i in range(2, $n + 1):
        result *= i
    return result
    """,
    """
    if $n < 0:
        raise ValueError("$n must be non-negative")
    return 1 if $n < 2 else $n * $fn($n - 1)
    """],
   cases=[((0,), 1), ((5,), 120), ((10,), 3628800)],
   raises=[((-1,), ValueError)], note="Raise ValueError if $n is negative.",
   how=["It multiplies the numbers from 2 up to $n into an accumulator that starts at 1.",
        "It is recursive: n! is n times (n - 1)!, with 0! and 1! equal to 1."],
   alts=["number", "k"], gen=lambda r: (r.randint(0, 12),))

fn("fibonacci", "n: int", "int",
   "Return the Fibonacci number at position $n, counting from 0 (0, 1, 1, 2, 3, 5, ...).",
   """
   if $n < 0:
       raise ValueError("$n must be non-negative")
   a, b = 0, 1
   for _ in range($n):
       a, b = b, a + b
   return a
   """,
   cases=[((0,), 0), ((1,), 1), ((10,), 55), ((20,), 6765)],
   raises=[((-3,), ValueError)], note="Raise ValueError if $n is negative.",
   how="It keeps the last two numbers of the sequence in a and b and advances them $n times.",
   names=["fib"], alts=["k", "index"], gen=lambda r: (r.randint(2, 30),))

fn("is_prime", "n: int", "bool",
   "Check whether $n is a prime number.",
   """
   if $n < 2:
       return False
   i = 2
   while i * i <= $n:
       if $n % i == 0:
           return False
       i += 1
   return True
   """,
   cases=[((2,), True), ((15,), False), ((97,), True), ((1,), False), ((0,), False)],
   how="Numbers below 2 are not prime; otherwise it tries every divisor up to the square root of $n.",
   alts=["number", "candidate"], gen=lambda r: (r.randint(0, 200),))

fn("gcd", "a: int; b: int", "int",
   "Return the greatest common divisor of $a and $b using Euclid's algorithm.",
   """
   $a, $b = abs($a), abs($b)
   while $b:
       $a, $b = $b, $a % $b
   return $a
   """,
   cases=[((12, 18), 6), ((17, 5), 1), ((0, 7), 7), ((-4, 6), 2)],
   how="It keeps replacing the pair by the second number and the remainder of dividing the first by the "
       "second; when the remainder reaches zero, the other number is the answer.",
   names=["greatest_common_divisor"], alts=[("x", "y"), ("m", "n")],
   gen=lambda r: (r.randint(1, 120), r.randint(1, 120)))

fn("lcm", "a: int; b: int", "int",
   "Return the least common multiple of $a and $b (0 if either is 0).",
   """
   if $a == 0 or $b == 0:
       return 0
   return abs($a * $b) // math.gcd($a, $b)
   """,
   cases=[((4, 6), 12), ((0, 5), 0), ((7, 3), 21), ((-4, 6), 12)],
   how="It divides the absolute product by the greatest common divisor from math.gcd and handles 0 separately.",
   names=["least_common_multiple"], alts=[("x", "y"), ("m", "n")], imports=["import math"],
   gen=lambda r: (r.randint(1, 30), r.randint(1, 30)))

fn("digit_sum", "n: int", "int",
   "Return the sum of the decimal digits of $n, ignoring its sign.",
   ["return sum(int(d) for d in str(abs($n)))",
    """
    $n = abs($n)
    total = 0
    while $n:
        total += $n % 10
        $n //= 10
    return total
    """],
   cases=[((1234,), 10), ((0,), 0), ((-907,), 16)],
   how=["It turns the absolute value into a string and adds up the digits.",
        "It takes off the last digit with % 10 and drops it with // 10 until nothing is left."],
   names=["sum_of_digits"], alts=["number", "value"], gen=lambda r: (r.randint(-9999, 99999),))

fn("celsius_to_fahrenheit", "celsius: float", "float",
   "Convert the temperature $celsius from degrees Celsius to degrees Fahrenheit.",
   "return $celsius * 9 / 5 + 32",
   cases=[((0,), 32.0), ((100,), 212.0), ((-40,), -40.0), ((37.5,), 99.5)],
   how="It applies the formula F = C * 9 / 5 + 32.",
   names=["c_to_f"], alts=["temp_c", "c"])

fn("mean", "nums: list[float]", "float",
   "Return the arithmetic mean of $nums.",
   """
   if not $nums:
       raise ValueError("mean of an empty list")
   return sum($nums) / len($nums)
   """,
   cases=[(([1, 2, 3, 4],), 2.5), (([5],), 5.0), (([-1, 1],), 0.0)],
   raises=[(([],), ValueError)], note="Raise ValueError if $nums is empty.",
   how="It divides the sum by the number of elements after rejecting an empty list.",
   names=["average"], alts=["values", "xs"])

fn("median", "nums: list[float]", "float",
   "Return the median of $nums.",
   """
   if not $nums:
       raise ValueError("median of empty list")
   ordered = sorted($nums)
   mid = len(ordered) // 2
   if len(ordered) % 2:
       return ordered[mid]
   return (ordered[mid - 1] + ordered[mid]) / 2
   """,
   cases=[(([3, 1, 2],), 2), (([4, 1, 3, 2],), 2.5), (([7],), 7)],
   raises=[(([],), ValueError)], note="Raise ValueError if $nums is empty.",
   how="It sorts a copy and returns the middle element, or the average of the two middle elements when the "
       "length is even.",
   alts=["values", "xs"])

fn("clamp", "x: float; low: float; high: float", "float",
   "Limit $x to the closed range from $low to $high.",
   """
   if $low > $high:
       raise ValueError("$low must not exceed $high")
   return max($low, min($x, $high))
   """,
   cases=[((5, 0, 10), 5), ((-3, 0, 10), 0), ((12, 0, 10), 10), ((2.5, 1.0, 2.0), 2.0)],
   raises=[((1, 5, 0), ValueError)], note="Raise ValueError if $low is greater than $high.",
   how="min caps $x at $high and max then lifts the result to at least $low.",
   alts=[("value", "lo", "hi"), ("n", "minimum", "maximum")])

fn("is_perfect_square", "n: int", "bool",
   "Check whether $n is a perfect square.",
   """
   if $n < 0:
       return False
   root = math.isqrt($n)
   return root * root == $n
   """,
   cases=[((16,), True), ((15,), False), ((0,), True), ((-4,), False)],
   how="math.isqrt gives the integer square root, and $n is a perfect square exactly when that root squared "
       "gives $n back.",
   alts=["number", "value"], imports=["import math"], gen=lambda r: (r.randint(0, 150),))

fn("primes_up_to", "limit: int", "list[int]",
   "Return all prime numbers up to and including $limit, using the sieve of Eratosthenes.",
   """
   if $limit < 2:
       return []
   is_prime = [True] * ($limit + 1)
   is_prime[0] = is_prime[1] = False
   for i in range(2, int($limit ** 0.5) + 1):
       if is_prime[i]:
           for multiple in range(i * i, $limit + 1, i):
               is_prime[multiple] = False
   return [i for i, prime in enumerate(is_prime) if prime]
   """,
   cases=[((10,), [2, 3, 5, 7]), ((1,), []), ((2,), [2]), ((30,), [2, 3, 5, 7, 11, 13, 17, 19, 23, 29])],
   how="It marks the multiples of each prime, starting from its square, as composite in a list of booleans "
       "and returns the indices still marked prime.",
   names=["sieve"], alts=["n", "upper"], gen=lambda r: (r.randint(3, 40),))

fn("collatz_steps", "n: int", "int",
   "Return how many steps of the Collatz rule (halve if even, else 3n + 1) it takes for $n to reach 1.",
   """
   if $n < 1:
       raise ValueError("$n must be positive")
   steps = 0
   while $n != 1:
       $n = $n // 2 if $n % 2 == 0 else 3 * $n + 1
       steps += 1
   return steps
   """,
   cases=[((1,), 0), ((6,), 8), ((27,), 111)],
   raises=[((0,), ValueError)], note="Raise ValueError if $n is not positive.",
   how="It applies the rule in a loop and counts the iterations until the value becomes 1.",
   alts=["number", "start"], gen=lambda r: (r.randint(2, 50),))

fn("to_binary", "n: int", "str",
   "Return the binary representation of the non-negative integer $n without a 0b prefix.",
   """
   if $n < 0:
       raise ValueError("$n must be non-negative")
   if $n == 0:
       return "0"
   digits = []
   while $n:
       digits.append(str($n % 2))
       $n //= 2
   return "".join(reversed(digits))
   """,
   cases=[((0,), "0"), ((5,), "101"), ((255,), "11111111")],
   raises=[((-1,), ValueError)], note="Raise ValueError if $n is negative.",
   how="It collects the remainders of repeated division by 2 and reverses them, because they come out least "
       "significant bit first.",
   names=["int_to_binary"], alts=["number", "value"], gen=lambda r: (r.randint(1, 300),))

fn("int_to_roman", "n: int", "str",
   "Convert the integer $n (from 1 to 3999) to a Roman numeral.",
   """
   if not 1 <= $n <= 3999:
       raise ValueError("$n must be between 1 and 3999")
   symbols = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
              (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
   result = []
   for value, symbol in symbols:
       count, $n = divmod($n, value)
       result.append(symbol * count)
   return "".join(result)
   """,
   cases=[((1994,), "MCMXCIV"), ((4,), "IV"), ((3999,), "MMMCMXCIX"), ((58,), "LVIII")],
   raises=[((0,), ValueError)], note="Raise ValueError if $n is outside that range.",
   how="It walks a table of values from largest to smallest, including subtractive pairs such as CM and IV, "
       "and writes each symbol as many times as it fits.",
   names=["to_roman"], alts=["number", "num"], gen=lambda r: (r.randint(1, 3999),))

fn("percent", "part: float; whole: float; digits: int = 1", "float",
   "Return $part as a percentage of $whole, rounded to $digits decimal places.",
   """
   if $whole == 0:
       raise ValueError("$whole must not be zero")
   return round(100 * $part / $whole, $digits)
   """,
   cases=[((1, 4), 25.0), ((1, 3), 33.3), ((2, 3, 2), 66.67), ((5, 5, 0), 100.0)],
   raises=[((1, 0), ValueError)], note="Raise ValueError if $whole is zero.",
   how="It computes 100 times $part divided by $whole and rounds the result with round().",
   names=["percentage"], alts=[("count", "total", "ndigits"), ("value", "total", "places")])

fn("count_digits", "n: int", "int",
   "Return the number of decimal digits in $n, ignoring the sign.",
   "return len(str(abs($n)))",
   cases=[((12345,), 5), ((0,), 1), ((-70,), 2)],
   how="It converts the absolute value to a string and takes its length.",
   alts=["number", "value"], gen=lambda r: (r.randint(-99999, 999999),))

fn("triangle_number", "n: int", "int",
   "Return the $n-th triangular number, the sum 1 + 2 + ... + $n.",
   "return $n * ($n + 1) // 2",
   cases=[((1,), 1), ((4,), 10), ((0,), 0), ((100,), 5050)],
   how="It uses Gauss's formula n * (n + 1) / 2 with integer division.",
   names=["triangular"], alts=["k", "m"], gen=lambda r: (r.randint(2, 60),))

fn("is_leap_year", "year: int", "bool",
   "Check whether $year is a leap year in the Gregorian calendar.",
   ["return $year % 4 == 0 and ($year % 100 != 0 or $year % 400 == 0)",
    """
    if $year % 400 == 0:
        return True
    if $year % 100 == 0:
        return False
    return $year % 4 == 0
    """],
   cases=[((2024,), True), ((1900,), False), ((2000,), True), ((2023,), False)],
   how=["A year is a leap year if it is divisible by 4, except century years, which must also be divisible "
        "by 400.",
        "It checks the rules from the most specific one down: divisible by 400, then by 100, then by 4."],
   alts=["y", "yr"], gen=lambda r: (r.randint(1890, 2110),))

fn("sum_of_multiples", "limit: int; a: int = 3; b: int = 5", "int",
   "Return the sum of all positive integers below $limit that are multiples of $a or $b.",
   "return sum(i for i in range(1, $limit) if i % $a == 0 or i % $b == 0)",
   cases=[((10,), 23), ((1,), 0), ((20, 4, 6), 64), ((16,), 60)],
   how="It loops over the numbers from 1 to $limit - 1 and adds those divisible by $a or by $b.",
   alts=[("n", "x", "y"), ("stop", "first", "second")],
   gen=lambda r: (r.randint(5, 40), r.randint(2, 5), r.randint(6, 9)))

fn("distance", "p: tuple[float, float]; q: tuple[float, float]", "float",
   "Return the Euclidean distance between the 2D points $p and $q.",
   "return math.hypot($q[0] - $p[0], $q[1] - $p[1])",
   cases=[(((0, 0), (3, 4)), 5.0), (((1, 1), (1, 1)), 0.0), (((-1, 2), (2, 6)), 5.0)],
   how="math.hypot takes the square root of the sum of the squared coordinate differences.",
   alts=[("a", "b"), ("start", "end")], imports=["import math"])

fn("normalize", "nums: list[float]", "list[float]",
   "Scale $nums linearly to the range 0..1 (all zeros when every value is the same).",
   """
   if not $nums:
       return []
   lo, hi = min($nums), max($nums)
   if lo == hi:
       return [0.0] * len($nums)
   return [(x - lo) / (hi - lo) for x in $nums]
   """,
   cases=[(([0, 5, 10],), [0.0, 0.5, 1.0]), (([3, 3],), [0.0, 0.0]), (([],), []), (([2, 4, 3],), [0.0, 1.0, 0.5])],
   how="It subtracts the minimum and divides by the range between minimum and maximum, returning zeros when "
       "that range is empty.",
   names=["min_max_scale"], alts=["values", "xs"])

fn("round_to_multiple", "x: int; base: int = 5", "int",
   "Round the integer $x to the nearest multiple of $base, rounding halves up.",
   """
   if $base <= 0:
       raise ValueError("$base must be positive")
   return ($x + $base // 2) // $base * $base
   """,
   cases=[((12,), 10), ((13,), 15), ((7, 10), 10), ((25, 10), 30), ((-3,), -5)],
   raises=[((3, 0), ValueError)], note="Raise ValueError if $base is not positive.",
   how="Adding half of $base before the floor division makes // round to the nearest multiple instead of "
       "always down.",
   alts=[("n", "step"), ("value", "multiple")], gen=lambda r: (r.randint(0, 100), r.choice([2, 5, 10])))

fn("safe_divide", "numerator: float; denominator: float; default: float = 0.0", "float",
   "Return $numerator / $denominator, or $default when $denominator is zero.",
   """
   if $denominator == 0:
       return $default
   return $numerator / $denominator
   """,
   cases=[((10, 4), 2.5), ((1, 0), 0.0), ((1, 0, -1.0), -1.0), ((9, 3), 3.0)],
   how="It checks for a zero denominator first and otherwise performs true division.",
   alts=[("a", "b", "fallback"), ("x", "y", "default")])

# --- misc ------------------------------------------------------------------------------------------------------
category("misc")

fn("parse_csv_line", 'line: str; sep: str = ","', "list[str]",
   "Split one CSV-like $line on $sep, stripping the spaces around each field.",
   "return [field.strip() for field in $line.split($sep)]",
   cases=[(("a, b ,c",), ["a", "b", "c"]), (("1;2", ";"), ["1", "2"]), (("",), [""])],
   how="It splits the line on $sep and calls strip() on every field; quoted separators are not handled.",
   names=["split_fields"], alts=[("row", "delimiter"), ("text", "separator")])

fn("format_duration", "seconds: int", "str",
   "Format $seconds (a number of seconds) like '1h 2m 5s', leaving out parts that are zero.",
   """
   hours, rest = divmod($seconds, 3600)
   minutes, sec = divmod(rest, 60)
   parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{sec}s" if sec else ""]
   return " ".join(p for p in parts if p) or "0s"
   """,
   cases=[((3725,), "1h 2m 5s"), ((59,), "59s"), ((3600,), "1h"), ((0,), "0s")],
   how="divmod splits the total into hours, minutes and seconds, and only the non-zero parts are joined, "
       "with 0s as the fallback.",
   alts=["total_seconds", "duration"], gen=lambda r: (r.randint(1, 10000),))

fn("is_valid_email", "email: str", "bool",
   "Check roughly whether $email looks like an e-mail address: a local part, one @ and a domain with a dot.",
   r'return re.fullmatch(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}", $email) is not None',
   cases=[(("ada@example.com",), True), (("no-at-sign.com",), False), (("a@b",), False),
          (("two@@example.org",), False)],
   how="re.fullmatch requires non-space characters, a single @, more characters and a dot followed by at "
       "least two letters.",
   alts=["address", "s"], imports=["import re"])

fn("compare_versions", "a: str; b: str", "int",
   "Compare the dotted version strings $a and $b, giving -1, 0 or 1 like a classic cmp().",
   """
   pa = [int(part) for part in $a.split(".")]
   pb = [int(part) for part in $b.split(".")]
   width = max(len(pa), len(pb))
   pa += [0] * (width - len(pa))
   pb += [0] * (width - len(pb))
   return (pa > pb) - (pa < pb)
   """,
   cases=[(("1.2.10", "1.2.9"), 1), (("1.0", "1"), 0), (("0.9", "1.0"), -1)],
   how="It turns both strings into lists of integers, pads the shorter one with zeros and compares the lists, "
       "turning the two comparison results into -1, 0 or 1.",
   alts=[("left", "right"), ("v1", "v2")],
   gen=lambda r: (".".join(str(r.randint(0, 3)) for _ in range(r.randint(1, 3))),
                  ".".join(str(r.randint(0, 3)) for _ in range(r.randint(1, 3)))))

fn("bytes_to_kib", "size: int; digits: int = 1", "float",
   "Convert $size bytes to kibibytes (1 KiB = 1024 bytes), rounded to $digits decimal places.",
   "return round($size / 1024, $digits)",
   cases=[((2048,), 2.0), ((1536,), 1.5), ((1000, 2), 0.98), ((0,), 0.0)],
   how="It divides by 1024 and rounds the quotient with round().",
   alts=[("num_bytes", "ndigits"), ("n", "places")])


# ---------------------------------------------------------------------------------------------------------------
# Rendering a variant of a library function
# ---------------------------------------------------------------------------------------------------------------

def _third_person(verb: str) -> str:
    lower = verb.lower()
    if lower.endswith(("s", "sh", "ch", "x", "z", "o")):
        return lower + "es"
    if lower.endswith("y") and lower[-2:-1] not in "aeiou":
        return lower[:-1] + "ies"
    return lower + "s"


def lit(value) -> str:
    """Python source for a value, with double-quoted strings (black style) where that is possible."""
    if isinstance(value, str):
        r = repr(value)
        return '"' + r[1:-1] + '"' if r.startswith("'") and '"' not in value else r
    if isinstance(value, list):
        return "[" + ", ".join(lit(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(lit(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{lit(k)}: {lit(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _has_float(value) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_float(v) for v in value)
    return False


@dataclass(frozen=True)
class Variant:
    """One concrete rendering of a library function: its name, parameter names and style."""

    fn: Fn
    name: str
    pnames: tuple[str, ...]
    typed: bool
    doc_style: str  # "none" | "line" | "doctest"
    body_index: int
    doctest_cases: tuple = ()

    def _mapping(self, code: bool) -> dict[str, str]:
        wrap = (lambda s: s) if code else (lambda s: f"`{s}`")
        mapping = {p.name: wrap(new) for p, new in zip(self.fn.params, self.pnames)}
        mapping["fn"] = wrap(self.name)
        return mapping

    def code_text(self, template: str) -> str:
        return Template(template).substitute(self._mapping(code=True))

    def prose(self, template: str) -> str:
        return Template(template).substitute(self._mapping(code=False))

    # --- prose pieces
    def describe(self) -> str:
        """Third-person description, e.g. "returns the words of `text` in reverse order"."""
        first, _, rest = self.prose(self.fn.doc).rstrip(".").partition(" ")
        return f"{_third_person(first)} {rest}"

    def note_prose(self, third_person: bool = False) -> str:
        if not self.fn.note:
            return ""
        first, _, rest = self.prose(self.fn.note).partition(" ")
        verb = _third_person(first) if third_person else first.lower()
        return f"{verb} {rest}"

    def how(self) -> str:
        return self.prose(self.fn.hows[self.body_index])

    def params_prose(self) -> str:
        names = [f"`{n}`" for n in self.pnames]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

    def short_signature(self) -> str:
        parts = [n + (f"={p.default}" if p.default else "") for p, n in zip(self.fn.params, self.pnames)]
        return f"{self.name}({', '.join(parts)})"

    def call(self, args: tuple) -> str:
        return f"{self.name}({', '.join(lit(a) for a in args)})"

    # --- code pieces
    def def_line(self) -> str:
        parts = []
        for p, new in zip(self.fn.params, self.pnames):
            if self.typed and p.type:
                parts.append(f"{new}: {p.type}" + (f" = {p.default}" if p.default else ""))
            else:
                parts.append(new + (f"={p.default}" if p.default else ""))
        ret = f" -> {self.fn.returns}" if self.typed and self.fn.returns else ""
        return f"def {self.name}({', '.join(parts)}){ret}:"

    def docstring_lines(self) -> list[str]:
        if self.doc_style == "none":
            return []
        text = self.code_text(self.fn.doc + (" " + self.fn.note if self.fn.note else ""))
        if self.doc_style == "line" and len(text) + 10 <= 100:
            return [f'    """{text}"""']
        lines = textwrap.wrap(text, width=92)
        out = [f'    """{lines[0]}'] + [f"    {line}" for line in lines[1:]]
        if self.doc_style == "doctest":
            out.append("")
            for args, expected in self.doctest_cases:
                # the docstring is not raw: double backslashes so that the doctest sees the escape itself
                for line in (f"    >>> {self.call(args)}", f"    {expected!r}"):
                    out.append(line.replace("\\", "\\\\"))
        return out + ['    """']

    def body_lines(self) -> list[str]:
        body = self.code_text(self.fn.bodies[self.body_index])
        return ["    " + line if line else "" for line in body.splitlines()]

    def import_block(self) -> str:
        return "\n".join(self.fn.imports) + "\n\n\n" if self.fn.imports else ""

    def head(self) -> str:
        """Imports, def line and docstring: what a completion prompt shows."""
        return self.import_block() + "\n".join([self.def_line()] + self.docstring_lines())

    def source(self) -> str:
        return self.head() + "\n" + "\n".join(self.body_lines())


def all_cases(fn_: Fn, extra: list) -> list[tuple[tuple, object]]:
    return list(fn_.cases) + extra


# ---------------------------------------------------------------------------------------------------------------
# Validation: everything is executed before it is written
# ---------------------------------------------------------------------------------------------------------------

class _FakeApprox:
    def __init__(self, expected, rel=1e-6, abs=1e-12):
        self.expected, self.rel, self.abs = expected, rel, abs

    def _close(self, a, b) -> bool:
        if isinstance(b, (list, tuple)):
            return isinstance(a, (list, tuple)) and len(a) == len(b) and all(self._close(x, y) for x, y in zip(a, b))
        return math.isclose(a, b, rel_tol=self.rel, abs_tol=self.abs)

    def __eq__(self, other):
        return self._close(other, self.expected)


class _FakeRaises:
    def __init__(self, exc):
        self.exc = exc

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            raise AssertionError(f"DID NOT RAISE {self.exc.__name__}")
        return issubclass(exc_type, self.exc)


def _fake_pytest() -> types.ModuleType:
    """The subset of pytest the generated tests use, so that the generator needs only the standard library."""
    mod = types.ModuleType("pytest")
    mod.approx = _FakeApprox
    mod.raises = _FakeRaises

    def parametrize(names, rows):
        def deco(func):
            func._params = ([n.strip() for n in names.split(",")], rows)
            return func
        return deco

    mod.mark = types.SimpleNamespace(parametrize=parametrize)
    return mod


@contextlib.contextmanager
def _temporary_modules(modules: dict[str, types.ModuleType]):
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def load_function(source: str, name: str, where: str):
    namespace: dict = {"__name__": f"example_{name}"}
    try:
        exec(compile(source, f"<{where}>", "exec"), namespace)
    except Exception as e:
        raise GenerationError(f"{where}: code does not run: {e!r}\n{source}") from None
    if name not in namespace:
        raise GenerationError(f"{where}: code does not define {name}\n{source}")
    return namespace[name]


def check_function(func, fn_: Fn, cases, where: str, source: str) -> None:
    """Every case must give exactly the expected result (compared by repr, so 2 != 2.0) and every bad
    input must raise the documented exception."""
    for args, expected in cases:
        try:
            got = func(*copy.deepcopy(args))
        except Exception as e:
            raise GenerationError(f"{where}: {fn_.name}{args!r} raised {e!r}\n{source}") from None
        if repr(got) != repr(expected):
            raise GenerationError(f"{where}: {fn_.name}{args!r} returned {got!r}, expected {expected!r}\n{source}")
    for args, exc in fn_.raises:
        try:
            func(*copy.deepcopy(args))
        except exc:
            continue
        except Exception as e:
            raise GenerationError(f"{where}: {fn_.name}{args!r} raised {e!r}, expected {exc.__name__}") from None
        raise GenerationError(f"{where}: {fn_.name}{args!r} did not raise {exc.__name__}\n{source}")


def check_variant_source(variant: Variant, source: str, cases, where: str) -> None:
    func = load_function(source, variant.name, where)
    check_function(func, variant.fn, cases, where, source)
    if variant.doc_style == "doctest":
        finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        for test in finder.find(func, variant.name, globs={variant.name: func}):
            result = runner.run(test, out=lambda _s: None)
            if result.failed:
                raise GenerationError(f"{where}: doctest failed\n{source}")


def run_test_code(function_source: str, test_code: str, module: str | None, where: str) -> int:
    """Run generated pytest-style tests against the function; returns how many test calls ran."""
    fake = _fake_pytest()
    modules = {"pytest": fake}
    test_ns: dict = {"__name__": "test_example"}
    if module:
        mod = types.ModuleType(module)
        exec(compile(function_source, f"<{where}:{module}>", "exec"), mod.__dict__)
        modules[module] = mod
    else:
        exec(compile(function_source, f"<{where}:function>", "exec"), test_ns)
    ran = 0
    with _temporary_modules(modules):
        try:
            exec(compile(test_code, f"<{where}:tests>", "exec"), test_ns)
            for name, obj in list(test_ns.items()):
                if not (name.startswith("test") and callable(obj)):
                    continue
                if hasattr(obj, "_params"):
                    names, rows = obj._params
                    for row in rows:
                        obj(**dict(zip(names, row if len(names) > 1 else (row,))))
                        ran += 1
                else:
                    obj()
                    ran += 1
        except Exception as e:
            raise GenerationError(f"{where}: generated tests fail: {e!r}\n{function_source}\n{test_code}") from None
    if not ran:
        raise GenerationError(f"{where}: no tests found\n{test_code}")
    return ran


def validate_library() -> dict[str, object]:
    """Run every body of every library function on its cases; return the canonical callables."""
    seen: set[str] = set()
    reference = {}
    for fn_ in LIBRARY:
        if fn_.name in seen:
            raise GenerationError(f"duplicate library function {fn_.name}")
        seen.add(fn_.name)
        if len(fn_.cases) < 3:
            raise GenerationError(f"{fn_.name}: needs at least 3 cases")
        for names in fn_.param_names:
            for body_index in range(len(fn_.bodies)):
                for fname in fn_.names:
                    v = Variant(fn_, fname, names, typed=True, doc_style="line", body_index=body_index)
                    check_variant_source(v, v.source(), fn_.cases, f"library:{fn_.name}")
                    # prose must substitute cleanly too
                    v.describe(), v.how(), v.note_prose()
        canonical = Variant(fn_, fn_.name, fn_.param_names[0], True, "none", 0)
        reference[fn_.name] = load_function(canonical.source(), fn_.name, f"library:{fn_.name}")
    return reference


# ---------------------------------------------------------------------------------------------------------------
# Sample builders
# ---------------------------------------------------------------------------------------------------------------

COMPLETION_SYSTEMS = [
    "You are a code completion engine. Continue the code exactly where it stops.",
    "You are an expert Python programmer.",
    "Complete the user's Python code. Reply with code only.",
]
CHAT_SYSTEMS = [
    "You are a helpful assistant that writes clean, correct Python code.",
    "You are an expert Python developer. Keep your answers short.",
    "You are a coding assistant. Prefer simple, readable solutions.",
]
TEST_SYSTEMS = [
    "You are a careful software engineer who writes focused unit tests.",
    "You write pytest tests. Keep them short and readable.",
]
EXPLAIN_SYSTEMS = [
    "You are a patient programming tutor. Explain code in plain English.",
    "Answer in at most three sentences.",
]
MODULES = {
    "strings": ["text_utils", "strings", "textkit"],
    "lists": ["list_utils", "sequences", "listkit"],
    "dicts": ["dict_utils", "mappings", "records"],
    "math": ["mathutils", "numbers_util", "calc"],
    "misc": ["helpers", "utils", "tools"],
}


def fence(code: str) -> str:
    return f"```python\n{code}\n```"


class Builder:
    """Draws variants and test cases for one task from its own seeded RNG."""

    def __init__(self, task: str, seed: int, reference: dict, exclude: frozenset[str] = frozenset()):
        self.task = task
        self.rng = random.Random(seed)
        self.reference = reference
        self.exclude = exclude  # library functions this builder never draws (held out for evaluation)
        self._order: list[Fn] = []

    def next_fn(self) -> Fn:
        if not self._order:
            self._order = [f for f in LIBRARY if f.name not in self.exclude]
            self.rng.shuffle(self._order)
        return self._order.pop()

    def extra_cases(self, fn_: Fn, k: int) -> list:
        """Up to k random argument tuples with the reference function's results (dropped if it raises)."""
        out = []
        if fn_.gen is None:
            return out
        for _ in range(k):
            args = fn_.gen(self.rng)
            try:
                out.append((args, self.reference[fn_.name](*copy.deepcopy(args))))
            except ValueError:
                pass
        return out

    def variant(self, fn_: Fn, *, typed=None, doc_styles=("line",), cases=(), name=None, pnames=None) -> Variant:
        r = self.rng
        doc_style = r.choice(doc_styles)
        doctest_cases = ()
        if doc_style == "doctest":
            pool = [c for c in cases if c[1] is not None] or [c for c in fn_.cases if c[1] is not None]
            doctest_cases = tuple(r.sample(pool, min(len(pool), r.choice([1, 2]))))
        return Variant(
            fn=fn_,
            name=name or (r.choice(fn_.names) if r.random() < 0.35 else fn_.names[0]),
            pnames=pnames or (r.choice(fn_.param_names) if r.random() < 0.5 else fn_.param_names[0]),
            typed=r.random() < 0.6 if typed is None else typed,
            doc_style=doc_style,
            body_index=r.randrange(len(fn_.bodies)),
            doctest_cases=doctest_cases,
        )

    def showcase(self, cases) -> tuple[tuple, object]:
        """A case worth showing as an example: not an empty input when there is a choice."""
        interesting = [c for c in cases if _label(*c) != "empty_input"]
        return self.rng.choice(interesting or list(cases))

    def maybe_system(self, pool: list[str], p: float) -> list[dict]:
        return [{"role": "system", "content": self.rng.choice(pool)}] if self.rng.random() < p else []

    def check(self, variant: Variant, source: str, where: str) -> None:
        check_variant_source(variant, source, all_cases(variant.fn, []), where)


# --- code completion -------------------------------------------------------------------------------------------

COMPLETE_FULL_PROMPTS = [
    "Complete the following Python function.",
    "Finish this function so that it does what its docstring says:",
    "Fill in the body of `{name}`.",
    "Implement the function below.",
    "Here is a function stub. Please complete it.",
]
COMPLETE_PARTIAL_PROMPTS = [
    "Finish writing this function:",
    "I started this function but did not finish it. Complete it:",
    "Complete the rest of `{name}`:",
]
COMPLETE_FOLLOWUPS = ["Now this one:", "Next:", "And this one, please:", ""]


def completion_turn(b: Builder, fn_: Fn, where: str, *, raw: bool) -> tuple[str, str]:
    """One (human, bot) pair: a function head (and maybe part of the body) and its completion."""
    human, bot, _variant, _prefix = completion_parts(b, fn_, where, raw=raw)
    return human, bot


def completion_parts(b: Builder, fn_: Fn, where: str, *, raw: bool) -> tuple[str, str, Variant, str]:
    """completion_turn's (human, bot) plus the variant drawn and the code the answer continues."""
    r = b.rng
    variant = b.variant(fn_, doc_styles=("line", "line", "doctest"), cases=all_cases(fn_, b.extra_cases(fn_, 2)))
    body = variant.body_lines()
    keep = r.randint(1, len(body) - 1) if len(body) > 1 and r.random() < 0.35 else 0
    prefix = "\n".join([variant.head()] + body[:keep])
    rest = "\n".join(body[keep:])
    b.check(variant, prefix + "\n" + rest, where)
    if raw:
        return prefix, rest, variant, prefix
    pool = COMPLETE_PARTIAL_PROMPTS if keep else COMPLETE_FULL_PROMPTS
    human = r.choice(pool).format(name=variant.name) + "\n\n" + fence(prefix)
    bot = fence(variant.source())
    if r.random() < 0.25:
        bot += "\n\n" + variant.how()
    return human, bot, variant, prefix


def build_completion(b: Builder, index: int) -> list[dict]:
    r = b.rng
    where = f"{b.task}[{index}]"
    raw = r.random() < 0.5
    turns = b.maybe_system(COMPLETION_SYSTEMS if raw else CHAT_SYSTEMS, 0.4)
    human, bot = completion_turn(b, b.next_fn(), where, raw=raw)
    turns += [{"role": "human", "content": human}, {"role": "bot", "content": bot}]
    if r.random() < 0.15:  # a second function in the same conversation
        human2, bot2 = completion_turn(b, b.next_fn(), where, raw=raw)
        lead = r.choice(COMPLETE_FOLLOWUPS) if raw else ""
        turns += [{"role": "human", "content": (lead + "\n\n" + human2) if lead else human2},
                  {"role": "bot", "content": bot2}]
    return turns


# --- text to code ----------------------------------------------------------------------------------------------

TEXT_PROMPTS = [
    "Write a Python function `{sig}` that {describe}.{note}",
    "Implement `{name}` in Python. It takes {params} and {describe}.{note}",
    "I need a function called `{name}` that takes {params} and {describe}.{note} Can you write it?",
    "How would I write a Python function `{sig}` that {describe}?{note}",
    "Create a function named {name} which {describe}.{note} Include a docstring.",
    "Write a Python function that takes {params} and {describe}.{note}",
    "Python: write `{sig}`. It {describe}.{note}",
    "Give me a function `{typed_sig}` that {describe}.{note}",
]
ANSWER_LEADS = ["", "", "Here is one way to write it:\n\n", "Sure:\n\n", "Here you go:\n\n"]


def text_request(b: Builder, fn_: Fn) -> tuple[str, Variant]:
    r = b.rng
    template = r.choice(TEXT_PROMPTS)
    wants_doc = "docstring" in template
    variant = b.variant(fn_, typed=True if "typed_sig" in template else None,
                        doc_styles=("line",) if wants_doc else ("none", "line", "line"))
    note = " It should " + variant.note_prose() if fn_.note else ""
    typed_sig = variant.def_line()[4:-1]
    prompt = template.format(sig=variant.short_signature(), name=variant.name, params=variant.params_prose(),
                             describe=variant.describe(), note=note, typed_sig=typed_sig)
    return prompt, variant


def code_answer(b: Builder, variant: Variant, where: str) -> str:
    r = b.rng
    source = variant.source()
    b.check(variant, source, where)
    answer = r.choice(ANSWER_LEADS) + fence(source)
    roll = r.random()
    if roll < 0.3:
        answer += "\n\n" + variant.how()
    elif roll < 0.45:
        args, expected = b.showcase(variant.fn.cases)
        answer += f"\n\nFor example, `{variant.call(args)}` returns `{lit(expected)}`."
    return answer


def build_text_to_code(b: Builder, index: int, multi_turn: bool) -> list[dict]:
    r = b.rng
    where = f"{b.task}[{index}]"
    fn_ = b.next_fn()
    turns = b.maybe_system(CHAT_SYSTEMS, 0.4)
    prompt, variant = text_request(b, fn_)
    turns += [{"role": "human", "content": prompt}, {"role": "bot", "content": code_answer(b, variant, where)}]
    if not multi_turn:
        return turns
    followups = ["example", "tests", "value"]
    if not variant.typed:
        followups.append("hints")
    if len(fn_.names) > 1:
        followups.append("rename")
    kind = r.choice(followups)
    if kind == "hints":
        human = r.choice(["Can you add type hints?", "Please add type annotations to it.",
                          "Could you add type hints to the signature?"])
        typed = Variant(**{**variant.__dict__, "typed": True})
        bot = r.choice(["Sure, here it is with type hints:\n\n", "", "Here is the annotated version:\n\n"])
        b.check(typed, typed.source(), where)
        bot += fence(typed.source())
    elif kind == "rename":
        new_name = r.choice([n for n in fn_.names if n != variant.name])
        human = r.choice([f"Please rename it to `{new_name}`.", f"Call it `{new_name}` instead."])
        renamed = Variant(**{**variant.__dict__, "name": new_name})
        b.check(renamed, renamed.source(), where)
        bot = fence(renamed.source())
    elif kind == "example":
        args, expected = b.showcase(all_cases(fn_, b.extra_cases(fn_, 2)))
        human = r.choice(["Show me how to call it.", "Can you show an example call?", "How do I use it?"])
        example = f"result = {variant.call(args)}\nprint(result)  # {expected!r}"
        exec(compile(variant.source() + "\n" + example.replace("print(result)", "assert repr(result) == "
                                                                + repr(repr(expected))), where, "exec"), {})
        bot = r.choice(["", "For example:\n\n"]) + fence(example)
    elif kind == "tests":
        human = r.choice(["Now write a couple of pytest tests for it.", "Can you add unit tests?",
                          "Please write pytest tests for this function."])
        cases = r.sample(all_cases(fn_, b.extra_cases(fn_, 1)), 2)
        code = render_tests(b, variant, cases, list(fn_.raises[:1]), style=r.choice(["functions", "single"]))
        run_test_code(variant.source(), code, None, where)
        bot = fence(code)
    else:  # "value"
        args, expected = b.showcase(fn_.cases)
        human = f"What does `{variant.call(args)}` return?"
        bot = f"It returns `{lit(expected)}`."
    turns += [{"role": "human", "content": human}, {"role": "bot", "content": bot}]
    return turns


# --- unit tests ------------------------------------------------------------------------------------------------

def _label(args: tuple, expected) -> str:
    """A short, readable suffix for a test name, e.g. "97", "hello_world", "empty_input"."""
    if len(args) == 1 and isinstance(args[0], int) and not isinstance(args[0], bool):
        return f"minus_{-args[0]}" if args[0] < 0 else str(args[0])
    if len(args) == 1 and isinstance(args[0], str) and 0 < len(args[0]) <= 12:
        slug = re.sub(r"[^a-z0-9]+", "_", args[0].lower()).strip("_")
        if slug:
            return slug
    if any(isinstance(a, (str, list, dict, tuple)) and len(a) == 0 for a in args):
        return "empty_input"
    if expected is True:
        return "true_case"
    if expected is False:
        return "false_case"
    if expected is None:
        return "returns_none"
    if any(isinstance(a, (int, float)) and not isinstance(a, bool) and a < 0 for a in args):
        return "negative"
    return "example"


def _assertion(variant: Variant, args: tuple, expected, use_result: bool) -> list[str]:
    call = variant.call(args)
    if expected is True:
        return [f"    assert {call}"]
    if expected is False:
        return [f"    assert not {call}"]
    if expected is None:
        return [f"    assert {call} is None"]
    want = f"pytest.approx({lit(expected)})" if _has_float(expected) else lit(expected)
    if use_result:
        return [f"    result = {call}", f"    assert result == {want}"]
    return [f"    assert {call} == {want}"]


def _unique(name: str, used: set[str]) -> str:
    candidate, k = name, 2
    while candidate in used:
        candidate, k = f"{name}_{k}", k + 1
    used.add(candidate)
    return candidate


def render_tests(b: Builder, variant: Variant, cases, raises, style: str, module: str | None = None,
                 used: set[str] | None = None, header: bool = True) -> str:
    """pytest code for `cases` and `raises` in one of three styles: functions | single | parametrize."""
    used = set() if used is None else used
    use_result = b.rng.random() < 0.3
    blocks = []
    needs_pytest = bool(raises) or style == "parametrize" or any(_has_float(e) for _, e in cases)
    if style == "parametrize" and cases:
        names = ", ".join(variant.pnames[: max(len(a) for a, _ in cases)])
        arity = max(len(a) for a, _ in cases)
        cases = [c for c in cases if len(c[0]) == arity]
        rows = [f"    ({', '.join(lit(a) for a in args)}, {lit(expected)})," for args, expected in cases]
        call_args = ", ".join(variant.pnames[:arity])
        compare = "pytest.approx(expected)" if any(_has_float(e) for _, e in cases) else "expected"
        fname = _unique(f"test_{variant.name}", used)
        blocks.append("\n".join([f'@pytest.mark.parametrize("{names}, expected", [', *rows, "])",
                                 f"def {fname}({names}, expected):",
                                 f"    assert {variant.name}({call_args}) == {compare}"]))
    elif style == "single" and cases:
        lines = [f"def {_unique(f'test_{variant.name}', used)}():"]
        for args, expected in cases:
            lines += _assertion(variant, args, expected, use_result=False)
        blocks.append("\n".join(lines))
    else:
        for args, expected in cases:
            fname = _unique(f"test_{variant.name}_{_label(args, expected)}", used)
            blocks.append("\n".join([f"def {fname}():"] + _assertion(variant, args, expected, use_result)))
    for args, exc in raises:
        fname = _unique(f"test_{variant.name}_raises_{re.sub(r'(?<!^)(?=[A-Z])', '_', exc.__name__).lower()}", used)
        blocks.append("\n".join([f"def {fname}():", f"    with pytest.raises({exc.__name__}):",
                                 f"        {variant.call(args)}"]))
    imports = []
    if header and needs_pytest:
        imports.append("import pytest")
    if header and module:
        imports.append(f"from {module} import {variant.name}")
    head = ("\n\n".join(imports) + "\n\n\n") if imports else ""
    return head + "\n\n\n".join(blocks)


UNIT_PROMPTS = [
    "Write pytest unit tests for this function:\n\n{code}",
    "Can you write some tests for the following function? Use pytest.\n\n{code}",
    "{code}\n\nAdd pytest tests that cover normal input and edge cases.",
    "Please write unit tests for `{name}`.\n\n{code}",
]
UNIT_MODULE_PROMPTS = [
    "Here is `{module}.py`:\n\n{code}\n\nWrite unit tests for it with pytest.",
    "This function lives in `{module}.py`. Write pytest tests for it.\n\n{code}",
]
UNIT_LEADS = ["", "", "Here are some tests:\n\n", "Sure, here are pytest tests for it:\n\n"]
UNIT_TAILS = ["", "", "", "\n\nRun them with `pytest -q`."]


def unit_prompt(b: Builder, fn_: Fn, where: str) -> tuple[list[dict], Variant, str, str | None, list]:
    """The prompt turns of a unit-test sample, the variant shown, its source, its module (or None) and the
    shuffled cases to test."""
    r = b.rng
    pool = all_cases(fn_, b.extra_cases(fn_, 3))
    r.shuffle(pool)
    variant = b.variant(fn_, doc_styles=("none", "line", "line"))
    function_source = variant.source()
    b.check(variant, function_source, where)
    module = r.choice(MODULES[fn_.category]) if r.random() < 0.35 else None
    template = r.choice(UNIT_MODULE_PROMPTS if module else UNIT_PROMPTS)
    turns = b.maybe_system(TEST_SYSTEMS, 0.3)
    turns.append({"role": "human", "content": template.format(code=fence(function_source), name=variant.name,
                                                              module=module)})
    return turns, variant, function_source, module, pool


def unit_answer(b: Builder, variant: Variant, function_source: str, cases, raises, module: str | None,
                used: set[str], where: str) -> tuple[str, str]:
    """pytest code for the cases (run against the function before use) and the bot text around it."""
    r = b.rng
    style = r.choice(["functions", "functions", "single", "parametrize"])
    code = render_tests(b, variant, cases, raises, style, module, used)
    run_test_code(function_source, code, module, where)
    return code, r.choice(UNIT_LEADS) + fence(code) + r.choice(UNIT_TAILS)


def build_unit_tests(b: Builder, index: int) -> list[dict]:
    r = b.rng
    where = f"{b.task}[{index}]"
    fn_ = b.next_fn()
    turns, variant, function_source, module, pool = unit_prompt(b, fn_, where)
    multi = r.random() < 0.25
    n_cases = r.randint(2, 4)
    cases, held_back = pool[:n_cases], pool[n_cases:n_cases + 1]
    raises = list(fn_.raises[:1]) if fn_.raises and r.random() < 0.7 else []
    followup = None
    if multi and raises:
        followup, raises = ("raises", raises), []
    elif multi and held_back:
        followup = ("case", held_back)
    used: set[str] = set()
    code, bot = unit_answer(b, variant, function_source, cases, raises, module, used, where)
    turns.append({"role": "bot", "content": bot})
    if followup:
        kind, payload = followup
        if kind == "raises":
            args, exc = payload[0]
            human = r.choice([f"Also test that it raises {exc.__name__} for bad input.",
                              f"Add a test for the {exc.__name__} case, please."])
            extra = render_tests(b, variant, [], payload, "functions", None, used, header="import pytest" not in code)
        else:
            args, _ = payload[0]
            human = r.choice([f"Please add a test for `{variant.call(args)}`.",
                              f"Can you also cover the input {', '.join(lit(a) for a in args)}?"])
            extra = render_tests(b, variant, payload, [], "functions", None, used,
                                 header="import pytest" not in code)
        run_test_code(function_source, code + "\n\n\n" + extra, module, where)
        turns += [{"role": "human", "content": human}, {"role": "bot", "content": fence(extra)}]
    return turns


# --- code explanation (OpenAI messages format) -----------------------------------------------------------------

EXPLAIN_PROMPTS = [
    "What does this function do?\n\n{code}",
    "Explain this code briefly:\n\n{code}",
    "{code}\n\nCan you explain what `{name}` does in a sentence or two?",
    "Please explain the following Python function.\n\n{code}",
]


def build_explain(b: Builder, index: int) -> list[dict]:
    r = b.rng
    where = f"{b.task}[{index}]"
    fn_ = b.next_fn()
    variant = b.variant(fn_, doc_styles=("none", "none", "line"))
    b.check(variant, variant.source(), where)
    messages = [{"role": "system", "content": r.choice(EXPLAIN_SYSTEMS)}] if r.random() < 0.3 else []
    messages.append({"role": "user", "content": r.choice(EXPLAIN_PROMPTS).format(code=fence(variant.source()),
                                                                                 name=variant.name)})
    subject = r.choice([f"`{variant.name}`", "This function", "It"])
    sentences = [f"{subject} {variant.describe()}.", variant.how()]
    if fn_.note and r.random() < 0.6:
        sentences.append(f"It {variant.note_prose(third_person=True)}")
    messages.append({"role": "assistant", "content": " ".join(sentences)})
    if r.random() < 0.2:
        args, expected = b.showcase(all_cases(fn_, b.extra_cases(fn_, 2)))
        messages.append({"role": "user", "content": r.choice(["Can you give an example?", "Show me an example."])})
        messages.append({"role": "assistant", "content": f"Sure: `{variant.call(args)}` returns `{lit(expected)}`."})
    return messages


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------

def sample_chars(turns: list[dict]) -> int:
    return sum(len(t["content"]) for t in turns)


# One match per word (with its leading space), digit, newline run + indent, space run or punctuation mark.
# On this data set it never undercounts SmolLM2's BPE tokenizer (which splits numbers into single digits)
# and overcounts it by about 15 % on average.
_APPROX_TOKEN_RE = re.compile(r" ?[A-Za-z]+| ?\d|\n+[ ]*| +|[^\sA-Za-z\d]")


def approx_tokens(turns: list[dict]) -> int:
    return sum(len(_APPROX_TOKEN_RE.findall(t["content"])) for t in turns)


def make_samples(count: int, build: Callable[[int], list[dict]], task: str) -> list[list[dict]]:
    """Build `count` distinct samples that fit the length budget; retry with fresh draws otherwise."""
    samples, seen = [], set()
    for index in range(count):
        for _attempt in range(50):
            turns = build(index)
            key = json.dumps(turns)
            fits = sample_chars(turns) <= MAX_SAMPLE_CHARS and approx_tokens(turns) <= MAX_SAMPLE_TOKENS
            if fits and key not in seen:
                break
        else:
            raise GenerationError(f"{task}[{index}]: no distinct sample under {MAX_SAMPLE_CHARS} characters "
                                  f"and {MAX_SAMPLE_TOKENS} estimated tokens in 50 attempts")
        seen.add(key)
        samples.append(turns)
    return samples


def generate() -> dict[str, list[dict]]:
    """Return {relative file path: list of JSON records}."""
    reference = validate_library()
    files: dict[str, list[dict]] = {}

    b = Builder("code_completion", SEED + 1, reference)
    samples = make_samples(sum(COMPLETION_FILES.values()), lambda i: build_completion(b, i), b.task)
    records = [{"id": f"code_completion-{i:04d}", "chat_rounds": t} for i, t in enumerate(samples)]
    start = 0
    for path, n in COMPLETION_FILES.items():
        files[path], start = records[start:start + n], start + n

    b = Builder("text_to_code", SEED + 2, reference)
    offset = 0
    for path, n in TEXT_TO_CODE_FILES.items():
        multi = "multi_turn" in path
        samples = make_samples(n, lambda i: build_text_to_code(b, offset + i, multi), b.task)
        files[path] = [{"id": f"text_to_code-{offset + i:04d}", "chat_rounds": t} for i, t in enumerate(samples)]
        offset += n

    b = Builder("unit_tests", SEED + 3, reference)
    for path, n in UNIT_TEST_FILES.items():
        samples = make_samples(n, lambda i: build_unit_tests(b, i), b.task)
        files[path] = [{"id": f"unit_tests-{i:04d}", "chat_rounds": t} for i, t in enumerate(samples)]

    b = Builder("code_explain", SEED + 4, reference)
    for path, n in EXPLAIN_FILES.items():
        samples = make_samples(n, lambda i: build_explain(b, i), b.task)
        files[path] = [{"messages": m} for m in samples]
    return files


# ---------------------------------------------------------------------------------------------------------------
# Held-out mode: train on most library functions, keep the others back as problems with an executable check
# ---------------------------------------------------------------------------------------------------------------

HELDOUT_TASKS = ("code_completion", "text_to_code", "unit_tests")  # code_explain has nothing to execute
DEFAULT_SIZES = {"code_completion": 250, "text_to_code": 200, "unit_tests": 150, "code_explain": 80}


def choose_heldout(count: int, seed: int) -> list[Fn]:
    """`count` library functions, drawn from the categories in turn (each category shuffled with `seed`)."""
    if not 1 <= count <= len(LIBRARY) // 2:
        raise GenerationError(f"--heldout must be between 1 and {len(LIBRARY) // 2}, got {count}")
    r = random.Random(seed + 5)
    pools: dict[str, list[Fn]] = {}
    for f in LIBRARY:
        pools.setdefault(f.category, []).append(f)
    for pool in pools.values():
        r.shuffle(pool)
    chosen: list[Fn] = []
    while len(chosen) < count:
        for pool in pools.values():
            if pool and len(chosen) < count:
                chosen.append(pool.pop())
    return chosen


# (builder, index, task size) -> one sample; text_to_code keeps the bundled share of multi-turn samples (1/4)
TRAIN_BUILDS: dict[str, Callable[[Builder, int, int], list[dict]]] = {
    "code_completion": lambda b, i, n: build_completion(b, i),
    "text_to_code": lambda b, i, n: build_text_to_code(b, i, multi_turn=i >= n - n // 4),
    "unit_tests": lambda b, i, n: build_unit_tests(b, i),
    "code_explain": lambda b, i, n: build_explain(b, i),
}


def build_train(sizes: dict[str, int], reference: dict, exclude: frozenset[str], seed: int) -> dict[str, list]:
    """{"<task>/train.jsonl": records} in the bundled record shapes; a task of size 0 gets no file."""
    files = {}
    for k, task in enumerate(TASK_DIRS):
        n = sizes.get(task, 0)
        if n <= 0:
            continue
        b = Builder(task, seed + 1 + k, reference, exclude)
        samples = make_samples(n, lambda i: TRAIN_BUILDS[task](b, i, n), task)
        files[f"{task}/train.jsonl"] = [{"messages": t} if task == "code_explain"
                                        else {"id": f"{task}-{i:04d}", "chat_rounds": t} for i, t in enumerate(samples)]
    return files


def check_source(fn_: Fn) -> str:
    """`def check(candidate)` over the function's hand-written cases (results compared by repr) and its raises."""
    lines = ["def check(candidate):"]
    for args, expected in fn_.cases:
        call = f"candidate({', '.join(lit(a) for a in args)})"
        lines.append(f"    assert repr({call}) == {repr(expected)!r}, {call!r}")
    for args, exc in fn_.raises:
        call = f"candidate({', '.join(lit(a) for a in args)})"
        lines += ["    try:", f"        {call}", f"    except {exc.__name__}:", "        pass", "    else:",
                  f"        raise AssertionError({call + ' did not raise ' + exc.__name__!r})"]
    return "\n".join(lines)


def _problem(task: str, fn_: Fn, prompt: list[dict], mode: str, prefix: str, variant: Variant, test: str,
             reference: str, module: str | None = None) -> dict:
    return {"task_id": f"{task}/{fn_.name}", "task": task, "messages": prompt, "mode": mode, "prefix": prefix,
            "entry_point": variant.name, "test": test, "reference": reference, "module": module}


def completion_problem(b: Builder, fn_: Fn, index: int) -> dict:
    raw = index % 2 == 0  # raw (HumanEval style) and fenced prompts alternate
    prompt = b.maybe_system(COMPLETION_SYSTEMS if raw else CHAT_SYSTEMS, 0.4)
    human, bot, variant, prefix = completion_parts(b, fn_, f"heldout/{b.task}/{fn_.name}", raw=raw)
    prompt.append({"role": "human", "content": human})
    return _problem(b.task, fn_, prompt, "raw" if raw else "fenced", prefix if raw else "", variant,
                    check_source(fn_), bot)


def text_to_code_problem(b: Builder, fn_: Fn, index: int) -> dict:
    prompt = b.maybe_system(CHAT_SYSTEMS, 0.4)
    request, variant = text_request(b, fn_)
    prompt.append({"role": "human", "content": request})
    bot = code_answer(b, variant, f"heldout/{b.task}/{fn_.name}")
    return _problem(b.task, fn_, prompt, "fenced", "", variant, check_source(fn_), bot)


def unit_tests_problem(b: Builder, fn_: Fn, index: int) -> dict:
    where = f"heldout/{b.task}/{fn_.name}"
    prompt, variant, source, module, pool = unit_prompt(b, fn_, where)
    cases = pool[:b.rng.randint(2, 4)]
    raises = list(fn_.raises[:1]) if fn_.raises and b.rng.random() < 0.7 else []
    _code, bot = unit_answer(b, variant, source, cases, raises, module, set(), where)
    return _problem(b.task, fn_, prompt, "tests", "", variant, source, bot, module)


PROBLEM_BUILDS: dict[str, Callable[[Builder, Fn, int], dict]] = {
    "code_completion": completion_problem, "text_to_code": text_to_code_problem, "unit_tests": unit_tests_problem,
}


def _verify_check(problem: dict, fn_: Fn) -> None:
    """The check code must pass the canonical function under the sample's name (the reference answers are run
    against it in the tests, through the sandbox)."""
    variant = Variant(fn_, problem["entry_point"], fn_.param_names[0], True, "none", 0)
    program = variant.source() + "\n\n\n" + problem["test"] + f"\n\n\ncheck({variant.name})\n"
    try:
        exec(compile(program, f"<{problem['task_id']}>", "exec"), {"__name__": "heldout_check"})
    except Exception as e:
        raise GenerationError(f"{problem['task_id']}: check fails on the library function: {e!r}\n{program}") from None


def build_problems(held: list[Fn], reference: dict, seed: int) -> dict[str, list[dict]]:
    problems = {}
    for k, task in enumerate(HELDOUT_TASKS):
        b = Builder(task, seed + 11 + k, reference)
        problems[task] = []
        for index, fn_ in enumerate(held):
            for _attempt in range(50):  # the same length budget as the training samples
                problem = PROBLEM_BUILDS[task](b, fn_, index)
                whole = problem["messages"] + [{"role": "bot", "content": problem["reference"]}]
                if sample_chars(whole) <= MAX_SAMPLE_CHARS and approx_tokens(whole) <= MAX_SAMPLE_TOKENS:
                    break
            else:
                raise GenerationError(f"{problem['task_id']}: no problem within the length budget in 50 attempts")
            if problem["mode"] != "tests":
                _verify_check(problem, fn_)
            problems[task].append(problem)
    return problems


def generate_heldout(sizes: dict[str, int], heldout: int, seed: int = SEED
                     ) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Training files built only from the library functions not held out, and problems from the held-out ones:
    ({"<task>/train.jsonl": records}, {task: problems}), one problem per held-out function per executable task."""
    unknown = sorted(set(sizes) - set(TASK_DIRS))
    if unknown:
        raise GenerationError(f"--sizes: unknown task(s) {', '.join(unknown)}; valid: {', '.join(TASK_DIRS)}")
    if any(not isinstance(n, int) or n < 0 for n in sizes.values()):
        raise GenerationError(f"--sizes: every size must be an integer >= 0, got {sizes}")
    reference = validate_library()
    held = choose_heldout(heldout, seed)
    train = build_train(sizes, reference, frozenset(f.name for f in held), seed)
    return train, build_problems(held, reference, seed)


def write(files: dict[str, list[dict]], out: Path, task_dirs: tuple[str, ...] = TASK_DIRS) -> None:
    # Remove the jsonl files of our own task folders first, so a renamed file never lingers.
    for task in task_dirs:
        for old in sorted((out / task).rglob("*.jsonl")) if (out / task).is_dir() else []:
            old.unlink()
    for rel, records in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def run_generator(argv: list[str] | None, *, doc: str, default_out: Path, generate: Callable[[], dict],
                  task_dirs: tuple[str, ...], prog: str, what: str) -> int:
    """The command line shared by the example generators: --out, generate, write, one line per file."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=default_out,
                        help=f"output folder (default: examples/{default_out.name} next to this script)")
    args = parser.parse_args(argv)
    try:
        files = generate()
    except GenerationError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    write(files, args.out, task_dirs)
    for rel, records in files.items():
        print(f"{len(records):5d}  {args.out / rel}")
    print(f"{sum(len(r) for r in files.values()):5d}  {what}")
    return 0


def parse_sizes(text: str | None) -> dict[str, int]:
    if text is None:
        return dict(DEFAULT_SIZES)
    parts = text.split(",")
    if len(parts) != len(TASK_DIRS) or not all(p.strip().isdigit() for p in parts):
        raise GenerationError(f"--sizes wants {len(TASK_DIRS)} integers >= 0 separated by commas, for "
                              f"{', '.join(TASK_DIRS)} (e.g. 400,200,100,50), got {text!r}")
    return {task: int(p) for task, p in zip(TASK_DIRS, parts)}


def run_heldout(out: Path, heldout: int, sizes_text: str | None) -> int:
    """--heldout mode: DIR/<task>/train.jsonl and DIR/heldout/<task>.jsonl (one problem per line)."""
    try:
        train, problems = generate_heldout(parse_sizes(sizes_text), heldout)
    except GenerationError as e:
        print(f"make_examples: {e}", file=sys.stderr)
        return 1
    problem_files = {f"heldout/{task}.jsonl": rows for task, rows in problems.items()}
    write(train, out, TASK_DIRS)
    write(problem_files, out, ("heldout",))
    for rel, records in {**train, **problem_files}.items():
        print(f"{len(records):5d}  {out / rel}")
    print(f"{heldout:5d}  library functions held out (of {len(LIBRARY)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output folder (default: examples/data next to this script)")
    parser.add_argument("--heldout", type=int, metavar="N",
                        help="hold N library functions out of training and write problems for them (needs --out)")
    parser.add_argument("--sizes", metavar="CC,TC,UT,EX",
                        help="with --heldout: training samples per task, in the order " + ",".join(TASK_DIRS))
    args = parser.parse_args(argv)
    if args.heldout is not None:
        if args.out is None:
            parser.error("--heldout needs --out DIR (it must not overwrite the bundled examples/data)")
        return run_heldout(args.out, args.heldout, args.sizes)
    if args.sizes is not None:
        parser.error("--sizes only applies with --heldout N")
    return run_generator(argv, doc=__doc__, default_out=Path(__file__).resolve().parent / "data", generate=generate,
                         task_dirs=TASK_DIRS, prog="make_examples",
                         what=f"samples from {len(LIBRARY)} library functions")


if __name__ == "__main__":
    sys.exit(main())
