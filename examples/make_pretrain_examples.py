#!/usr/bin/env python
"""Generate the bundled continued-pretraining example data under ``examples/data_pretrain/``.

    python examples/make_pretrain_examples.py              # rewrite examples/data_pretrain/
    python examples/make_pretrain_examples.py --out DIR    # write the same files under DIR

Three raw-text tasks for ``"objective": "pretrain"`` are built from the function library of ``make_examples.py``
(loaded by path; the SFT data it writes is not touched):

- ``python_modules/``  ``{"text": ...}`` lines, each a Python module of several library functions: module docstring,
  imports, functions with docstrings (some with doctests), sometimes ``__all__`` and an ``if __name__ == "__main__":``
  demo. Lengths vary from a few dozen lines to modules longer than 1024 SmolLM2 tokens (split across blocks).
- ``zh_code_notes/``   Chinese technical notes about the library functions: one ``.txt`` file per function (a
  reference page: summary, parameters, return value, errors, examples, implementation) in one folder per category,
  and ``qa/notes.jsonl`` with shorter notes (questions and answers, comparisons, quizzes, study notes).
- ``en_reference/``    ``{"text": ...}`` lines of English docstring-style reference entries.

Only the standard library is used and every random choice comes from seeded ``random.Random`` objects, so the output
is byte-identical on every run. Nothing is written unless every module ran: each of its functions passes its library
function's cases (doctests included) and its ``__main__`` demo prints exactly the values stated in its comments; every
example result quoted in the notes comes from running the library function.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
from pathlib import Path
from string import Template

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

SEED = ex.SEED + 200
MODULE_FILES = {"python_modules/part-000.jsonl": 200, "python_modules/part-001.jsonl": 120}
ZH_QA_FILE, ZH_QA_COUNT = "zh_code_notes/qa/notes.jsonl", 400
EN_FILE, EN_COUNT = "en_reference/reference.jsonl", 120
TASK_DIRS = ("python_modules", "zh_code_notes", "en_reference")
LONG_MODULES = 12  # modules of 14-24 functions: longer than 1024 SmolLM2 tokens


# ---------------------------------------------------------------------------------------------------------------
# Chinese descriptions of the library ($param placeholders, as in the English docs)
# ---------------------------------------------------------------------------------------------------------------

NEGATIVE_N = "如果 $n 是负数，会抛出 `ValueError`"
EMPTY_NUMS = "如果 $nums 为空，会抛出 `ValueError`"
ZH: dict[str, tuple[str, str | None]] = {
    # strings
    "reverse_words": ("把 $text 中的单词按相反顺序排列，再用单个空格连接成字符串返回", None),
    "is_palindrome": ("判断 $text 正着读和倒着读是否相同，比较时忽略大小写以及字母和数字以外的字符", None),
    "count_vowels": ("统计 $text 中元音字母（a、e、i、o、u）的个数，不区分大小写", None),
    "capitalize_words": ("把 $text 中每个以空格分隔的单词的首字母改成大写后返回", None),
    "snake_to_camel": ("把蛇形命名（snake_case）的 $name 转换成驼峰命名（camelCase）", None),
    "camel_to_snake": ("把驼峰命名（camelCase 或 PascalCase）的 $name 转换成蛇形命名（snake_case）", None),
    "truncate": ("把 $text 截短到最多 $limit 个字符，被截断时以 $suffix 结尾", None),
    "word_frequencies": ("返回一个字典，把 $text 中每个转成小写的单词映射到它出现的次数", None),
    "dedupe_chars": ("删除 $text 中重复出现的字符，每个字符只保留第一次出现的那一个", None),
    "is_anagram": ("判断 $first 和 $second 是否互为变位词（所含字母相同、顺序可以不同），忽略空格和大小写", None),
    "most_common_char": ("返回 $text 中出现次数最多的字符；次数相同时取最先出现的那个",
                         "如果 $text 为空，会抛出 `ValueError`"),
    "run_length_encode": ("对 $text 做游程编码：每个字符后面跟着它连续出现的次数", None),
    "strip_punctuation": ("删除 $text 中除字母、数字和空白以外的所有字符", None),
    "pad_number": ("把整数 $n 转成字符串，并在前面补零，使它的长度至少为 $width", None),
    "caesar_shift": ("把 $text 中的每个 ASCII 字母在字母表中移动 $shift 位（凯撒密码），大小写不变，其他字符原样保留", None),
    "count_overlapping": ("统计 $sub 在 $text 中出现的次数，互相重叠的出现也计算在内",
                          "如果 $sub 是空字符串，会抛出 `ValueError`"),
    "longest_word": ("返回 $text 中最长的单词（长度相同时取第一个）；没有单词时返回空字符串", None),
    "initials": ("返回 $full_name 中各部分的大写首字母，每个字母后面跟一个句点", None),
    "mask_string": ("把 $s 中除最后 $visible 个字符以外的所有字符替换成 $char", None),
    "is_valid_identifier": ("判断 $name 能否用作 Python 变量名：它必须是合法的标识符，而且不能是关键字", None),
    "count_uppercase": ("返回 $text 中大写字母的个数", None),
    "normalize_spaces": ("把 $text 中每一段连续的空白压缩成一个空格，并去掉首尾的空格", None),
    "slugify": ("把 $text 转换成适合放在网址里的 slug：全部小写，其余字符组成的每一段都替换成一个连字符", None),
    "parse_key_values": ("把形如 'a=1;b=2' 的字符串解析成字典，用 $sep 分隔各个键值对，并跳过空的键值对", None),
    "word_lengths": ("按顺序返回 $text 中每个单词的长度", None),
    "alternate_case": ("让 $text 中的字符按大写、小写交替排列，从大写开始", None),
    "hamming_distance": ("返回等长字符串 $a 和 $b 中对应字符不同的位置个数，也就是汉明距离",
                         "如果两个字符串长度不同，会抛出 `ValueError`"),
    # lists
    "chunk": ("把 $items 切分成若干个长度为 $size 的连续小块，最后一块可以短一些",
              "如果 $size 不是正数，会抛出 `ValueError`"),
    "flatten": ("把由列表组成的列表 $nested 展开一层", None),
    "deep_flatten": ("把 $nested 中任意层嵌套的列表全部展开成一个平坦的列表", None),
    "unique_in_order": ("按首次出现的顺序返回 $items 中互不相同的元素", None),
    "second_largest": ("返回 $nums 中第二大的不同数值", "如果不同的数值少于两个，会抛出 `ValueError`"),
    "running_sum": ("返回 $nums 的累计和列表，第 i 项是前 i + 1 个数之和", None),
    "moving_average": ("计算 $nums 中每一段连续 $window 个数的平均值，也就是滑动平均",
                       "如果 $window 不是正数，会抛出 `ValueError`"),
    "rotate_right": ("返回一个新列表，内容是 $items 向右循环移动 $k 个位置的结果", None),
    "pairwise_differences": ("返回 $nums 中每两个相邻元素的差值", None),
    "find_index": ("返回 $items 中第一个等于 $target 的元素的下标，找不到时返回 -1", None),
    "count_greater": ("统计 $nums 中严格大于 $threshold 的元素个数", None),
    "merge_sorted": ("把两个已排序的列表 $left 和 $right 合并成一个有序列表", None),
    "interleave": ("交替取出 $first 和 $second 的元素，较长列表剩下的元素接在最后", None),
    "split_even_odd": ("把 $nums 拆成一个元组（偶数列表, 奇数列表），两部分都保持原来的顺序", None),
    "max_subarray_sum": ("返回 $nums 中非空连续片段的最大和", EMPTY_NUMS),
    "binary_search": ("在有序列表 $items 中用二分查找寻找 $target，返回它的一个下标；不存在时返回 -1", None),
    "transpose": ("返回矩形矩阵 $matrix（以行的列表表示）的转置", None),
    "zip_to_dict": ("用两个一一对应的列表 $keys 和 $values 构造一个字典", "如果两个列表长度不同，会抛出 `ValueError`"),
    "most_frequent": ("返回 $items 中出现次数最多的元素（次数相同时取最早出现的），空列表返回 None", None),
    "remove_all": ("返回一个新列表，其中去掉了 $items 里所有等于 $value 的元素", None),
    "all_equal": ("判断 $items 中的所有元素是否都相等；空列表也算作全部相等", None),
    "is_sorted": ("判断 $items 是否按升序排列；当 $descending 为真时改为判断是否按降序排列", None),
    "product": ("返回 $nums 中所有数的乘积（空列表返回 1）", None),
    "clip_values": ("把 $nums 中的每个值限制在 $low 到 $high 的范围内后返回", None),
    "sum_of_squares": ("返回 $nums 中各数平方的和", None),
    "index_of_max": ("返回 $nums 中最大值的下标（有多个最大值时取第一个）", EMPTY_NUMS),
    "diagonal_sum": ("返回方阵 $matrix 主对角线上各元素的和", None),
    # dicts
    "invert_dict": ("返回一个新字典，把 $mapping 的键和值对调", None),
    "merge_dicts": ("返回一个新字典：以 $base 的内容为基础，再用 $override 中的条目覆盖", None),
    "group_by_length": ("按长度给 $words 分组，返回一个把每个长度映射到该长度单词列表的字典", None),
    "pick_keys": ("返回一个字典，只保留 $mapping 中键出现在 $keys 里的条目，顺序与 $keys 一致", None),
    "sum_values": ("返回 $mapping 中所有值的和", None),
    "key_of_max": ("返回 $mapping 中值最大的键；字典为空时返回 None", None),
    "count_by_first_letter": ("统计 $words 中以各个字母开头的单词数量，不区分大小写，并跳过空字符串", None),
    "nested_get": ("沿着 $path 中的键逐层访问嵌套字典 $data 并返回找到的值；某个键不存在时返回 $default", None),
    "sort_by_value": ("返回 $mapping 的（键, 值）对按值排序后的列表；当 $descending 为真时从大到小排列", None),
    "changed_keys": ("返回在 $old 和 $new 之间值不同的键（包括只出现在其中一个字典里的键），并按顺序排好", None),
    "flatten_dict": ("把 $data 中的嵌套字典展平成一层，用 $sep 连接各级的键", None),
    # math
    "factorial": ("返回 $n 的阶乘", NEGATIVE_N),
    "fibonacci": ("返回从 0 开始计数的第 $n 个斐波那契数（0, 1, 1, 2, 3, 5, ...）", NEGATIVE_N),
    "is_prime": ("判断 $n 是否为质数", None),
    "gcd": ("用欧几里得算法（辗转相除法）求 $a 和 $b 的最大公约数", None),
    "lcm": ("返回 $a 和 $b 的最小公倍数（其中任意一个为 0 时返回 0）", None),
    "digit_sum": ("返回 $n 各位十进制数字之和，忽略正负号", None),
    "celsius_to_fahrenheit": ("把摄氏温度 $celsius 换算成华氏温度", None),
    "mean": ("返回 $nums 的算术平均值", EMPTY_NUMS),
    "median": ("返回 $nums 的中位数", EMPTY_NUMS),
    "clamp": ("把 $x 限制在从 $low 到 $high 的闭区间内", "如果 $low 大于 $high，会抛出 `ValueError`"),
    "is_perfect_square": ("判断 $n 是否为完全平方数", None),
    "primes_up_to": ("用埃拉托斯特尼筛法返回不超过 $limit 的所有质数（包括 $limit 本身）", None),
    "collatz_steps": ("返回 $n 按照考拉兹规则（偶数除以 2，奇数乘 3 再加 1）变成 1 所需的步数",
                      "如果 $n 不是正数，会抛出 `ValueError`"),
    "to_binary": ("返回非负整数 $n 的二进制表示，不带 0b 前缀", NEGATIVE_N),
    "int_to_roman": ("把 1 到 3999 之间的整数 $n 转换成罗马数字", "如果 $n 超出这个范围，会抛出 `ValueError`"),
    "percent": ("返回 $part 占 $whole 的百分比，保留 $digits 位小数", "如果 $whole 为零，会抛出 `ValueError`"),
    "count_digits": ("返回 $n 的十进制位数，忽略正负号", None),
    "triangle_number": ("返回第 $n 个三角形数，也就是 1 + 2 + ... + $n 的和", None),
    "is_leap_year": ("判断 $year 在公历中是否为闰年", None),
    "sum_of_multiples": ("返回所有小于 $limit 且是 $a 或 $b 的倍数的正整数之和", None),
    "distance": ("返回平面上两点 $p 和 $q 之间的欧几里得距离", None),
    "normalize": ("把 $nums 线性缩放到 0 到 1 的范围（所有值都相同时返回全零）", None),
    "round_to_multiple": ("把整数 $x 舍入到最接近的 $base 的倍数，正好在中间时向上取",
                          "如果 $base 不是正数，会抛出 `ValueError`"),
    "safe_divide": ("返回 $numerator / $denominator 的结果；当 $denominator 为零时返回 $default", None),
    # misc
    "parse_csv_line": ("用 $sep 拆分一行类似 CSV 的文本 $line，并去掉每个字段两边的空格", None),
    "format_duration": ("把秒数 $seconds 格式化成 '1h 2m 5s' 这样的字符串，为零的部分省略不写", None),
    "is_valid_email": ("粗略判断 $email 像不像一个电子邮件地址：要有本地部分、一个 @ 和带点号的域名", None),
    "compare_versions": ("比较用点分隔的版本号 $a 和 $b，像经典的 cmp() 一样返回 -1、0 或 1", None),
    "bytes_to_kib": ("把 $size 字节换算成 KiB（1 KiB = 1024 字节），保留 $digits 位小数", None),
}
ZH_CATEGORY = {"strings": "字符串处理", "lists": "列表操作", "dicts": "字典操作", "math": "数学计算",
               "misc": "杂项工具"}
ZH_TYPE = {
    None: "任意类型", "None": "任意类型（可能是 None）", "str": "字符串", "int": "整数", "float": "浮点数",
    "bool": "布尔值", "list": "列表", "list[int]": "整数列表", "list[float]": "浮点数列表", "list[str]": "字符串列表",
    "list[list]": "由列表组成的列表", "list[list[int]]": "二维整数列表", "list[tuple]": "元组列表", "dict": "字典",
    "dict[str, int]": "键为字符串、值为整数的字典", "dict[str, str]": "键和值都是字符串的字典",
    "dict[int, list[str]]": "键为整数、值为字符串列表的字典", "tuple[float, float]": "由两个浮点数组成的坐标",
    "tuple[list[int], list[int]]": "由两个整数列表组成的元组",
}


def check_pure(fn_) -> None:
    """The notes say that no library function changes its arguments: run every body and compare."""
    for body_index in range(len(fn_.bodies)):
        v = ex.Variant(fn_, fn_.name, fn_.param_names[0], True, "none", body_index)
        func = ex.load_function(v.source(), fn_.name, f"library:{fn_.name}")
        for args, _ in fn_.cases:
            given = ex.copy.deepcopy(args)
            func(*given)
            if repr(given) != repr(args):
                raise GenerationError(f"{fn_.name}{args!r}: body {body_index} changes its arguments")


def validate_tables() -> None:
    names = {fn_.name for fn_ in ex.LIBRARY}
    if set(ZH) != names:
        raise GenerationError(f"ZH does not match the library: missing {sorted(names - set(ZH))}, "
                              f"unknown {sorted(set(ZH) - names)}")
    for fn_ in ex.LIBRARY:
        check_pure(fn_)
        if (ZH[fn_.name][1] is None) != (fn_.note is None):
            raise GenerationError(f"ZH[{fn_.name}]: the Chinese error note must exist exactly when the English one does")
        for t in [p.type for p in fn_.params] + [fn_.returns]:
            if t not in ZH_TYPE:
                raise GenerationError(f"{fn_.name}: no Chinese name for type {t!r} in ZH_TYPE")
        if fn_.category not in ZH_CATEGORY:
            raise GenerationError(f"{fn_.name}: no Chinese name for category {fn_.category!r}")


def zh(variant, template: str) -> str:
    return Template(template).substitute(variant._mapping(code=False))


def zh_summary(variant) -> str:
    return zh(variant, ZH[variant.fn.name][0])


def zh_note(variant) -> str:
    note = ZH[variant.fn.name][1]
    return zh(variant, note) if note else ""


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------------

def function_code(variant) -> str:
    """def line, docstring and body, without the variant's imports (a module gathers them at its top)."""
    return "\n".join([variant.def_line()] + variant.docstring_lines() + variant.body_lines())


