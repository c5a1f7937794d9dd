#!/usr/bin/env python
"""Generate the bundled preference example data under ``examples/data_preference/``.

    python examples/make_preference_examples.py              # rewrite examples/data_preference/
    python examples/make_preference_examples.py --out DIR    # write the same files under DIR

Two preference tasks are built from the function library of ``make_examples.py`` (loaded by path; the SFT data it
writes is not touched):

- ``passing_vs_failing/``  an English request for a function; chosen = a correct implementation, rejected = a
  plausible but buggy one (off-by-one, wrong comparison, missing edge case) that fails at least one of the library
  function's own cases. Lines: ``{"system"?, "prompt": str, "chosen": str, "rejected": str}``.
- ``idiomatic_vs_not/``    chosen = idiomatic Python, rejected = a correct but clumsy version (index loops, manual
  counters, ``== True``); both pass every case. Three line shapes, one per file: conversational
  ``{"prompt": [turns], "chosen": [turn], "rejected": [turn]}``, ``{"chat_rounds": [...], "chosen": str,
  "rejected": str}`` with multi-turn prompts, and ShareGPT ``{"conversations": [...], "chosen": {from, value},
  "rejected": {from, value}}``.

Only the standard library is used and every random choice comes from seeded ``random.Random`` objects, so the output
is byte-identical on every run. Nothing is written unless every chosen answer passed its function's cases and every
rejected answer behaved as its task requires (failing at least one case, or passing all of them).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load_sft_generator():
    """examples/ is not a package, so the SFT generator is loaded by path for its library and helpers."""
    spec = importlib.util.spec_from_file_location("_mftcoder_make_examples", HERE / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


ex = _load_sft_generator()
GenerationError = ex.GenerationError

SEED = ex.SEED + 100
MAX_SAMPLE_CHARS = 1400  # about 350 tokens at 4 characters per token
MAX_SAMPLE_TOKENS = 350  # estimated with make_examples.approx_tokens (which overcounts SmolLM2's BPE)
PASSING_FILES = {"passing_vs_failing/pairs.jsonl": 200}
IDIOMATIC_FILES = {"idiomatic_vs_not/messages.jsonl": 80, "idiomatic_vs_not/chat_rounds.jsonl": 20,
                   "idiomatic_vs_not/conversations.jsonl": 20}
TASK_DIRS = ("passing_vs_failing", "idiomatic_vs_not")
PYTHONIC_ASKS = ["", "", "", " Keep it Pythonic.", " Please write idiomatic Python.", " Keep it short and idiomatic."]


# ---------------------------------------------------------------------------------------------------------------
# Buggy versions: each must fail at least one of its library function's cases (and pass at least one)
# ---------------------------------------------------------------------------------------------------------------

BUGS: dict[str, list[str]] = {
    "reverse_words": ['return " ".join(reversed($text.split(" ")))'],
    "is_palindrome": ["return $text == $text[::-1]"],
    "count_vowels": ['return sum(1 for ch in $text if ch in "aeiou")'],
    "capitalize_words": ['return " ".join(word[0].upper() + word[1:] for word in $text.split(" "))'],
    "snake_to_camel": ["""
        first, *rest = $name.split("_")
        return first + "".join(part.lower() for part in rest)
        """],
    "camel_to_snake": ["""
        out = []
        for ch in $name:
            if ch.isupper():
                out.append("_")
            out.append(ch.lower())
        return "".join(out)
        """],
    "truncate": ["""
        if len($text) <= $limit:
            return $text
        return $text[:$limit] + $suffix
        """],
    "word_frequencies": ["""
        counts = {}
        for word in $text.split():
            counts[word] = counts.get(word, 0) + 1
        return counts
        """],
    "dedupe_chars": ['return "".join(sorted(set($text)))'],
    "is_anagram": ["return sorted($first.lower()) == sorted($second.lower())",
                   'return set($first.replace(" ", "").lower()) == set($second.replace(" ", "").lower())'],
    "most_common_char": ["return sorted($text, key=$text.count)[-1]"],
    "run_length_encode": ["""
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
        return "".join(parts)
        """],
    "pad_number": ['return "0" * ($width - len(str($n))) + str($n)'],
    "caesar_shift": ['return "".join(chr(ord(ch) + $shift) if ch.isalpha() else ch for ch in $text)'],
    "count_overlapping": ["""
        if not $sub:
            raise ValueError("$sub must not be empty")
        return $text.count($sub)
        """],
    "longest_word": ["""
        best = ""
        for word in $text.split():
            if len(word) >= len(best):
                best = word
        return best
        """],
    "mask_string": ["""
        if len($s) <= $visible:
            return $s
        return $char * (len($s) - $visible) + $s[-$visible:]
        """],
    "hamming_distance": ["return sum(x != y for x, y in zip($a, $b))"],
    "initials": ['return "".join(part[0] + "." for part in $full_name.split())'],
    "strip_punctuation": ['return "".join(ch for ch in $text if ch.isalnum())'],
    "is_valid_identifier": ["return $name.isidentifier()"],
    "slugify": ['return $text.lower().replace(" ", "-")'],
    "chunk": ["""
        if $size <= 0:
            raise ValueError("$size must be positive")
        return [$items[i:i + $size] for i in range(0, len($items) - $size + 1, $size)]
        """],
    "deep_flatten": ["return [y for x in $nested for y in (x if isinstance(x, list) else [x])]"],
    "unique_in_order": ["return list(set($items))"],
    "second_largest": ["""
        if len($nums) < 2:
            raise ValueError("need at least two values")
        return sorted($nums)[-2]
        """],
    "running_sum": ["return [sum($nums[:i]) for i in range(len($nums))]"],
    "moving_average": ["""
        if $window <= 0:
            raise ValueError("$window must be positive")
        return [sum($nums[i:i + $window]) / $window for i in range(len($nums) - $window)]
        """],
    "rotate_right": ["""
        if not $items:
            return []
        return $items[-$k:] + $items[:-$k]
        """],
    "pairwise_differences": ["return [b - a for a, b in zip($nums[1:], $nums)]"],
    "find_index": ["return $items.index($target)"],
    "count_greater": ["return sum(1 for x in $nums if x >= $threshold)"],
    "merge_sorted": ["return sorted(set($left + $right))"],
    "interleave": ["""
        result = []
        for x, y in zip($first, $second):
            result.extend([x, y])
        result.extend($first[len($second):])
        return result
        """],
    "max_subarray_sum": ["""
        if not $nums:
            raise ValueError("$nums must not be empty")
        best = current = 0
        for x in $nums:
            current = max(0, current + x)
            best = max(best, current)
        return best
        """],
    "binary_search": ["""
        lo, hi = 0, len($items) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if $items[mid] == $target:
                return mid
            if $items[mid] < $target:
                lo = mid + 1
            else:
                hi = mid - 1
        return -1
        """],
    "index_of_max": ["""
        if not $nums:
            raise ValueError("$nums must not be empty")
        best = 0
        for i in range(1, len($nums)):
            if $nums[i] >= $nums[best]:
                best = i
        return best
        """],
    "product": ["""
        result = 0
        for x in $nums:
            result *= x
        return result
        """],
    "is_sorted": ["""
        pairs = zip($items, $items[1:])
        if $descending:
            return all(a > b for a, b in pairs)
        return all(a < b for a, b in pairs)
        """],
    "all_equal": ["return len(set($items)) == 1"],
    "most_frequent": ["""
        counts = {}
        for item in $items:
            counts[item] = counts.get(item, 0) + 1
        return max(counts, key=counts.get)
        """],
    "zip_to_dict": ["return dict(zip($keys, $values))"],
    "nested_get": ["""
        current = $data
        for key in $path:
            current = current.get(key, $default)
        return current
        """],
    "sort_by_value": ["return sorted($mapping.items(), reverse=$descending)"],
    "key_of_max": ["return max($mapping, key=$mapping.get)"],
    "changed_keys": ["return sorted(k for k in $new if $old.get(k) != $new[k])"],
    "factorial": ["""
        if $n < 0:
            raise ValueError("$n must be non-negative")
        result = 1
        for i in range(1, $n):
            result *= i
        return result
        """],
    "fibonacci": ["""
        if $n < 0:
            raise ValueError("$n must be non-negative")
        a, b = 1, 1
        for _ in range($n):
            a, b = b, a + b
        return a
        """],
    "is_prime": ["""
        i = 2
        while i * i <= $n:
            if $n % i == 0:
                return False
            i += 1
        return True
        """],
    "lcm": ["return $a * $b // math.gcd($a, $b)"],
    "digit_sum": ["return sum(int(d) for d in str($n))"],
    "mean": ["return sum($nums) / len($nums)"],
    "median": ["""
        if not $nums:
            raise ValueError("median of empty list")
        return sorted($nums)[len($nums) // 2]
        """],
    "clamp": ["""
        if $low > $high:
            raise ValueError("$low must not exceed $high")
        return min($low, max($x, $high))
        """],
    "is_perfect_square": ["return int($n ** 0.5) ** 2 == $n"],
    "primes_up_to": ["""
        if $limit < 2:
            return []
        is_prime = [True] * ($limit + 1)
        is_prime[0] = is_prime[1] = False
        for i in range(2, int($limit ** 0.5)):
            if is_prime[i]:
                for multiple in range(i * i, $limit + 1, i):
                    is_prime[multiple] = False
        return [i for i, prime in enumerate(is_prime) if prime]
        """],
    "to_binary": ["""
        if $n < 0:
            raise ValueError("$n must be non-negative")
        digits = []
        while $n:
            digits.append(str($n % 2))
            $n //= 2
        return "".join(reversed(digits))
        """],
    "int_to_roman": ["""
        if not 1 <= $n <= 3999:
            raise ValueError("$n must be between 1 and 3999")
        result = []
        for value, symbol in [(1000, "M"), (500, "D"), (100, "C"), (50, "L"), (10, "X"), (5, "V"), (1, "I")]:
            count, $n = divmod($n, value)
            result.append(symbol * count)
        return "".join(result)
        """],
    "count_digits": ["return len(str($n))"],
    "triangle_number": ["return $n * ($n - 1) // 2"],
    "is_leap_year": ["return $year % 4 == 0"],
    "sum_of_multiples": ["return sum(i for i in range(1, $limit + 1) if i % $a == 0 or i % $b == 0)"],
    "normalize": ["""
        if not $nums:
            return []
        lo, hi = min($nums), max($nums)
        return [(x - lo) / (hi - lo) for x in $nums]
        """],
    "round_to_multiple": ["""
        if $base <= 0:
            raise ValueError("$base must be positive")
        return round($x / $base) * $base
        """],
    "safe_divide": ["""
        try:
            return $numerator / $denominator
        except ZeroDivisionError:
            return 0.0
        """],
    "format_duration": ["""
        hours, rest = divmod($seconds, 3600)
        minutes, sec = divmod(rest, 60)
        parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{sec}s" if sec else ""]
        return " ".join(p for p in parts if p)
        """],
    "compare_versions": ["return ($a > $b) - ($a < $b)"],
    "bytes_to_kib": ["return round($size / 1000, $digits)"],
}


# ---------------------------------------------------------------------------------------------------------------
# Idiomatic and clumsy versions: both must pass every case
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Idiom:
    good: str
    bad: str
    imports: tuple[str, ...] = ()  # extra imports of the idiomatic version


IDIOMS: dict[str, Idiom] = {
    "reverse_words": Idiom('return " ".join(reversed($text.split()))', """
        words = $text.split()
        result = ""
        for i in range(len(words) - 1, -1, -1):
            result = result + words[i]
            if i != 0:
                result = result + " "
        return result
        """),
    "count_vowels": Idiom('return sum(ch in "aeiou" for ch in $text.lower())', """
        count = 0
        for i in range(len($text)):
            if ($text[i].lower() in "aeiou") == True:
                count = count + 1
        return count
        """),
    "is_palindrome": Idiom("""
        cleaned = [ch.lower() for ch in $text if ch.isalnum()]
        return cleaned == cleaned[::-1]
        """, """
        cleaned = ""
        for i in range(len($text)):
            if $text[i].isalnum() == True:
                cleaned = cleaned + $text[i].lower()
        for i in range(len(cleaned)):
            if cleaned[i] != cleaned[len(cleaned) - 1 - i]:
                return False
        return True
        """),
    "word_frequencies": Idiom("return dict(Counter($text.lower().split()))", """
        counts = {}
        words = $text.lower().split()
        for i in range(len(words)):
            if words[i] in counts.keys():
                counts[words[i]] = counts[words[i]] + 1
            else:
                counts[words[i]] = 1
        return counts
        """, ("from collections import Counter",)),
    "dedupe_chars": Idiom('return "".join(dict.fromkeys($text))', """
        result = ""
        for i in range(len($text)):
            if ($text[i] in result) == False:
                result = result + $text[i]
        return result
        """),
    "longest_word": Idiom('return max($text.split(), key=len, default="")', """
        words = $text.split()
        best = ""
        i = 0
        while i < len(words):
            if len(words[i]) > len(best):
                best = words[i]
            i = i + 1
        return best
        """),
    "unique_in_order": Idiom("return list(dict.fromkeys($items))", """
        result = []
        for i in range(len($items)):
            found = False
            for j in range(len(result)):
                if result[j] == $items[i]:
                    found = True
            if found == False:
                result.append($items[i])
        return result
        """),
    "flatten": Idiom("return [item for sub in $nested for item in sub]", """
        flat = []
        for i in range(len($nested)):
            for j in range(len($nested[i])):
                flat.append($nested[i][j])
        return flat
        """),
    "running_sum": Idiom("return list(accumulate($nums))", """
        result = []
        for i in range(len($nums)):
            if i == 0:
                result.append($nums[0])
            else:
                result.append(result[i - 1] + $nums[i])
        return result
        """, ("from itertools import accumulate",)),
    "pairwise_differences": Idiom("return [b - a for a, b in zip($nums, $nums[1:])]", """
        result = []
        for i in range(len($nums) - 1):
            result.append($nums[i + 1] - $nums[i])
        return result
        """),
    "find_index": Idiom("""
        for i, item in enumerate($items):
            if item == $target:
                return i
        return -1
        """, """
        i = 0
        found = -1
        while i < len($items):
            if $items[i] == $target and found == -1:
                found = i
            i = i + 1
        return found
        """),
    "count_greater": Idiom("return sum(x > $threshold for x in $nums)", """
        count = 0
        for i in range(len($nums)):
            if ($nums[i] > $threshold) == True:
                count += 1
        return count
        """),
    "remove_all": Idiom("return [item for item in $items if item != $value]", """
        result = []
        for i in range(len($items)):
            if not $items[i] == $value:
                result.append($items[i])
        return result
        """),
    "all_equal": Idiom("return all(item == $items[0] for item in $items)", """
        if len($items) == 0:
            return True
        same = True
        for i in range(1, len($items)):
            if $items[i] != $items[0]:
                same = False
        return same
        """),
    "is_sorted": Idiom("""
        pairs = zip($items, $items[1:])
        if $descending:
            return all(a >= b for a, b in pairs)
        return all(a <= b for a, b in pairs)
        """, """
        ok = True
        for i in range(len($items) - 1):
            if $descending == True:
                if $items[i] < $items[i + 1]:
                    ok = False
            else:
                if $items[i] > $items[i + 1]:
                    ok = False
        return ok
        """),
    "sum_of_squares": Idiom("return sum(x * x for x in $nums)", """
        total = 0
        for i in range(len($nums)):
            total = total + $nums[i] * $nums[i]
        return total
        """),
    "transpose": Idiom("return [list(row) for row in zip(*$matrix)]", """
        if len($matrix) == 0:
            return []
        result = []
        for j in range(len($matrix[0])):
            column = []
            for i in range(len($matrix)):
                column.append($matrix[i][j])
            result.append(column)
        return result
        """),
    "zip_to_dict": Idiom("""
        if len($keys) != len($values):
            raise ValueError("$keys and $values must have the same length")
        return dict(zip($keys, $values))
        """, """
        if len($keys) != len($values):
            raise ValueError("$keys and $values must have the same length")
        result = {}
        for i in range(len($keys)):
            result[$keys[i]] = $values[i]
        return result
        """),
    "invert_dict": Idiom("return {value: key for key, value in $mapping.items()}", """
        result = {}
        for key in $mapping.keys():
            result[$mapping[key]] = key
        return result
        """),
    "pick_keys": Idiom("return {key: $mapping[key] for key in $keys if key in $mapping}", """
        result = {}
        for i in range(len($keys)):
            if ($keys[i] in $mapping.keys()) == True:
                result[$keys[i]] = $mapping[$keys[i]]
        return result
        """),
    "sum_values": Idiom("return sum($mapping.values())", """
        total = 0
        for key in $mapping.keys():
            total = total + $mapping[key]
        return total
        """),
    "group_by_length": Idiom("""
        groups = {}
        for word in $words:
            groups.setdefault(len(word), []).append(word)
        return groups
        """, """
        groups = {}
        for i in range(len($words)):
            size = len($words[i])
            if (size in groups) == False:
                groups[size] = []
            groups[size].append($words[i])
        return groups
        """),
    "count_by_first_letter": Idiom("return dict(Counter(word[0].lower() for word in $words if word))", """
        counts = {}
        for i in range(len($words)):
            if len($words[i]) > 0:
                letter = $words[i][0].lower()
                if letter in counts.keys():
                    counts[letter] += 1
                else:
                    counts[letter] = 1
        return counts
        """, ("from collections import Counter",)),
    "digit_sum": Idiom("return sum(int(d) for d in str(abs($n)))", """
        digits = str(abs($n))
        total = 0
        i = 0
        while i < len(digits):
            total = total + int(digits[i])
            i += 1
        return total
        """),
    "mean": Idiom("""
        if not $nums:
            raise ValueError("mean of an empty list")
        return sum($nums) / len($nums)
        """, """
        if len($nums) == 0:
            raise ValueError("mean of an empty list")
        total = 0
        count = 0
        for i in range(len($nums)):
            total = total + $nums[i]
            count = count + 1
        return total / count
        """),
    "is_leap_year": Idiom("return $year % 4 == 0 and ($year % 100 != 0 or $year % 400 == 0)", """
        if $year % 4 == 0:
            if $year % 100 == 0:
                if $year % 400 == 0:
                    return True
                else:
                    return False
            else:
                return True
        else:
            return False
        """),
    "count_uppercase": Idiom("return sum(ch.isupper() for ch in $text)", """
        count = 0
        for i in range(len($text)):
            if $text[i].isupper() == True:
                count = count + 1
        return count
        """),
    "word_lengths": Idiom("return [len(word) for word in $text.split()]", """
        words = $text.split()
        lengths = []
        for i in range(len(words)):
            lengths.append(len(words[i]))
        return lengths
        """),
    "initials": Idiom('return "".join(part[0].upper() + "." for part in $full_name.split())', """
        result = ""
        parts = $full_name.split()
        for i in range(len(parts)):
            result = result + parts[i][0].upper() + "."
        return result
        """),
    "normalize_spaces": Idiom('return " ".join($text.split())', """
        result = $text.replace("\\t", " ").replace("\\n", " ")
        while "  " in result:
            result = result.replace("  ", " ")
        return result.strip()
        """),
    "strip_punctuation": Idiom('return "".join(ch for ch in $text if ch.isalnum() or ch.isspace())', """
        result = ""
        for i in range(len($text)):
            if $text[i].isalnum() == True or $text[i].isspace() == True:
                result = result + $text[i]
        return result
        """),
    "product": Idiom("return math.prod($nums)", """
        result = 1
        for i in range(len($nums)):
            result = result * $nums[i]
        return result
        """, ("import math",)),
    "clip_values": Idiom("return [min(max(x, $low), $high) for x in $nums]", """
        result = []
        for i in range(len($nums)):
            if $nums[i] < $low:
                result.append($low)
            elif $nums[i] > $high:
                result.append($high)
            else:
                result.append($nums[i])
        return result
        """),
    "sum_of_multiples": Idiom("return sum(i for i in range(1, $limit) if i % $a == 0 or i % $b == 0)", """
        total = 0
        i = 1
        while i < $limit:
            if i % $a == 0 or i % $b == 0:
                total = total + i
            i = i + 1
        return total
        """),
    "split_even_odd": Idiom("""
        evens = [x for x in $nums if x % 2 == 0]
        odds = [x for x in $nums if x % 2 != 0]
        return evens, odds
        """, """
        evens = []
        odds = []
        for i in range(len($nums)):
            if ($nums[i] % 2 == 0) == True:
                evens.append($nums[i])
            else:
                odds.append($nums[i])
        return (evens, odds)
        """),
    "alternate_case": Idiom('return "".join(ch.upper() if i % 2 == 0 else ch.lower() for i, ch in enumerate($text))',
                            """
        result = ""
        for i in range(len($text)):
            if i % 2 == 0:
                result = result + $text[i].upper()
            else:
                result = result + $text[i].lower()
        return result
        """),
    "hamming_distance": Idiom("""
        if len($a) != len($b):
            raise ValueError("strings must have equal length")
        return sum(x != y for x, y in zip($a, $b))
        """, """
        if len($a) != len($b):
            raise ValueError("strings must have equal length")
        count = 0
        for i in range(len($a)):
            if $a[i] != $b[i]:
                count = count + 1
        return count
        """),
    "diagonal_sum": Idiom("return sum(row[i] for i, row in enumerate($matrix))", """
        total = 0
        i = 0
        for row in $matrix:
            total = total + row[i]
            i = i + 1
        return total
        """),
    "parse_csv_line": Idiom("return [field.strip() for field in $line.split($sep)]", """
        fields = $line.split($sep)
        result = []
        for i in range(len(fields)):
            result.append(fields[i].strip())
        return result
        """),
    "merge_dicts": Idiom("return {**$base, **$override}", """
        merged = {}
        for key in $base.keys():
            merged[key] = $base[key]
        for key in $override.keys():
            merged[key] = $override[key]
        return merged
        """),
    "key_of_max": Idiom("return max($mapping, key=$mapping.get, default=None)", """
        best_key = None
        for key in $mapping.keys():
            if best_key == None or $mapping[key] > $mapping[best_key]:
                best_key = key
        return best_key
        """),
    "most_frequent": Idiom("""
        counts = Counter($items)
        return max(counts, key=counts.get) if counts else None
        """, """
        best = None
        best_count = 0
        for i in range(len($items)):
            count = $items.count($items[i])
            if count > best_count:
                best = $items[i]
                best_count = count
        return best
        """, ("from collections import Counter",)),
}


# ---------------------------------------------------------------------------------------------------------------
# Rendering and checking
# ---------------------------------------------------------------------------------------------------------------

def render(variant, body: str, extra_imports: tuple[str, ...] = ()) -> str:
    """The variant's imports, def line and docstring with another body (a template with $param names)."""
    body = variant.code_text(textwrap.dedent(body).strip("\n"))
    imports = list(variant.fn.imports) + [i for i in extra_imports if i not in variant.fn.imports]
    head = "\n".join(imports) + "\n\n\n" if imports else ""
    lines = [variant.def_line()] + variant.docstring_lines() + ["    " + ln if ln else "" for ln in body.splitlines()]
    return head + "\n".join(lines)


def case_results(func, fn_) -> list[bool]:
    """One flag per library case (result compared by repr) and per documented bad input (must raise)."""
    results = []
    for args, expected in fn_.cases:
        try:
            results.append(repr(func(*copy.deepcopy(args))) == repr(expected))
        except Exception:
            results.append(False)
    for args, exc in fn_.raises:
        try:
            func(*copy.deepcopy(args))
            results.append(False)
        except exc:
            results.append(True)
        except Exception:
            results.append(False)
    return results


def check_buggy(variant, source: str, where: str) -> None:
    func = ex.load_function(source, variant.name, where)  # it must at least run and define the function
    results = case_results(func, variant.fn)
    if all(results):
        raise GenerationError(f"{where}: the rejected version of {variant.fn.name} passes every case\n{source}")
    if not any(results):
        raise GenerationError(f"{where}: the rejected version of {variant.fn.name} fails every case; "
                              f"a plausible bug passes some\n{source}")


def check_correct(b, variant, source: str, where: str) -> None:
    """All library cases, the documented bad inputs and a few random extra cases."""
    ex.check_variant_source(variant, source, ex.all_cases(variant.fn, b.extra_cases(variant.fn, 3)), where)


def validate_tables() -> None:
    """Check every buggy and every idiomatic/clumsy body once under each parameter naming, before any drawing."""
    for fn_, bug in _library_items(BUGS):
        for pnames in fn_.param_names:
            variant = ex.Variant(fn_, fn_.name, pnames, typed=True, doc_style="none", body_index=0)
            check_buggy(variant, render(variant, bug), f"BUGS[{fn_.name}]")
    for fn_, idiom in _library_items(IDIOMS):
        for pnames in fn_.param_names:
            variant = ex.Variant(fn_, fn_.name, pnames, typed=True, doc_style="none", body_index=0)
            for body, imports in ((idiom.good, idiom.imports), (idiom.bad, ())):
                source = render(variant, body, imports)
                ex.check_variant_source(variant, source, fn_.cases, f"IDIOMS[{fn_.name}]")


def sample_size(texts: list[str]) -> tuple[int, int]:
    return sum(len(t) for t in texts), ex.approx_tokens([{"content": t} for t in texts])


# ---------------------------------------------------------------------------------------------------------------
# Sample builders: each returns (record, texts that count towards the length budget)
# ---------------------------------------------------------------------------------------------------------------

class Cycle:
    """Deals (function, payload) pairs in a seeded shuffled order, reshuffling once all have been dealt."""

    def __init__(self, rng, items: list):
        self.rng, self.items, self._order = rng, items, []

    def next(self):
        if not self._order:
            self._order = list(self.items)
            self.rng.shuffle(self._order)
        return self._order.pop()


def passing_pair(b, deal: Cycle, index: int) -> tuple[dict, list[str]]:
    r = b.rng
    where = f"passing_vs_failing[{index}]"
    fn_, bug = deal.next()
    prompt, variant = ex.text_request(b, fn_)
    good, bad = variant.source(), render(variant, bug)
    check_correct(b, variant, good, where)
    check_buggy(variant, bad, where)
    lead = r.choice(ex.ANSWER_LEADS)
    record = {"prompt": prompt, "chosen": lead + ex.fence(good), "rejected": lead + ex.fence(bad)}
    if r.random() < 0.3:
        record = {"system": r.choice(ex.CHAT_SYSTEMS), **record}
    return record, list(record.values())


def idiom_answers(b, deal: Cycle, where: str) -> tuple[str, str, str]:
    """(request, idiomatic answer, clumsy answer) for the next function, both answers checked."""
    r = b.rng
    fn_, idiom = deal.next()
    prompt, variant = ex.text_request(b, fn_)
    good, bad = render(variant, idiom.good, idiom.imports), render(variant, idiom.bad)
    check_correct(b, variant, good, where)
    check_correct(b, variant, bad, where)
    lead = r.choice(ex.ANSWER_LEADS)
    return prompt + r.choice(PYTHONIC_ASKS), lead + ex.fence(good), lead + ex.fence(bad)


def idiom_messages(b, deal: Cycle, index: int) -> tuple[dict, list[str]]:
    prompt, good, bad = idiom_answers(b, deal, f"idiomatic_vs_not/messages[{index}]")
    turns = b.maybe_system(ex.CHAT_SYSTEMS, 0.3) + [{"role": "user", "content": prompt}]
    record = {"prompt": turns, "chosen": [{"role": "assistant", "content": good}],
              "rejected": [{"role": "assistant", "content": bad}]}
    return record, [t["content"] for t in turns] + [good, bad]


def idiom_chat_rounds(b, deal: Cycle, index: int) -> tuple[dict, list[str]]:
    """A multi-turn prompt: an earlier request answered idiomatically, then the request the pair answers."""
    where = f"idiomatic_vs_not/chat_rounds[{index}]"
    first, first_answer, _ = idiom_answers(b, deal, where)
    prompt, good, bad = idiom_answers(b, deal, where)
    lead = b.rng.choice(["", "", "Thanks. ", "Great. Now: ", "Next one. "])
    rounds = b.maybe_system(ex.CHAT_SYSTEMS, 0.4) + [
        {"role": "human", "content": first}, {"role": "bot", "content": first_answer},
        {"role": "human", "content": lead + prompt}]
    record = {"chat_rounds": rounds, "chosen": good, "rejected": bad}
    return record, [t["content"] for t in rounds] + [good, bad]


def idiom_conversations(b, deal: Cycle, index: int) -> tuple[dict, list[str]]:
    prompt, good, bad = idiom_answers(b, deal, f"idiomatic_vs_not/conversations[{index}]")
    turns = [{"from": "system", "value": t["content"]} for t in b.maybe_system(ex.CHAT_SYSTEMS, 0.3)]
    turns.append({"from": "human", "value": prompt})
    record = {"conversations": turns, "chosen": {"from": "gpt", "value": good},
              "rejected": {"from": "gpt", "value": bad}}
    return record, [t["value"] for t in turns] + [good, bad]


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------

def make_records(count: int, build, name: str, seen: set[str]) -> list[dict]:
    """`count` distinct records within the length budget; a draw that does not fit is replaced by a fresh one."""
    records = []
    for index in range(count):
        for _attempt in range(50):
            record, texts = build(index)
            chars, tokens = sample_size(texts)
            key = json.dumps(record, sort_keys=True)
            if chars <= MAX_SAMPLE_CHARS and tokens <= MAX_SAMPLE_TOKENS and key not in seen:
                break
        else:
            raise GenerationError(f"{name}[{index}]: no distinct pair under {MAX_SAMPLE_CHARS} characters and "
                                  f"{MAX_SAMPLE_TOKENS} estimated tokens in 50 attempts")
        if texts[-1] == texts[-2]:
            raise GenerationError(f"{name}[{index}]: chosen and rejected are identical")
        seen.add(key)
        records.append(record)
    return records


def _library_items(table: dict) -> list[tuple]:
    by_name = {fn_.name: fn_ for fn_ in ex.LIBRARY}
    unknown = sorted(set(table) - set(by_name))
    if unknown:
        raise GenerationError(f"not in the make_examples library: {', '.join(unknown)}")
    return [(by_name[name], payload) for name, payloads in table.items()
            for payload in (payloads if isinstance(payloads, list) else [payloads])]


def generate() -> dict[str, list[dict]]:
    """Return {relative file path: list of JSON records}."""
    reference = ex.validate_library()
    validate_tables()
    files: dict[str, list[dict]] = {}

    b = ex.Builder("passing_vs_failing", SEED + 1, reference)
    deal = Cycle(b.rng, _library_items(BUGS))
    seen: set[str] = set()
    for path, n in PASSING_FILES.items():
        files[path] = make_records(n, lambda i: passing_pair(b, deal, i), path, seen)

    b = ex.Builder("idiomatic_vs_not", SEED + 2, reference)
    deal = Cycle(b.rng, _library_items(IDIOMS))
    builders = {"messages": idiom_messages, "chat_rounds": idiom_chat_rounds, "conversations": idiom_conversations}
    seen = set()
    for path, n in IDIOMATIC_FILES.items():
        build = builders[Path(path).stem]
        files[path] = make_records(n, lambda i: build(b, deal, i), path, seen)
    return files


def main(argv: list[str] | None = None) -> int:
    return ex.run_generator(argv, doc=__doc__, default_out=HERE / "data_preference", generate=generate,
                            task_dirs=TASK_DIRS, prog="make_preference_examples", what="preference pairs")


if __name__ == "__main__":
    sys.exit(main())