def run_module(source: str, where: str, as_main: bool) -> tuple[dict, str]:
    namespace = {"__name__": "__main__" if as_main else "example_module"}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(source, f"<{where}>", "exec"), namespace)
    except Exception as e:
        raise GenerationError(f"{where}: the module does not run: {e!r}\n{source}") from None
    return namespace, out.getvalue()


def examples_for(b, fn_, k: int) -> list[tuple[tuple, object]]:
    """Up to k distinct cases that return a value (no error cases), interesting ones first."""
    pool = [c for c in ex.all_cases(fn_, b.extra_cases(fn_, 3)) if ex._label(*c) != "empty_input"]
    seen, out = set(), []
    for args, expected in b.rng.sample(pool, len(pool)):
        key = repr(args)
        if key not in seen:
            seen.add(key)
            out.append((args, expected))
    return out[:k]


class Deal:
    """Library functions of one category (or all), dealt in shuffled rounds so every function is used evenly."""

    def __init__(self, rng, fns: list):
        self.rng, self.fns, self.order = rng, fns, []

    def take(self, k: int, avoid: set[str]) -> list:
        picked = []
        for _ in range(4 * len(self.fns)):
            if len(picked) == k:
                break
            if not self.order:
                self.order = list(self.fns)
                self.rng.shuffle(self.order)
            fn_ = self.order.pop()
            if fn_.name not in avoid and fn_ not in picked:
                picked.append(fn_)
        return picked


# ---------------------------------------------------------------------------------------------------------------
# python_modules/
# ---------------------------------------------------------------------------------------------------------------

MODULE_DOCS = {
    "strings": ["String helpers.", "Small utilities for working with text.", "Text processing helpers.",
                "Helpers for cleaning, formatting and inspecting strings."],
    "lists": ["List helpers.", "Small utilities for working with lists.", "Sequence helpers.",
              "Helpers for slicing, searching and reshaping lists."],
    "dicts": ["Dictionary helpers.", "Small utilities for working with dicts.", "Mapping helpers.",
              "Helpers for building, merging and querying dictionaries."],
    "math": ["Math helpers.", "Small numeric utilities.", "Number helpers.",
             "Helpers for integer arithmetic, statistics and conversions."],
    "misc": ["Assorted helpers.", "Miscellaneous utilities.", "Parsing and formatting helpers."],
    "mixed": ["A grab bag of small helpers.", "Utility functions used across the project.",
              "Common helpers for strings, lists, dicts and numbers.", "Shared utilities."],
}
MODULE_TAILS = ["", "", "", "\n\nEvery function is pure: it never changes its arguments.",
                "\n\nThe functions only use the standard library.", "\n\nAll functions are small and independent."]


def module_imports(variants, r) -> list[str]:
    lines = sorted({line for v in variants for line in v.fn.imports})
    if r.random() < 0.3:
        lines = ["from __future__ import annotations", ""] + lines if lines else ["from __future__ import annotations"]
    return lines


def main_block(b, variants) -> tuple[list[str], list[str]]:
    """`if __name__ == "__main__":` lines that print example results, and the lines they must print."""
    r = b.rng
    lines, expected_out = ["", "", "", 'if __name__ == "__main__":'], []
    for v in r.sample(variants, min(len(variants), r.randint(1, 4))):
        for args, expected in examples_for(b, v.fn, r.choice([1, 1, 2])):
            shown = str(expected)
            if "\n" in shown or not shown.strip():
                continue
            lines.append(f"    print({v.call(args)})  # {shown}" if r.random() < 0.6 else f"    print({v.call(args)})")
            expected_out.append(shown)
    return (lines, expected_out) if expected_out else ([], [])


def build_module(b, deal: dict, index: int, where: str) -> str:
    r = b.rng
    long = index < LONG_MODULES
    kind = "mixed" if long or r.random() < 0.2 else r.choice(["strings", "lists", "dicts", "math", "strings",
                                                             "lists", "math", "misc"])
    k = r.randint(14, 24) if long else min(len(deal[kind].fns), r.choice([2, 2, 3, 3, 4, 4, 5, 6, 7, 8, 10]))
    fns = deal[kind].take(k, set())
    variants = []
    for fn_ in fns:
        # a backslash escape would turn into a real character inside the (non-raw) docstring
        cases = [c for c in ex.all_cases(fn_, b.extra_cases(fn_, 2)) if "\\" not in ex.lit(c[0]) + repr(c[1])]
        variants.append(b.variant(fn_, doc_styles=("line", "line", "line", "doctest", "none"), cases=cases))
    header = f'"""{r.choice(MODULE_DOCS[kind])}{r.choice(MODULE_TAILS)}\n"""'
    parts = [header]
    imports = module_imports(variants, r)
    if imports:
        parts.append("\n".join(imports))
    if r.random() < 0.25:
        parts.append("__all__ = [" + ", ".join(f'"{v.name}"' for v in variants) + "]")
    body = "\n\n\n".join(function_code(v) for v in variants)
    demo, printed = main_block(b, variants) if r.random() < 0.4 else ([], [])
    source = "\n\n".join(parts) + "\n\n\n" + body + "\n".join(demo) + "\n"
    check_module(source, variants, printed, where)
    return source


def check_module(source: str, variants, printed: list[str], where: str) -> None:
    """Every function passes its cases (and doctests); the demo prints exactly what it promises."""
    for v in variants:
        ex.check_variant_source(v, source, ex.all_cases(v.fn, []), f"{where}:{v.name}")
    _, out = run_module(source, where, as_main=True)
    if out.splitlines() != printed:
        raise GenerationError(f"{where}: the __main__ demo printed {out!r}, expected {printed!r}\n{source}")


# ---------------------------------------------------------------------------------------------------------------
# zh_code_notes/: one reference page per function (.txt) and short notes (jsonl)
# ---------------------------------------------------------------------------------------------------------------

ZH_INTROS = ["`{sig}` 是一个{cat}函数，它{summary}。", "函数 `{name}` 属于{cat}类工具，作用是{summary}。",
             "`{name}` 的功能很简单：{summary}。", "本文介绍{cat}函数 `{name}`。调用 `{sig}` 会{summary}。"]
ZH_EXAMPLE_LINES = ["调用 `{call}`，得到 `{result}`。", "`{call}` 的结果是 `{result}`。",
                    "例如 `{call}` 返回 `{result}`。", "执行 `{call}` 会返回 `{result}`。"]
ZH_IMPL_LEADS = ["下面是一种实现：", "一种简洁的写法如下：", "参考实现：", "实现代码如下："]
ZH_REMARKS = {
    "strings": ["字符串在 Python 中是不可变对象，所以这类函数总是返回一个新字符串，而不会修改传入的参数。",
                "处理用户输入、日志或文件内容时，经常需要先把文本整理成统一的格式。",
                "如果文本里有中文等非 ASCII 字符，要留意 `str.isalpha()`、`str.upper()` 这类方法对它们的处理方式。",
                "这类函数的边界情况通常是空字符串、只含空白的字符串以及很长的字符串。"],
    "lists": ["这个函数不会修改传入的列表，而是返回新的结果，调用方可以放心地继续使用原来的数据。",
              "列表操作常见的边界情况包括空列表、只有一个元素的列表以及含有重复元素的列表。",
              "数据量很大时，可以考虑改写成生成器，按需产生结果，以减少内存占用。",
              "Python 的切片和列表推导式能让这类代码写得既简短又清楚。"],
    "dicts": ["从 Python 3.7 开始，字典会保持插入顺序，所以结果中键的顺序是确定的。",
              "处理配置文件或 JSON 数据时，经常会用到这类字典操作。",
              "这个函数不会修改传入的字典，调用之后原来的数据保持不变。",
              "字典的键必须是可哈希的对象，例如字符串、数字或元组。"],
    "math": ["Python 的整数没有大小上限，所以即使结果很大也不会溢出。",
             "涉及浮点数时，结果可能带有很小的舍入误差，比较时最好使用 `math.isclose`。",
             "这类数学函数很适合用参数化测试来覆盖多组输入和输出。",
             "写数值计算代码时，要先想清楚负数、零和很大的数分别该怎么处理。"],
    "misc": ["这类小工具常见于命令行脚本和数据清洗代码中。",
             "输入格式不规范时函数该怎么做，最好事先约定好，并写进文档字符串。",
             "它只依赖标准库，可以直接复制到任何项目中使用。",
             "解析外部输入的代码最好配上足够多的测试用例。"],
}


def zh_remarks(b, fn_) -> list[str]:
    """A short "说明" section: two remarks of the function's category and a testing suggestion."""
    remarks = b.rng.sample(ZH_REMARKS[fn_.category], 2)
    error = "，以及一个会抛出 `ValueError` 的输入" if fn_.note else ""
    tests = f"建议至少为它写三个测试：一个典型输入、一个边界输入{error}。"
    return ["## 说明", "", "".join(remarks), "", tests]


def zh_params(variant) -> list[str]:
    lines = []
    for p, name in zip(variant.fn.params, variant.pnames):
        default = f"，默认值为 `{p.default}`" if p.default else ""
        lines.append(f"- `{name}`：{ZH_TYPE[p.type]}{default}")
    return lines


def zh_examples(b, variant, k: int, style: str) -> list[str]:
    cases = examples_for(b, variant.fn, k)
    if style == "doctest":
        lines = ["```python"]
        for args, expected in cases:
            lines += [f">>> {variant.call(args)}", repr(expected)]
        return lines + ["```"]
    return [b.rng.choice(ZH_EXAMPLE_LINES).format(call=variant.call(a), result=ex.lit(e)) for a, e in cases]


def zh_page(b, fn_, where: str) -> str:
    """A reference page: title, summary, parameters, return value, errors, examples, implementation(s)."""
    r = b.rng
    v = b.variant(fn_, typed=True, doc_styles=("line", "none"), name=fn_.name, pnames=fn_.param_names[0])
    fmt = dict(sig=v.short_signature(), name=v.name, cat=ZH_CATEGORY[fn_.category], summary=zh_summary(v))
    lines = [f"# {v.name}", "", r.choice(ZH_INTROS).format(**fmt), "", "## 参数", ""] + zh_params(v)
    lines += ["", "## 返回值", "", f"返回{ZH_TYPE[fn_.returns]}。"]
    if fn_.note:
        lines += ["", "## 异常", "", zh_note(v) + "。"]
    lines += ["", "## 示例", ""] + zh_examples(b, v, r.randint(2, 3), r.choice(["doctest", "prose"]))
    impl = fn_.imports and "实现中用到了标准库的 " + "、".join(f"`{i.split()[-1]}`" for i in fn_.imports) + " 模块。"
    lines += ["", "## 实现", "", r.choice(ZH_IMPL_LEADS), "", ex.fence(v.source())]
    ex.check_variant_source(v, v.source(), ex.all_cases(fn_, []), where)
    if impl:
        lines += ["", impl]
    lines += [""] + zh_remarks(b, fn_)
    if len(fn_.bodies) > 1:
        alt = ex.Variant(fn_, v.name, v.pnames, True, "none", 1 - v.body_index if len(fn_.bodies) == 2 else 0)
        ex.check_variant_source(alt, alt.source(), ex.all_cases(fn_, []), where)
        lines += ["", r.choice(["同样的功能也可以这样写：", "另一种等价的写法：", "还有一种写法，结果完全相同："]), "",
                  ex.fence(alt.source())]
    return "\n".join(lines) + "\n"


def zh_question(b, fn_) -> str:
    r = b.rng
    v = b.variant(fn_, typed=True, doc_styles=("line", "none"))
    source = v.source()
    ex.check_variant_source(v, source, ex.all_cases(fn_, []), f"{ZH_QA_FILE}:{v.name}")
    ask, reply = r.choice([("问：我想写一个函数 `{sig}`，它{summary}。应该怎么写？", "答：可以这样写："),
                           ("问：Python 里怎样写一个函数，{summary}？", "答：下面是一个可行的实现。"),
                           ("提问：如何实现 `{sig}`？要求它{summary}。", "回答：参考下面的代码。")])
    ask = ask.format(sig=v.short_signature(), summary=zh_summary(v))
    answer = [reply, "", ex.fence(source)]
    if fn_.note:
        answer += ["", "注意：" + zh_note(v) + "。"]
    answer += [""] + zh_examples(b, v, 1, "prose")
    return "\n".join([ask, ""] + answer)


def zh_compare(b, fn_, other) -> str:
    v, w = (b.variant(f, doc_styles=("none",)) for f in (fn_, other))
    same = fn_.category == other.category
    head = (f"`{v.name}` 和 `{w.name}` 都是{ZH_CATEGORY[fn_.category]}函数，但用途不同。" if same else
            f"`{v.name}` 是{ZH_CATEGORY[fn_.category]}函数，`{w.name}` 是{ZH_CATEGORY[other.category]}函数。")
    lines = [head, f"前者{zh_summary(v)}；后者{zh_summary(w)}。", ""]
    for var in (v, w):
        lines += zh_examples(b, var, 1, "prose")
    return "\n".join(lines)


def zh_quiz(b, fn_) -> str:
    r = b.rng
    v = b.variant(fn_, doc_styles=("none",))
    source = v.source()
    ex.check_variant_source(v, source, ex.all_cases(fn_, []), f"{ZH_QA_FILE}:{v.name}")
    (args, expected), = examples_for(b, fn_, 1)
    return "\n".join([r.choice(["小测验：下面这段代码会输出什么？", "练习：运行下面的代码，结果是什么？"]), "",
                      ex.fence(source + f"\n\n\nprint(repr({v.call(args)}))"), "",
                      f"答案：`{expected!r}`。因为 `{v.name}` {zh_summary(v)}。"])


def zh_diary(b, fn_) -> str:
    r = b.rng
    v = b.variant(fn_, doc_styles=("none",), name=fn_.name)
    fmt = dict(name=v.name, cat=ZH_CATEGORY[fn_.category], summary=zh_summary(v))
    first = r.choice(["学习笔记：今天练习了{cat}函数 `{name}`。它{summary}。",
                      "笔记：`{name}` 是一个常用的{cat}函数，它{summary}。",
                      "代码评审时遇到了 `{name}`，记录一下：它{summary}。"]).format(**fmt)
    lines = [first] + zh_examples(b, v, r.randint(1, 2), "prose")
    if fn_.note:
        lines.append("需要留意的是，" + zh_note(v) + "。")
    if fn_.imports:
        lines.append("它依赖标准库，写之前要先导入：`" + "`、`".join(fn_.imports) + "`。")
    lines.append(r.choice(["写好之后最好补上单元测试。", "这个函数不会修改传入的参数。", "实现只有几行，但边界情况值得测试。",
                           ""]))
    return "\n".join(line for line in lines if line)


def zh_walkthrough(b, fn_) -> str:
    r = b.rng
    v = b.variant(fn_, doc_styles=("none",))
    cases = examples_for(b, fn_, 3)
    (args, expected), rest = cases[0], cases[1:]
    lines = [r.choice(["我们用几个例子来看看 `{name}` 的行为。", "下面通过例子理解 `{name}`。",
                       "先看一个具体的调用，再总结 `{name}` 的规律。"]).format(name=v.name),
             f"它{zh_summary(v)}。假设调用 `{v.call(args)}`，得到的结果是 `{ex.lit(expected)}`。"]
    for args, expected in rest:
        lines.append(r.choice(["如果换成 `{call}`，结果就变成 `{result}`。", "再看 `{call}`，它返回 `{result}`。",
                               "类似地，`{call}` 的结果是 `{result}`。"]).format(call=v.call(args),
                                                                          result=ex.lit(expected)))
    if fn_.note:
        lines.append("另外，" + zh_note(v) + "，调用之前最好先检查输入。")
    lines.append(r.choice(ZH_REMARKS[fn_.category]))
    return "\n".join(lines)


def zh_notes(b, count: int) -> list[dict]:
    r = b.rng
    deal = Deal(r, list(ex.LIBRARY))
    records, seen = [], set()
    makers = [zh_diary, "compare", zh_walkthrough, zh_question, zh_diary, "compare", zh_walkthrough, zh_quiz]
    while len(records) < count:
        maker = makers[len(records) % len(makers)]
        fn_, = deal.take(1, set())
        if maker == "compare":
            pool = [f for f in ex.LIBRARY if f is not fn_ and (f.category == fn_.category or r.random() < 0.3)]
            text = zh_compare(b, fn_, r.choice(pool))
        else:
            text = maker(b, fn_)
        if text not in seen:
            seen.add(text)
            records.append({"text": text})
    return records


# ---------------------------------------------------------------------------------------------------------------
# en_reference/
# ---------------------------------------------------------------------------------------------------------------

def en_entry(b, fn_) -> str:
    r = b.rng
    v = b.variant(fn_, doc_styles=("none",))
    summary = v.describe()
    lines = [v.short_signature(), "", f"{summary[0].upper()}{summary[1:]}."]
    if fn_.note:
        lines[-1] += " It " + v.note_prose(third_person=True)
    if r.random() < 0.7:
        lines += ["", v.how()]
    lines += ["", "Parameters:"]
    for p, name in zip(fn_.params, v.pnames):
        lines.append(f"    {name}" + (f" ({p.type})" if p.type else "") + (f", default {p.default}" if p.default else ""))
    if fn_.returns and fn_.returns != "None":
        lines += ["", f"Returns: {fn_.returns}"]
    lines += ["", "Examples:", ""]
    for args, expected in examples_for(b, fn_, r.randint(1, 3)):
        lines += [f"    >>> {v.call(args)}", f"    {expected!r}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------

def python_modules(reference: dict) -> dict[str, list[dict]]:
    b = ex.Builder("python_modules", SEED + 1, reference)
    by_cat = {c: [f for f in ex.LIBRARY if f.category == c] for c in ZH_CATEGORY}
    deal = {c: Deal(b.rng, fns) for c, fns in by_cat.items()}
    deal["mixed"] = Deal(b.rng, list(ex.LIBRARY))
    files, seen, index = {}, set(), 0
    for path, n in MODULE_FILES.items():
        records = []
        while len(records) < n:
            text = build_module(b, deal, index, f"{path}[{len(records)}]")
            index += 1
            if text not in seen:
                seen.add(text)
                records.append({"text": text})
        files[path] = records
    return files


def generate() -> dict[str, list]:
    """{relative path: list of {"text"} records (.jsonl) or the document itself (.txt)}."""
    reference = ex.validate_library()
    validate_tables()
    files: dict[str, list] = python_modules(reference)
    b = ex.Builder("zh_code_notes", SEED + 2, reference)
    for fn_ in ex.LIBRARY:
        rel = f"zh_code_notes/{fn_.category}/{fn_.name}.txt"
        files[rel] = zh_page(b, fn_, rel)
    files[ZH_QA_FILE] = zh_notes(b, ZH_QA_COUNT)
    b = ex.Builder("en_reference", SEED + 3, reference)
    deal = Deal(b.rng, list(ex.LIBRARY))
    files[EN_FILE] = [{"text": en_entry(b, deal.take(1, set())[0])} for _ in range(EN_COUNT)]
    return files


def write(files: dict[str, list], out: Path) -> None:
    """jsonl files through make_examples.write (which clears our tasks' old jsonl); .txt documents as they are."""
    ex.write({rel: recs for rel, recs in files.items() if rel.endswith(".jsonl")}, out, TASK_DIRS)
    for task in TASK_DIRS:
        for old in sorted((out / task).rglob("*.txt")) if (out / task).is_dir() else []:
            old.unlink()
    for rel, text in files.items():
        if rel.endswith(".txt"):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            with open(out / rel, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "data_pretrain",
                        help="output folder (default: examples/data_pretrain next to this script)")
    args = parser.parse_args(argv)
    try:
        files = generate()
    except GenerationError as e:
        print(f"make_pretrain_examples: {e}", file=sys.stderr)
        return 1
    write(files, args.out)
    docs = 0
    for task in TASK_DIRS:
        mine = {rel: v for rel, v in files.items() if rel.startswith(task + "/")}
        n = sum(1 if rel.endswith(".txt") else len(v) for rel, v in mine.items())
        size = sum((args.out / rel).stat().st_size for rel in mine)
        print(f"{n:5d}  documents in {args.out / task} ({len(mine)} files, {size / 1e6:.2f} MB)")
        docs += n
    print(f"{docs:5d}  pretraining documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
