"""Write the small self-written code-eval problem files in the published formats.

Deterministic: `python tests/data/code_eval/make_fixtures.py` rewrites every file next to this script.
The problems are our own (simple functions); only the file *formats* follow HumanEval-X, MultiPL-E and MBPP.
  humanevalx/<lang>.jsonl        problems (task_id, prompt, declaration, canonical_solution, test, example_test;
                                 Go also import, test_setup)
  humanevalx/<lang>_wrong.jsonl  samples {task_id, completion}: wrong answers; one compile error per compiled language
  multiple/<code>.jsonl          MultiPL-E problems; <code>_canonical.jsonl / <code>_wrong.jsonl samples keyed by name
  mbpp/mbpp.jsonl                MBPP problems; mbpp_wrong.jsonl samples for the test-split ids
"""
import hashlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------------------------------
# Shared problem statements (HumanEval-X and MultiPL-E); each language below writes its own idiomatic code.
DOC = {
    "add_numbers": "Return the sum of the two integers a and b.",
    "reverse_words": "Return the words of text in reverse order, joined by single spaces.\n"
                     "Runs of spaces count as one separator.",
    "count_vowels": "Count the vowels (a, e, i, o, u, in either case) in text.",
    "largest_element": "Return the largest value of a non-empty list of integers.",
    "is_palindrome": "Return true when text reads the same forwards and backwards.",
    "fizz_buzz_string": "Return the numbers 1 to n joined by single spaces, writing Fizz for\n"
                        "multiples of 3, Buzz for multiples of 5 and FizzBuzz for multiples of both.",
    "sum_of_squares": "Return the sum of the squares of a list of integers.",
    "md5_hex": "Return the MD5 digest of text as 32 lowercase hexadecimal digits.",
    "sum_integers": "Return the sum of the values of a list that hold an int; other values are skipped.",
}
FB15 = "1 2 Fizz 4 Buzz Fizz 7 8 Fizz Buzz 11 Fizz 13 14 FizzBuzz"


def P(key, name, sig, examples, body, wrong, tests, n_example=2, extra=None):
    """One problem in one language: tests are the language's boolean/assert expressions."""
    return dict(key=key, name=name, sig=sig, examples=examples, body=body, wrong=wrong, tests=tests,
                n_example=n_example, extra=extra or {})


# ---------------------------------------------------------------------------------------------------------------
# HumanEval-X: Python
HX_PY = [
    P("add_numbers", "add_numbers", "def add_numbers(a: int, b: int) -> int:", [("add_numbers(2, 3)", "5")],
      "    return a + b\n", "    return a - b\n",
      ["add_numbers(2, 3) == 5", "add_numbers(-4, 4) == 0", "add_numbers(0, 0) == 0", "add_numbers(100, 23) == 123"]),
    P("reverse_words", "reverse_words", "def reverse_words(text: str) -> str:",
      [("reverse_words('hello world')", "'world hello'")],
      "    return ' '.join(reversed(text.split()))\n", "    return ' '.join(text.split())\n",
      ["reverse_words('hello world') == 'world hello'", "reverse_words('a  b c') == 'c b a'",
       "reverse_words('one') == 'one'", "reverse_words('') == ''"]),
    P("count_vowels", "count_vowels", "def count_vowels(text: str) -> int:", [("count_vowels('Hello World')", "3")],
      "    return sum(1 for ch in text.lower() if ch in 'aeiou')\n",
      "    return sum(1 for ch in text if ch in 'aeiou')\n",
      ["count_vowels('Hello World') == 3", "count_vowels('AEIOU xyz') == 5", "count_vowels('rhythm') == 0",
       "count_vowels('') == 0"]),
    P("largest_element", "largest_element", "def largest_element(numbers: List[int]) -> int:",
      [("largest_element([1, 5, 3])", "5")],
      "    best = numbers[0]\n    for x in numbers[1:]:\n        if x > best:\n            best = x\n    return best\n",
      "    return numbers[-1]\n",
      ["largest_element([1, 5, 3]) == 5", "largest_element([-4, -2, -9]) == -2", "largest_element([7]) == 7"]),
    P("is_palindrome", "is_palindrome", "def is_palindrome(text: str) -> bool:",
      [("is_palindrome('level')", "True"), ("is_palindrome('abca')", "False")],
      "    return text == text[::-1]\n", "    return text[:1] == text[-1:]\n",
      ["is_palindrome('level') is True", "is_palindrome('abca') is False", "is_palindrome('') is True",
       "is_palindrome('ab') is False"]),
    P("fizz_buzz_string", "fizz_buzz_string", "def fizz_buzz_string(n: int) -> str:",
      [("fizz_buzz_string(5)", "'1 2 Fizz 4 Buzz'")],
      "    def word(i):\n        if i % 15 == 0:\n            return 'FizzBuzz'\n        if i % 3 == 0:\n"
      "            return 'Fizz'\n        if i % 5 == 0:\n            return 'Buzz'\n        return str(i)\n"
      "    return ' '.join(word(i) for i in range(1, n + 1))\n",
      "    def word(i):\n        if i % 3 == 0:\n            return 'Fizz'\n        if i % 5 == 0:\n"
      "            return 'Buzz'\n        return str(i)\n    return ' '.join(word(i) for i in range(1, n + 1))\n",
      ["fizz_buzz_string(5) == '1 2 Fizz 4 Buzz'", f"fizz_buzz_string(15) == '{FB15}'",
       "fizz_buzz_string(1) == '1'", "fizz_buzz_string(0) == ''"]),
    P("sum_of_squares", "sum_of_squares", "def sum_of_squares(numbers: List[int]) -> int:",
      [("sum_of_squares([1, 2, 3])", "14")],
      "    return sum(x * x for x in numbers)\n", "    return sum(x * 2 for x in numbers)\n",
      ["sum_of_squares([1, 2, 3]) == 14", "sum_of_squares([]) == 0", "sum_of_squares([-2, 5]) == 29"]),
]


def hx_python(i, p):
    header = "from typing import List\n\n\n" if "List[" in p["sig"] else "\n\n"
    doc = DOC[p["key"]].replace("true", "True")
    lines = [f"    {line}" for line in doc.split("\n")]
    lines[0] = "    \"\"\" " + doc.split("\n")[0]
    for call, result in p["examples"]:
        lines += [f"    >>> {call}", f"    {result}"]
    prompt = header + p["sig"] + "\n" + "\n".join(lines) + "\n    \"\"\"\n"
    name = p["name"]

    def check(tests, metadata):
        head = "\n\nMETADATA = {}\n\n\n" if metadata else ""
        asserts = "".join(f"    assert {t}\n" for t in tests)
        return f"{head}def check({name}):\n{asserts}\ncheck({name})\n"

    return dict(task_id=f"Python/{i}", prompt=prompt, declaration=header + p["sig"] + "\n",
                canonical_solution=p["body"], test=check(p["tests"], True),
                example_test=check(p["tests"][:p["n_example"]], False))


# ---------------------------------------------------------------------------------------------------------------
# HumanEval-X: C++ (prompt leaves the function open after "{"; canonical closes it)
CPP_INC = "#include<stdio.h>\n#include<string>\n#include<vector>\n"
HX_CPP = [
    P("add_numbers", "add_numbers", "int add_numbers(int a,int b)", [("add_numbers(2, 3)", "5")],
      "    return a + b;\n}\n", "    return a + b\n}\n",  # compile error: missing semicolon
      ["add_numbers(2, 3) == 5", "add_numbers(-4, 4) == 0", "add_numbers(0, 0) == 0", "add_numbers(100, 23) == 123"]),
    P("reverse_words", "reverse_words", "string reverse_words(string text)",
      [("reverse_words(\"hello world\")", "\"world hello\"")],
      "    istringstream in(text);\n    vector<string> words;\n    string word;\n"
      "    while (in >> word) words.push_back(word);\n    string out;\n"
      "    for (int i = (int)words.size() - 1; i >= 0; i--) {\n        if (!out.empty()) out += \" \";\n"
      "        out += words[i];\n    }\n    return out;\n}\n",
      "    istringstream in(text);\n    string word, out;\n    while (in >> word) {\n"
      "        if (!out.empty()) out += \" \";\n        out += word;\n    }\n    return out;\n}\n",
      ["reverse_words(\"hello world\") == \"world hello\"", "reverse_words(\"a  b c\") == \"c b a\"",
       "reverse_words(\"one\") == \"one\"", "reverse_words(\"\") == \"\""],
      extra={"includes": "#include<sstream>\n"}),
    P("count_vowels", "count_vowels", "int count_vowels(string text)", [("count_vowels(\"Hello World\")", "3")],
      "    int count = 0;\n    for (char c : text)\n"
      "        if (string(\"aeiou\").find(tolower(c)) != string::npos) count++;\n"
      "    return count;\n}\n",
      "    int count = 0;\n    for (char c : text)\n        if (string(\"aeiou\").find(c) != string::npos) count++;\n"
      "    return count;\n}\n",
      ["count_vowels(\"Hello World\") == 3", "count_vowels(\"AEIOU xyz\") == 5", "count_vowels(\"rhythm\") == 0",
       "count_vowels(\"\") == 0"], extra={"includes": "#include<ctype.h>\n"}),
    P("largest_element", "largest_element", "int largest_element(vector<int> numbers)",
      [("largest_element({1, 5, 3})", "5")],
      "    int best = numbers[0];\n    for (int x : numbers)\n        if (x > best) best = x;\n    return best;\n}\n",
      "    return numbers[0];\n}\n",
      ["largest_element({1, 5, 3}) == 5", "largest_element({-4, -2, -9}) == -2", "largest_element({7}) == 7"]),
    P("is_palindrome", "is_palindrome", "bool is_palindrome(string text)",
      [("is_palindrome(\"level\")", "true"), ("is_palindrome(\"abca\")", "false")],
      "    return string(text.rbegin(), text.rend()) == text;\n}\n",
      "    return text.empty() || text[0] == text[text.size() - 1];\n}\n",
      ["is_palindrome(\"level\") == true", "is_palindrome(\"abca\") == false", "is_palindrome(\"\") == true",
       "is_palindrome(\"ab\") == false"]),
    P("fizz_buzz_string", "fizz_buzz_string", "string fizz_buzz_string(int n)",
      [("fizz_buzz_string(5)", "\"1 2 Fizz 4 Buzz\"")],
      "    string out;\n    for (int i = 1; i <= n; i++) {\n        if (i > 1) out += \" \";\n"
      "        if (i % 15 == 0) out += \"FizzBuzz\";\n        else if (i % 3 == 0) out += \"Fizz\";\n"
      "        else if (i % 5 == 0) out += \"Buzz\";\n        else out += to_string(i);\n    }\n    return out;\n}\n",
      "    string out;\n    for (int i = 1; i <= n; i++) {\n        if (i > 1) out += \" \";\n"
      "        if (i % 3 == 0) out += \"Fizz\";\n        else if (i % 5 == 0) out += \"Buzz\";\n"
      "        else out += to_string(i);\n    }\n    return out;\n}\n",
      ["fizz_buzz_string(5) == \"1 2 Fizz 4 Buzz\"", f"fizz_buzz_string(15) == \"{FB15}\"",
       "fizz_buzz_string(1) == \"1\"", "fizz_buzz_string(0) == \"\""]),
    P("sum_of_squares", "sum_of_squares", "int sum_of_squares(vector<int> numbers)",
      [("sum_of_squares({1, 2, 3})", "14")],
      "    int total = 0;\n    for (int x : numbers) total += x * x;\n    return total;\n}\n",
      "    int total = 0;\n    for (int x : numbers) total += x * 2;\n    return total;\n}\n",
      ["sum_of_squares({1, 2, 3}) == 14", "sum_of_squares({}) == 0", "sum_of_squares({-2, 5}) == 29"]),
    # Like the real set: one problem needs OpenSSL (link -lcrypto), one needs Boost headers.
    P("md5_hex", "md5_hex", "string md5_hex(string text)",
      [("md5_hex(\"hello\")", "\"5d41402abc4b2a76b9719d911017c592\"")],
      "    unsigned char digest[MD5_DIGEST_LENGTH];\n"
      "    MD5((const unsigned char*)text.c_str(), text.size(), digest);\n"
      "    char hex[2 * MD5_DIGEST_LENGTH + 1];\n    for (int i = 0; i < MD5_DIGEST_LENGTH; i++)\n"
      "        sprintf(hex + 2 * i, \"%02x\", digest[i]);\n    return string(hex, 2 * MD5_DIGEST_LENGTH);\n}\n",
      "    unsigned char digest[MD5_DIGEST_LENGTH];\n"
      "    MD5((const unsigned char*)text.c_str(), text.size(), digest);\n"
      "    char hex[2 * MD5_DIGEST_LENGTH + 1];\n    for (int i = 0; i < MD5_DIGEST_LENGTH; i++)\n"
      "        sprintf(hex + 2 * i, \"%02X\", digest[i]);\n    return string(hex, 2 * MD5_DIGEST_LENGTH);\n}\n",
      ["md5_hex(\"hello\") == \"5d41402abc4b2a76b9719d911017c592\"",
       "md5_hex(\"\") == \"d41d8cd98f00b204e9800998ecf8427e\"",
       "md5_hex(\"code eval\") == \"" + hashlib.md5(b"code eval").hexdigest() + "\""],
      n_example=1, extra={"includes": "#include<openssl/md5.h>\n"}),
    P("sum_integers", "sum_integers", "int sum_integers(list_any values)",
      [("sum_integers({1, 2.5, \"x\", 4})", "5")],
      "    int total = 0;\n    for (const boost::any &value : values)\n"
      "        if (value.type() == typeid(int)) total += boost::any_cast<int>(value);\n    return total;\n}\n",
      "    int total = 0;\n    for (const boost::any &value : values)\n"
      "        if (value.type() == typeid(int)) total += 1;\n    return total;\n}\n",
      ["sum_integers({1, 2.5, string(\"x\"), 4}) == 5", "sum_integers({}) == 0",
       "sum_integers({-3, 'c', 10, 7.0}) == 7"], n_example=1,
      extra={"includes": "#include<list>\n#include<boost/any.hpp>\n",
             "after_using": "typedef std::list<boost::any> list_any;\n"}),
]


def hx_cpp(i, p):
    doc = DOC[p["key"]] + "".join(f"\n>>> {c}\n{r}" for c, r in p["examples"])
    head = CPP_INC + p["extra"].get("includes", "") + "using namespace std;\n" + p["extra"].get("after_using", "")
    prompt = f"/*\n{doc}\n*/\n{head}{p['sig']}{{\n"

    def main(tests):
        asserts = "".join(f"    assert ({t});\n" for t in tests)
        return "#undef NDEBUG\n#include<assert.h>\nint main(){\n" + asserts + "}\n"

    return dict(task_id=f"CPP/{i}", prompt=prompt, declaration=f"{head}{p['sig']}{{\n",
                canonical_solution=p["body"], test=main(p["tests"]), example_test=main(p["tests"][:p["n_example"]]))


# ---------------------------------------------------------------------------------------------------------------
# HumanEval-X: Java (prompt opens class Solution and the method; canonical closes both)
HX_JAVA = [
    P("add_numbers", "addNumbers", "public int addNumbers(int a, int b)", [("addNumbers(2, 3)", "5")],
      "        return a + b;\n", "        return a * b;\n",
      ["s.addNumbers(2, 3) == 5", "s.addNumbers(-4, 4) == 0", "s.addNumbers(0, 0) == 0",
       "s.addNumbers(100, 23) == 123"]),
    P("reverse_words", "reverseWords", "public String reverseWords(String text)",
      [("reverseWords(\"hello world\")", "\"world hello\"")],
      "        List<String> words = new ArrayList<>();\n        for (String word : text.split(\" \")) {\n"
      "            if (!word.isEmpty()) {\n                words.add(word);\n            }\n        }\n"
      "        Collections.reverse(words);\n        return String.join(\" \", words);\n",
      # compile error: a List<String> returned where a String is declared
      "        List<String> words = new ArrayList<>(Arrays.asList(text.split(\" \")));\n"
      "        Collections.reverse(words);\n        return words;\n",
      ["s.reverseWords(\"hello world\").equals(\"world hello\")", "s.reverseWords(\"a  b c\").equals(\"c b a\")",
       "s.reverseWords(\"one\").equals(\"one\")", "s.reverseWords(\"\").equals(\"\")"]),
    P("count_vowels", "countVowels", "public int countVowels(String text)", [("countVowels(\"Hello World\")", "3")],
      "        int count = 0;\n        for (char c : text.toLowerCase().toCharArray()) {\n"
      "            if (\"aeiou\".indexOf(c) >= 0) {\n                count++;\n"
      "            }\n        }\n        return count;\n",
      "        int count = 0;\n        for (char c : text.toCharArray()) {\n"
      "            if (\"aeiou\".indexOf(c) >= 0) {\n                count++;\n"
      "            }\n        }\n        return count;\n",
      ["s.countVowels(\"Hello World\") == 3", "s.countVowels(\"AEIOU xyz\") == 5", "s.countVowels(\"rhythm\") == 0",
       "s.countVowels(\"\") == 0"]),
    P("largest_element", "largestElement", "public int largestElement(List<Integer> numbers)",
      [("largestElement(Arrays.asList(1, 5, 3))", "5")],
      "        return Collections.max(numbers);\n", "        return Collections.min(numbers);\n",
      ["s.largestElement(Arrays.asList(1, 5, 3)) == 5", "s.largestElement(Arrays.asList(-4, -2, -9)) == -2",
       "s.largestElement(Arrays.asList(7)) == 7"]),
    P("is_palindrome", "isPalindrome", "public boolean isPalindrome(String text)",
      [("isPalindrome(\"level\")", "true"), ("isPalindrome(\"abca\")", "false")],
      "        return new StringBuilder(text).reverse().toString().equals(text);\n",
      "        return text.isEmpty() || text.charAt(0) == text.charAt(text.length() - 1);\n",
      ["s.isPalindrome(\"level\")", "!s.isPalindrome(\"abca\")", "s.isPalindrome(\"\")", "!s.isPalindrome(\"ab\")"]),
    P("fizz_buzz_string", "fizzBuzzString", "public String fizzBuzzString(int n)",
      [("fizzBuzzString(5)", "\"1 2 Fizz 4 Buzz\"")],
      "        StringJoiner out = new StringJoiner(\" \");\n        for (int i = 1; i <= n; i++) {\n"
      "            if (i % 15 == 0) {\n                out.add(\"FizzBuzz\");\n            } else if (i % 3 == 0) {\n"
      "                out.add(\"Fizz\");\n            } else if (i % 5 == 0) {\n                out.add(\"Buzz\");\n"
      "            } else {\n                out.add(String.valueOf(i));\n            }\n        }\n"
      "        return out.toString();\n",
      "        StringJoiner out = new StringJoiner(\" \");\n        for (int i = 1; i <= n; i++) {\n"
      "            if (i % 3 == 0) {\n                out.add(\"Fizz\");\n            } else if (i % 5 == 0) {\n"
      "                out.add(\"Buzz\");\n            } else {\n                out.add(String.valueOf(i));\n"
      "            }\n        }\n        return out.toString();\n",
      ["s.fizzBuzzString(5).equals(\"1 2 Fizz 4 Buzz\")", f"s.fizzBuzzString(15).equals(\"{FB15}\")",
       "s.fizzBuzzString(1).equals(\"1\")", "s.fizzBuzzString(0).equals(\"\")"]),
    P("sum_of_squares", "sumOfSquares", "public int sumOfSquares(List<Integer> numbers)",
      [("sumOfSquares(Arrays.asList(1, 2, 3))", "14")],
      "        return numbers.stream().mapToInt(x -> x * x).sum();\n",
      "        return numbers.stream().mapToInt(x -> x * 2).sum();\n",
      ["s.sumOfSquares(Arrays.asList(1, 2, 3)) == 14", "s.sumOfSquares(new ArrayList<>()) == 0",
       "s.sumOfSquares(Arrays.asList(-2, 5)) == 29"]),
]
JAVA_HEAD = "import java.util.*;\nimport java.lang.*;\n\nclass Solution {\n"


def hx_java(i, p):
    doc = DOC[p["key"]] + "".join(f"\n>>> {c}\n{r}" for c, r in p["examples"])
    doc = "".join(f"    {line}\n" for line in doc.split("\n"))
    prompt = f"{JAVA_HEAD}    /**\n{doc}     */\n    {p['sig']} {{\n"

    def main(tests):
        checks = ",\n".join(f"                {t}" for t in tests)
        return ("public class Main {\n    public static void main(String[] args) {\n"
                "        Solution s = new Solution();\n"
                f"        List<Boolean> correct = Arrays.asList(\n{checks}\n        );\n"
                "        if (correct.contains(false)) {\n            throw new AssertionError();\n        }\n    }\n}")

    return dict(task_id=f"Java/{i}", prompt=prompt, declaration=f"{JAVA_HEAD}    {p['sig']} {{\n",
                canonical_solution=p["body"] + "    }\n}", test=main(p["tests"]),
                example_test=main(p["tests"][:p["n_example"]]))


# ---------------------------------------------------------------------------------------------------------------
# HumanEval-X: JavaScript (arrow function left open; canonical closes it)
HX_JS = [
    P("add_numbers", "addNumbers", "(a, b)", [("addNumbers(2, 3)", "5")],
      "  return a + b\n", "  return a * b\n",
      ["addNumbers(2, 3) === 5", "addNumbers(-4, 4) === 0", "addNumbers(0, 0) === 0", "addNumbers(100, 23) === 123"]),
    P("reverse_words", "reverseWords", "(text)", [("reverseWords('hello world')", "'world hello'")],
      "  return text.split(' ').filter((w) => w.length > 0).reverse().join(' ')\n",
      "  return text.split(' ').filter((w) => w.length > 0).join(' ')\n",
      ["reverseWords('hello world') === 'world hello'", "reverseWords('a  b c') === 'c b a'",
       "reverseWords('one') === 'one'", "reverseWords('') === ''"]),
    P("count_vowels", "countVowels", "(text)", [("countVowels('Hello World')", "3")],
      "  return [...text.toLowerCase()].filter((c) => 'aeiou'.includes(c)).length\n",
      "  return [...text].filter((c) => 'aeiou'.includes(c)).length\n",
      ["countVowels('Hello World') === 3", "countVowels('AEIOU xyz') === 5", "countVowels('rhythm') === 0",
       "countVowels('') === 0"]),
    P("largest_element", "largestElement", "(numbers)", [("largestElement([1, 5, 3])", "5")],
      "  return Math.max(...numbers)\n", "  return Math.min(...numbers)\n",
      ["largestElement([1, 5, 3]) === 5", "largestElement([-4, -2, -9]) === -2", "largestElement([7]) === 7"]),
    P("is_palindrome", "isPalindrome", "(text)",
      [("isPalindrome('level')", "true"), ("isPalindrome('abca')", "false")],
      "  return text === [...text].reverse().join('')\n",
      "  return text.length === 0 || text[0] === text[text.length - 1]\n",
      ["isPalindrome('level') === true", "isPalindrome('abca') === false", "isPalindrome('') === true",
       "isPalindrome('ab') === false"]),
    P("fizz_buzz_string", "fizzBuzzString", "(n)", [("fizzBuzzString(5)", "'1 2 Fizz 4 Buzz'")],
      "  const words = []\n  for (let i = 1; i <= n; i++) {\n    if (i % 15 === 0) words.push('FizzBuzz')\n"
      "    else if (i % 3 === 0) words.push('Fizz')\n    else if (i % 5 === 0) words.push('Buzz')\n"
      "    else words.push(String(i))\n  }\n  return words.join(' ')\n",
      "  const words = []\n  for (let i = 1; i <= n; i++) {\n    if (i % 3 === 0) words.push('Fizz')\n"
      "    else if (i % 5 === 0) words.push('Buzz')\n    else words.push(String(i))\n  }\n  return words.join(' ')\n",
      ["fizzBuzzString(5) === '1 2 Fizz 4 Buzz'", f"fizzBuzzString(15) === '{FB15}'",
       "fizzBuzzString(1) === '1'", "fizzBuzzString(0) === ''"]),
    P("sum_of_squares", "sumOfSquares", "(numbers)", [("sumOfSquares([1, 2, 3])", "14")],
      "  return numbers.reduce((total, x) => total + x * x, 0)\n",
      "  return numbers.reduce((total, x) => total + x * 2, 0)\n",
      ["sumOfSquares([1, 2, 3]) === 14", "sumOfSquares([]) === 0", "sumOfSquares([-2, 5]) === 29"]),
]


def hx_js(i, p):
    doc = DOC[p["key"]] + "".join(f"\n  >>> {c}\n  {r}" for c, r in p["examples"])
    name = p["name"]
    decl = f"const {name} = {p['sig']} => {{\n"
    prompt = f"/* {doc}\n  */\n{decl}"
    tname = "test" + name[0].upper() + name[1:]

    def test(tests):
        body = "".join(f"  console.assert({t})\n" for t in tests)
        return f"const {tname} = () => {{\n{body}}}\n\n{tname}()\n"

    return dict(task_id=f"JavaScript/{i}", prompt=prompt, declaration="\n" + decl,
                canonical_solution=p["body"] + "}\n", test=test(p["tests"]),
                example_test=test(p["tests"][:p["n_example"]]))


# ---------------------------------------------------------------------------------------------------------------
# HumanEval-X: Go (testify asserts; the prompt's import block is repeated in the `import` field)
GO_TEST_SETUP = "package main\n\nimport (\n    \"testing\"\n    \"github.com/stretchr/testify/assert\"\n)\n"
HX_GO = [
    P("add_numbers", "AddNumbers", "func AddNumbers(a int, b int) int", [("AddNumbers(2, 3)", "5")],
      "    return a + b\n}\n", "    return a - b\n}\n",
      ["5, AddNumbers(2, 3)", "0, AddNumbers(-4, 4)", "0, AddNumbers(0, 0)", "123, AddNumbers(100, 23)"]),
    P("reverse_words", "ReverseWords", "func ReverseWords(text string) string",
      [("ReverseWords(\"hello world\")", "\"world hello\"")],
      "    words := strings.Fields(text)\n    for i, j := 0, len(words)-1; i < j; i, j = i+1, j-1 {\n"
      "        words[i], words[j] = words[j], words[i]\n    }\n    return strings.Join(words, \" \")\n}\n",
      "    return strings.Join(strings.Fields(text), \" \")\n}\n",
      ["\"world hello\", ReverseWords(\"hello world\")", "\"c b a\", ReverseWords(\"a  b c\")",
       "\"one\", ReverseWords(\"one\")", "\"\", ReverseWords(\"\")"], extra={"imports": ["strings"]}),
    P("count_vowels", "CountVowels", "func CountVowels(text string) int", [("CountVowels(\"Hello World\")", "3")],
      "    count := 0\n    for _, r := range strings.ToLower(text) {\n        if strings.ContainsRune(\"aeiou\", r) {\n"
      "            count++\n        }\n    }\n    return count\n}\n",
      # compile error: Go rejects a declared and unused variable
      "    count := 0\n    lowered := strings.ToLower(text)\n    for _, r := range text {\n"
      "        if strings.ContainsRune(\"aeiou\", r) {\n            count++\n        }\n    }\n    return count\n}\n",
      ["3, CountVowels(\"Hello World\")", "5, CountVowels(\"AEIOU xyz\")", "0, CountVowels(\"rhythm\")",
       "0, CountVowels(\"\")"], extra={"imports": ["strings"]}),
    P("largest_element", "LargestElement", "func LargestElement(numbers []int) int",
      [("LargestElement([]int{1, 5, 3})", "5")],
      "    best := numbers[0]\n    for _, x := range numbers[1:] {\n        if x > best {\n            best = x\n"
      "        }\n    }\n    return best\n}\n",
      "    return numbers[len(numbers)-1]\n}\n",
      ["5, LargestElement([]int{1, 5, 3})", "-2, LargestElement([]int{-4, -2, -9})", "7, LargestElement([]int{7})"]),
    P("is_palindrome", "IsPalindrome", "func IsPalindrome(text string) bool",
      [("IsPalindrome(\"level\")", "true"), ("IsPalindrome(\"abca\")", "false")],
      "    runes := []rune(text)\n    for i, j := 0, len(runes)-1; i < j; i, j = i+1, j-1 {\n"
      "        if runes[i] != runes[j] {\n            return false\n        }\n    }\n    return true\n}\n",
      "    return len(text) == 0 || text[0] == text[len(text)-1]\n}\n",
      ["true, IsPalindrome(\"level\")", "false, IsPalindrome(\"abca\")", "true, IsPalindrome(\"\")",
       "false, IsPalindrome(\"ab\")"]),
    P("fizz_buzz_string", "FizzBuzzString", "func FizzBuzzString(n int) string",
      [("FizzBuzzString(5)", "\"1 2 Fizz 4 Buzz\"")],
      "    words := make([]string, 0, n)\n    for i := 1; i <= n; i++ {\n        switch {\n        case i%15 == 0:\n"
      "            words = append(words, \"FizzBuzz\")\n"
      "        case i%3 == 0:\n            words = append(words, \"Fizz\")\n"
      "        case i%5 == 0:\n            words = append(words, \"Buzz\")\n        default:\n"
      "            words = append(words, strconv.Itoa(i))\n"
      "        }\n    }\n    return strings.Join(words, \" \")\n}\n",
      "    words := make([]string, 0, n)\n    for i := 1; i <= n; i++ {\n        switch {\n        case i%3 == 0:\n"
      "            words = append(words, \"Fizz\")\n"
      "        case i%5 == 0:\n            words = append(words, \"Buzz\")\n"
      "        default:\n            words = append(words, strconv.Itoa(i))\n        }\n    }\n"
      "    return strings.Join(words, \" \")\n}\n",
      ["\"1 2 Fizz 4 Buzz\", FizzBuzzString(5)", f"\"{FB15}\", FizzBuzzString(15)", "\"1\", FizzBuzzString(1)",
       "\"\", FizzBuzzString(0)"], extra={"imports": ["strconv", "strings"]}),
    P("sum_of_squares", "SumOfSquares", "func SumOfSquares(numbers []int) int",
      [("SumOfSquares([]int{1, 2, 3})", "14")],
      "    total := 0\n    for _, x := range numbers {\n        total += x * x\n    }\n    return total\n}\n",
      "    total := 0\n    for _, x := range numbers {\n        total += x * 2\n    }\n    return total\n}\n",
      ["14, SumOfSquares([]int{1, 2, 3})", "0, SumOfSquares([]int{})", "29, SumOfSquares([]int{-2, 5})"]),
]


def hx_go(i, p):
    imports = p["extra"].get("imports", [])
    block = "import (\n" + "".join(f"    \"{m}\"\n" for m in imports) + ")\n" if imports else ""
    doc = DOC[p["key"]] + "".join(f"\n>>> {c}\n{r}" for c, r in p["examples"])
    doc = "".join(f"// {line}\n" for line in doc.split("\n"))
    prompt = (block + "\n" if block else "") + doc + p["sig"] + " {\n"
    tname = "Test" + p["name"]

    def test(tests):
        body = "".join(f"    assert.Equal({t})\n" for t in tests)
        return f"func {tname}(t *testing.T) {{\n    assert := assert.New(t)\n{body}}}\n"

    return {"task_id": f"Go/{i}", "prompt": prompt, "import": block, "declaration": "\n" + p["sig"] + " {\n",
            "canonical_solution": p["body"], "test": test(p["tests"]),
            "example_test": test(p["tests"][:p["n_example"]]), "test_setup": GO_TEST_SETUP}


# ---------------------------------------------------------------------------------------------------------------
# HumanEval-X: Rust (cargo-less `rustc --test`; declaration carries std `use` lines)
HX_RS = [
    P("add_numbers", "add_numbers", "fn add_numbers(a:i32, b:i32) -> i32", [("add_numbers(2, 3)", "5")],
      "    a + b\n}\n", "    a - b\n}\n",
      ["add_numbers(2, 3), 5", "add_numbers(-4, 4), 0", "add_numbers(0, 0), 0", "add_numbers(100, 23), 123"]),
    P("reverse_words", "reverse_words", "fn reverse_words(text:&str) -> String",
      [("reverse_words(\"hello world\")", "\"world hello\"")],
      "    text.split_whitespace().rev().collect::<Vec<&str>>().join(\" \")\n}\n",
      "    text.split_whitespace().collect::<Vec<&str>>().join(\" \")\n}\n",
      ["reverse_words(\"hello world\"), \"world hello\"", "reverse_words(\"a  b c\"), \"c b a\"",
       "reverse_words(\"one\"), \"one\"", "reverse_words(\"\"), \"\""]),
    P("count_vowels", "count_vowels", "fn count_vowels(text:&str) -> i32", [("count_vowels(\"Hello World\")", "3")],
      "    text.to_lowercase().chars().filter(|c| \"aeiou\".contains(*c)).count() as i32\n}\n",
      "    text.chars().filter(|c| \"aeiou\".contains(*c)).count() as i32\n}\n",
      ["count_vowels(\"Hello World\"), 3", "count_vowels(\"AEIOU xyz\"), 5", "count_vowels(\"rhythm\"), 0",
       "count_vowels(\"\"), 0"]),
    P("largest_element", "largest_element", "fn largest_element(numbers:Vec<i32>) -> i32",
      [("largest_element(vec![1, 5, 3])", "5")],
      "    let mut best = numbers[0];\n    for &x in numbers.iter() {\n"
      "        best = max(best, x);\n    }\n    best\n}\n",
      "    numbers.iter().max().unwrap()\n}\n",  # compile error: &i32 where i32 is declared
      ["largest_element(vec![1, 5, 3]), 5", "largest_element(vec![-4, -2, -9]), -2", "largest_element(vec![7]), 7"]),
    P("is_palindrome", "is_palindrome", "fn is_palindrome(text:&str) -> bool",
      [("is_palindrome(\"level\")", "true"), ("is_palindrome(\"abca\")", "false")],
      "    text.chars().eq(text.chars().rev())\n}\n",
      "    text.chars().next() == text.chars().last()\n}\n",
      ["is_palindrome(\"level\"), true", "is_palindrome(\"abca\"), false", "is_palindrome(\"\"), true",
       "is_palindrome(\"ab\"), false"]),
    P("fizz_buzz_string", "fizz_buzz_string", "fn fizz_buzz_string(n:i32) -> String",
      [("fizz_buzz_string(5)", "\"1 2 Fizz 4 Buzz\"")],
      "    let words: Vec<String> = (1..=n)\n        .map(|i| match (i % 3, i % 5) {\n"
      "            (0, 0) => \"FizzBuzz\".to_string(),\n            (0, _) => \"Fizz\".to_string(),\n"
      "            (_, 0) => \"Buzz\".to_string(),\n            _ => i.to_string(),\n        })\n        .collect();\n"
      "    words.join(\" \")\n}\n",
      "    let words: Vec<String> = (1..=n)\n        .map(|i| match (i % 3, i % 5) {\n"
      "            (0, _) => \"Fizz\".to_string(),\n            (_, 0) => \"Buzz\".to_string(),\n"
      "            _ => i.to_string(),\n        })\n        .collect();\n    words.join(\" \")\n}\n",
      ["fizz_buzz_string(5), \"1 2 Fizz 4 Buzz\"", f"fizz_buzz_string(15), \"{FB15}\"",
       "fizz_buzz_string(1), \"1\"", "fizz_buzz_string(0), \"\""]),
    P("sum_of_squares", "sum_of_squares", "fn sum_of_squares(numbers:Vec<i32>) -> i32",
      [("sum_of_squares(vec![1, 2, 3])", "14")],
      "    numbers.iter().map(|x| x * x).sum()\n}\n", "    numbers.iter().map(|x| x * 2).sum()\n}\n",
      ["sum_of_squares(vec![1, 2, 3]), 14", "sum_of_squares(vec![]), 0", "sum_of_squares(vec![-2, 5]), 29"]),
]
RS_USE = "use std::{cmp::{max, self}, collections::{HashMap, HashSet}, mem::replace};"


def hx_rust(i, p):
    doc = DOC[p["key"]] + "".join(f"\n>>> {c}\n{r}" for c, r in p["examples"])
    doc = "".join(f" {line}\n" for line in doc.split("\n"))
    sig = p["sig"] + "{\n"
    prompt = f"\n/*\n{doc}*/\n{sig}"

    def test(tests):
        body = "".join(f"        assert_eq!({t});\n" for t in tests)
        return (f"\n#[cfg(test)]\nmod tests {{\n    use super::*;\n\n    #[test]\n    fn test_{p['name']}() {{\n"
                f"{body}    }}\n\n}}\n")

    return dict(task_id=f"Rust/{i}", prompt=prompt, declaration=f"\n{RS_USE}\n\n{sig}",
                canonical_solution=p["body"], test=test(p["tests"]), example_test=test(p["tests"][:p["n_example"]]))


HUMANEVALX = {"python": (HX_PY, hx_python), "cpp": (HX_CPP, hx_cpp), "java": (HX_JAVA, hx_java),
              "js": (HX_JS, hx_js), "go": (HX_GO, hx_go), "rust": (HX_RS, hx_rust)}


def wrong_completion(lang, p):
    """The wrong sample replaces the canonical solution, so it closes what the canonical closes."""
    return p["wrong"] + ("    }\n}" if lang == "java" else "") + ("}\n" if lang == "js" else "")


# ---------------------------------------------------------------------------------------------------------------
# MultiPL-E ("reworded" prompts, doctests "transform"). The prompt leaves the function open; the tests of
# cpp / java / rs start by closing it (so the completion is the body only), those of js / go / py do not.
STOP_TOKENS = {
    "cpp": ["\n}"], "java": ["\n    }\n"], "js": ["\nfunction ", "\n/*", "\n//", "\nconsole.log"],
    "go_test.go": ["\nfunc", "struct", "\n// "], "rs": ["\n}"], "py": ["\ndef", "\n#", "\nif", "\nclass"],
}
ML_ORDER = ["add_numbers", "reverse_words", "count_vowels", "largest_element", "is_palindrome", "sum_of_squares"]


def M(sig, examples, body, wrong, tests):
    """tests: (call-args, expected) pairs in the language's literal syntax."""
    return dict(sig=sig, examples=examples, body=body, wrong=wrong, tests=tests)


ML_CPP = {
    "add_numbers": M("long add_numbers(long a, long b)", [("add_numbers((2), (3))", "(5)")],
                     "    return a + b;\n", "    return a - b;\n",
                     [("(2), (3)", "(5)"), ("(-4), (4)", "(0)"), ("(100), (23)", "(123)")]),
    "reverse_words": M("std::string reverse_words(std::string text)",
                       [("reverse_words((\"hello world\"))", "(\"world hello\")")],
                       "    std::istringstream in(text);\n    std::vector<std::string> words;\n    std::string word;\n"
                       "    while (in >> word) words.insert(words.begin(), word);\n    std::string out;\n"
                       "    for (const std::string &w : words) out += (out.empty() ? \"\" : \" \") + w;\n"
                       "    return out;\n",
                       "    return text;\n",
                       [("(\"hello world\")", "(\"world hello\")"), ("(\"a  b c\")", "(\"c b a\")"),
                        ("(\"\")", "(\"\")")]),
    "count_vowels": M("long count_vowels(std::string text)", [("count_vowels((\"Hello World\"))", "(3)")],
                      "    return std::count_if(text.begin(), text.end(), [](char c) {\n"
                      "        return std::string(\"aeiouAEIOU\").find(c) != std::string::npos;\n    });\n",
                      "    return std::count_if(text.begin(), text.end(), [](char c) {\n"
                      "        return std::string(\"aeiou\").find(c) != std::string::npos;\n    });\n",
                      [("(\"Hello World\")", "(3)"), ("(\"AEIOU xyz\")", "(5)"), ("(\"rhythm\")", "(0)")]),
    "largest_element": M("long largest_element(std::vector<long> l)",
                         [("largest_element((std::vector<long>({(long)1, (long)5, (long)3})))", "(5)")],
                         "    return *std::max_element(l.begin(), l.end());\n",
                         "    return *std::min_element(l.begin(), l.end());\n",
                         [("(std::vector<long>({(long)1, (long)5, (long)3}))", "(5)"),
                          ("(std::vector<long>({(long)-4, (long)-2, (long)-9}))", "(-2)"),
                          ("(std::vector<long>({(long)7}))", "(7)")]),
    "is_palindrome": M("bool is_palindrome(std::string text)",
                       [("is_palindrome((\"level\"))", "(true)"), ("is_palindrome((\"abca\"))", "(false)")],
                       "    return std::equal(text.begin(), text.end(), text.rbegin());\n",
                       "    return text.empty() || text.front() == text.back();\n",
                       [("(\"level\")", "(true)"), ("(\"abca\")", "(false)"), ("(\"\")", "(true)")]),
    "sum_of_squares": M("long sum_of_squares(std::vector<long> l)",
                        [("sum_of_squares((std::vector<long>({(long)1, (long)2, (long)3})))", "(14)")],
                        "    long total = 0;\n    for (long x : l) total += x * x;\n    return total;\n",
                        "    long total = 0;\n    for (long x : l) total += x + x;\n    return total;\n",
                        [("(std::vector<long>({(long)1, (long)2, (long)3}))", "(14)"),
                         ("(std::vector<long>())", "(0)"), ("(std::vector<long>({(long)-2, (long)5}))", "(29)")]),
}


def ml_cpp(key, p):
    doc = DOC[key] + "".join(f"\n>>> {c}\n{r}" for c, r in p["examples"])
    prompt = ("#include<assert.h>\n#include<bits/stdc++.h>\n" + "".join(f"// {line}\n" for line in doc.split("\n"))
              + p["sig"] + " {\n")
    asserts = "".join(f"    assert(candidate({a}) == {e});\n" for a, e in p["tests"])
    return prompt, f"}}\nint main() {{\n    auto candidate = {key};\n{asserts}}}\n", p["body"], p["wrong"]


ML_JAVA = {
    "add_numbers": M("public static long addNumbers(long a, long b)", [("addNumbers((2l), (3l))", "(5l)")],
                     "        return a + b;\n", "        return a * b;\n",
                     [("(2l), (3l)", "(5l)"), ("(-4l), (4l)", "(0l)"), ("(100l), (23l)", "(123l)")]),
    "reverse_words": M("public static String reverseWords(String text)",
                       [("reverseWords((\"hello world\"))", "(\"world hello\")")],
                       "        List<String> words = Arrays.stream(text.split(\" \"))\n"
                       "            .filter(w -> !w.isEmpty()).collect(Collectors.toList());\n"
                       "        Collections.reverse(words);\n        return String.join(\" \", words);\n",
                       "        return text.trim();\n",
                       [("(\"hello world\")", "(\"world hello\")"), ("(\"a  b c\")", "(\"c b a\")"),
                        ("(\"\")", "(\"\")")]),
    "count_vowels": M("public static long countVowels(String text)", [("countVowels((\"Hello World\"))", "(3l)")],
                      "        return text.toLowerCase().chars().filter(c -> \"aeiou\".indexOf(c) >= 0).count();\n",
                      "        return text.chars().filter(c -> \"aeiou\".indexOf(c) >= 0).count();\n",
                      [("(\"Hello World\")", "(3l)"), ("(\"AEIOU xyz\")", "(5l)"), ("(\"rhythm\")", "(0l)")]),
    "largest_element": M("public static long largestElement(ArrayList<Long> l)",
                         [("largestElement((new ArrayList<Long>(Arrays.asList((long)1l, (long)5l, (long)3l))))",
                           "(5l)")],
                         "        return Collections.max(l);\n", "        return l.get(0);\n",
                         [("(new ArrayList<Long>(Arrays.asList((long)1l, (long)5l, (long)3l)))", "(5l)"),
                          ("(new ArrayList<Long>(Arrays.asList((long)-4l, (long)-2l, (long)-9l)))", "(-2l)"),
                          ("(new ArrayList<Long>(Arrays.asList((long)7l)))", "(7l)")]),
    "is_palindrome": M("public static boolean isPalindrome(String text)",
                       [("isPalindrome((\"level\"))", "(true)"), ("isPalindrome((\"abca\"))", "(false)")],
                       "        return new StringBuilder(text).reverse().toString().equals(text);\n",
                       "        return text.isEmpty() || text.charAt(0) == text.charAt(text.length() - 1);\n",
                       [("(\"level\")", "(true)"), ("(\"abca\")", "(false)"), ("(\"\")", "(true)")]),
    "sum_of_squares": M("public static long sumOfSquares(ArrayList<Long> l)",
                        [("sumOfSquares((new ArrayList<Long>(Arrays.asList((long)1l, (long)2l, (long)3l))))",
                          "(14l)")],
                        "        long total = 0;\n        for (long x : l) {\n            total += x * x;\n"
                        "        }\n        return total;\n",
                        "        long total = 0;\n        for (long x : l) {\n            total += x + x;\n"
                        "        }\n        return total;\n",
                        [("(new ArrayList<Long>(Arrays.asList((long)1l, (long)2l, (long)3l)))", "(14l)"),
                         ("(new ArrayList<Long>(Arrays.asList()))", "(0l)"),
                         ("(new ArrayList<Long>(Arrays.asList((long)-2l, (long)5l)))", "(29l)")]),
}
JAVA_ML_HEAD = ("import java.util.*;\nimport java.lang.reflect.*;\nimport org.javatuples.*;\nimport java.security.*;\n"
                "import java.math.*;\nimport java.io.*;\nimport java.util.stream.*;\nclass Problem {\n")


def camel(key):
    head, *rest = key.split("_")
    return head + "".join(w.title() for w in rest)


def ml_java(key, p):
    doc = DOC[key] + "".join(f"\n>>> {c}\n{r}" for c, r in p["examples"])
    prompt = JAVA_ML_HEAD + "".join(f"    // {line}\n" for line in doc.split("\n")) + f"    {p['sig']} {{\n"
    name = camel(key)

    def check(a, e):
        if e.startswith("(\""):
            return f"    assert({name}({a}).equals({e}));\n"
        return f"    assert({name}({a}) == {e});\n"

    tests = ("    }\n    public static void main(String[] args) {\n" + "".join(check(a, e) for a, e in p["tests"])
             + "    }\n\n}\n")
    return prompt, tests, p["body"], p["wrong"]


ML_JS = {
    "add_numbers": M("function add_numbers(a, b)", [("add_numbers(2, 3)", "5")],
                     "  return a + b;\n}\n", "  return a * b;\n}\n",
                     [("2, 3", "5"), ("-4, 4", "0"), ("100, 23", "123")]),
    "reverse_words": M("function reverse_words(text)", [("reverse_words(\"hello world\")", "\"world hello\"")],
                       "  return text.split(\" \").filter((w) => w !== \"\").reverse().join(\" \");\n}\n",
                       "  return text.split(\" \").reverse().join(\" \");\n}\n",
                       [("\"hello world\"", "\"world hello\""), ("\"a  b c\"", "\"c b a\""), ("\"\"", "\"\"")]),
    "count_vowels": M("function count_vowels(text)", [("count_vowels(\"Hello World\")", "3")],
                      "  return (text.match(/[aeiou]/gi) || []).length;\n}\n",
                      "  return (text.match(/[aeiou]/g) || []).length;\n}\n",
                      [("\"Hello World\"", "3"), ("\"AEIOU xyz\"", "5"), ("\"rhythm\"", "0")]),
    "largest_element": M("function largest_element(l)", [("largest_element([1, 5, 3])", "5")],
                         "  return l.reduce((best, x) => (x > best ? x : best));\n}\n",
                         "  return l.reduce((best, x) => (x < best ? x : best));\n}\n",
                         [("[1, 5, 3]", "5"), ("[-4, -2, -9]", "-2"), ("[7]", "7")]),
    "is_palindrome": M("function is_palindrome(text)",
                       [("is_palindrome(\"level\")", "true"), ("is_palindrome(\"abca\")", "false")],
                       "  return text === text.split(\"\").reverse().join(\"\");\n}\n",
                       "  return text.length === 0 || text[0] === text[text.length - 1];\n}\n",
                       [("\"level\"", "true"), ("\"abca\"", "false"), ("\"\"", "true")]),
    "sum_of_squares": M("function sum_of_squares(l)", [("sum_of_squares([1, 2, 3])", "14")],
                        "  let total = 0;\n  for (const x of l) {\n    total += x * x;\n  }\n  return total;\n}\n",
                        "  let total = 0;\n  for (const x of l) {\n    total += x + x;\n  }\n  return total;\n}\n",
                        [("[1, 2, 3]", "14"), ("[]", "0"), ("[-2, 5]", "29")]),
}


def ml_js(key, p):
    doc = DOC[key] + "".join(f"\n>>> {c}\n{r}" for c, r in p["examples"])
    prompt = "".join(f"//{line}\n" if i == 0 else f"// {line}\n" for i, line in enumerate(doc.split("\n")))
    prompt += p["sig"] + "{\n"
    asserts = "".join(f"  assert.deepEqual(candidate({a}),{e});\n" for a, e in p["tests"])
    tests = (f"\nconst assert = require('node:assert');\n\n\nfunction test() {{\n  let candidate = {key};\n"
             f"{asserts}}}\n\ntest();")
    return prompt, tests, p["body"], p["wrong"]


GO_WORDS = ("    words := []string{}\n    word := \"\"\n    for _, r := range text {\n        if r == ' ' {\n"
            "            if word != \"\" {\n                words = append(words, word)\n            }\n"
            "            word = \"\"\n        } else {\n            word += string(r)\n        }\n    }\n"
            "    if word != \"\" {\n        words = append(words, word)\n    }\n")
ML_GO = {
    "add_numbers": M("func add_numbers(a int, b int) int", [("add_numbers(2, 3)", "5")],
                     "    return a + b\n}\n", "    return a - b\n}\n",
                     [("2, 3", "5"), ("-4, 4", "0"), ("100, 23", "123")]),
    "reverse_words": M("func reverse_words(text string) string",
                       [("reverse_words(\"hello world\")", "\"world hello\"")],
                       GO_WORDS + "    result := \"\"\n    for i := len(words) - 1; i >= 0; i-- {\n"
                       "        if result != \"\" {\n            result += \" \"\n"
                       "        }\n        result += words[i]\n"
                       "    }\n    return result\n}\n",
                       GO_WORDS + "    result := \"\"\n    for _, w := range words {\n        if result != \"\" {\n"
                       "            result += \" \"\n        }\n        result += w\n    }\n    return result\n}\n",
                       [("\"hello world\"", "\"world hello\""), ("\"a  b c\"", "\"c b a\""), ("\"\"", "\"\"")]),
    "count_vowels": M("func count_vowels(text string) int", [("count_vowels(\"Hello World\")", "3")],
                      "    count := 0\n    for _, r := range text {\n        switch r {\n"
                      "        case 'a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U':\n            count++\n        }\n"
                      "    }\n    return count\n}\n",
                      "    count := 0\n    for _, r := range text {\n        switch r {\n"
                      "        case 'a', 'e', 'i', 'o', 'u':\n"
                      "            count++\n        }\n    }\n    return count\n}\n",
                      [("\"Hello World\"", "3"), ("\"AEIOU xyz\"", "5"), ("\"rhythm\"", "0")]),
    "largest_element": M("func largest_element(l []int) int", [("largest_element([]int{1, 5, 3})", "5")],
                         "    best := l[0]\n    for _, x := range l {\n        if x > best {\n            best = x\n"
                         "        }\n    }\n    return best\n}\n",
                         "    return l[0]\n}\n",
                         [("[]int{1, 5, 3}", "5"), ("[]int{-4, -2, -9}", "-2"), ("[]int{7}", "7")]),
    "is_palindrome": M("func is_palindrome(text string) bool",
                       [("is_palindrome(\"level\")", "true"), ("is_palindrome(\"abca\")", "false")],
                       "    for i, j := 0, len(text)-1; i < j; i, j = i+1, j-1 {\n        if text[i] != text[j] {\n"
                       "            return false\n        }\n    }\n    return true\n}\n",
                       "    return len(text) == 0 || text[0] == text[len(text)-1]\n}\n",
                       [("\"level\"", "true"), ("\"abca\"", "false"), ("\"\"", "true")]),
    "sum_of_squares": M("func sum_of_squares(l []int) int", [("sum_of_squares([]int{1, 2, 3})", "14")],
                        "    total := 0\n    for _, x := range l {\n"
                        "        total += x * x\n    }\n    return total\n}\n",
                        "    total := 0\n    for _, x := range l {\n"
                        "        total += x + x\n    }\n    return total\n}\n",
                        [("[]int{1, 2, 3}", "14"), ("[]int{}", "0"), ("[]int{-2, 5}", "29")]),
}


def ml_go(key, p):
    doc = DOC[key] + "".join(f"\n>>> {c}\n{r}" for c, r in p["examples"])
    prompt = (f"package {key}_test\n\nimport (\n    \"testing\"\n    \"fmt\"\n)\n\n"
              + "".join(f"// {line}\n" for line in doc.split("\n")) + p["sig"] + " {\n")
    cases = "".join(f"     {{ actual: candidate({a}), expected: {e} }},\n" for a, e in p["tests"])
    test_name = "Test" + "_".join(w.title() for w in key.split("_"))
    tests = (f"func {test_name}(t *testing.T) {{\n  candidate := {key}\n\ttype test struct {{\n"
             "\t\tactual   interface{}\n\t\texpected interface{}\n\t}\n"
             f"   tests := []test{{\n{cases}   }}\n\n"
             "\tfor i, tc := range tests {\n\t\tt.Run(fmt.Sprintf(\"test num % d\", i), func(t *testing.T) {\n"
             "\t\t\tif fmt.Sprintf(\"%v\", tc.actual) != fmt.Sprintf(\"%v\", tc.expected) {\n"
             "\t\t\t\tt.Errorf(\"expected '%s', got '%s'\", tc.expected, tc.actual)\n\t\t\t}\n\t\t})\n\t}\n}\n")
    return prompt, tests, p["body"], p["wrong"]


ML_RS = {
    "add_numbers": M("fn add_numbers(a: isize, b: isize) -> isize", [("add_numbers(2, 3)", "5")],
                     "    a + b\n", "    a * b\n", [("2, 3", "5"), ("-4, 4", "0"), ("100, 23", "123")]),
    "reverse_words": M("fn reverse_words(text: String) -> String",
                       [("reverse_words(String::from(\"hello world\"))", "String::from(\"world hello\")")],
                       "    let mut words: Vec<&str> = text.split_whitespace().collect();\n    words.reverse();\n"
                       "    words.join(\" \")\n",
                       "    text.split_whitespace().collect::<Vec<&str>>().join(\" \")\n",
                       [("String::from(\"hello world\")", "String::from(\"world hello\")"),
                        ("String::from(\"a  b c\")", "String::from(\"c b a\")"),
                        ("String::from(\"\")", "String::from(\"\")")]),
    "count_vowels": M("fn count_vowels(text: String) -> isize",
                      [("count_vowels(String::from(\"Hello World\"))", "3")],
                      "    text.chars().filter(|c| \"aeiouAEIOU\".contains(*c)).count() as isize\n",
                      "    text.chars().filter(|c| \"aeiou\".contains(*c)).count() as isize\n",
                      [("String::from(\"Hello World\")", "3"), ("String::from(\"AEIOU xyz\")", "5"),
                       ("String::from(\"rhythm\")", "0")]),
    "largest_element": M("fn largest_element(l: Vec<isize>) -> isize", [("largest_element(vec![1, 5, 3])", "5")],
                         "    *l.iter().max().unwrap()\n", "    *l.iter().min().unwrap()\n",
                         [("vec![1, 5, 3]", "5"), ("vec![-4, -2, -9]", "-2"), ("vec![7]", "7")]),
    "is_palindrome": M("fn is_palindrome(text: String) -> bool",
                       [("is_palindrome(String::from(\"level\"))", "true"),
                        ("is_palindrome(String::from(\"abca\"))", "false")],
                       "    text.chars().rev().collect::<String>() == text\n",
                       "    text.chars().next() == text.chars().last()\n",
                       [("String::from(\"level\")", "true"), ("String::from(\"abca\")", "false"),
                        ("String::from(\"\")", "true")]),
    "sum_of_squares": M("fn sum_of_squares(l: Vec<isize>) -> isize", [("sum_of_squares(vec![1, 2, 3])", "14")],
                        "    l.iter().map(|x| x * x).sum()\n", "    l.iter().map(|x| x + x).sum()\n",
                        [("vec![1, 2, 3]", "14"), ("vec![]", "0"), ("vec![-2, 5]", "29")]),
}


def ml_rs(key, p):
    doc = DOC[key] + "".join(f"\n>>> {c}\n{r}" for c, r in p["examples"])
    prompt = "".join(f"/// {line}\n" for line in doc.split("\n")) + p["sig"] + " {\n"
    asserts = "".join(f"    assert_eq!(candidate({a}), {e});\n" for a, e in p["tests"])
    return prompt, f"}}\n\nfn main() {{\n    let candidate = {key};\n{asserts}}}\n", p["body"], p["wrong"]


ML_PY = {
    "add_numbers": M("def add_numbers(a: int, b: int) -> int:", [("add_numbers(2, 3)", "5")],
                     "    return a + b\n", "    return a * b\n", [("2, 3", "5"), ("-4, 4", "0"), ("100, 23", "123")]),
    "reverse_words": M("def reverse_words(text: str) -> str:", [("reverse_words('hello world')", "'world hello'")],
                       "    words = text.split()\n    words.reverse()\n    return ' '.join(words)\n",
                       "    return ' '.join(text.split(' ')[::-1])\n",
                       [("'hello world'", "'world hello'"), ("'a  b c'", "'c b a'"), ("''", "''")]),
    "count_vowels": M("def count_vowels(text: str) -> int:", [("count_vowels('Hello World')", "3")],
                      "    return len([ch for ch in text if ch.lower() in 'aeiou'])\n",
                      "    return len([ch for ch in text if ch in 'aeiou'])\n",
                      [("'Hello World'", "3"), ("'AEIOU xyz'", "5"), ("'rhythm'", "0")]),
    "largest_element": M("def largest_element(l: List[int]) -> int:", [("largest_element([1, 5, 3])", "5")],
                         "    return max(l)\n", "    return sorted(l)[0]\n",
                         [("[1, 5, 3]", "5"), ("[-4, -2, -9]", "-2"), ("[7]", "7")]),
    "is_palindrome": M("def is_palindrome(text: str) -> bool:",
                       [("is_palindrome('level')", "True"), ("is_palindrome('abca')", "False")],
                       "    return all(text[i] == text[-1 - i] for i in range(len(text) // 2))\n",
                       "    return text[:1] == text[-1:]\n",
                       [("'level'", "True"), ("'abca'", "False"), ("''", "True")]),
    "sum_of_squares": M("def sum_of_squares(l: List[int]) -> int:", [("sum_of_squares([1, 2, 3])", "14")],
                        "    return sum(x ** 2 for x in l)\n", "    return sum(x + x for x in l)\n",
                        [("[1, 2, 3]", "14"), ("[]", "0"), ("[-2, 5]", "29")]),
}


def ml_py(key, p):
    doc = DOC[key].replace("true", "True") + "".join(f"\n>>> {c}\n{r}" for c, r in p["examples"])
    head = "from typing import List\n\n" if "List[" in p["sig"] else ""
    prompt = head + p["sig"] + "\n    \"\"\"\n" + "".join(f"    {line}\n" for line in doc.split("\n")) + "    \"\"\"\n"
    asserts = "".join(f"    assert candidate({a}) == {e}\n" for a, e in p["tests"])
    return prompt, f"def check(candidate):\n{asserts}\ndef test_check():\n    check({key})\n\ntest_check()\n", \
        p["body"], p["wrong"]


MULTIPLE = {"cpp": (ML_CPP, ml_cpp), "java": (ML_JAVA, ml_java), "js": (ML_JS, ml_js),
            "go_test.go": (ML_GO, ml_go), "rs": (ML_RS, ml_rs), "py": (ML_PY, ml_py)}


# ---------------------------------------------------------------------------------------------------------------
# MBPP: ids 1-10 are the few-shot pool (2, 3, 4 the standard 3-shot examples), 11-510 the test split,
# 511-600 validation. (task_id, text, code, test_list, test_setup_code, wrong code or None)
MBPP = [
    (1, "Write a function to find the area of a square given the length of its side.",
     "def square_area(side):\n    return side * side",
     ["assert square_area(4) == 16", "assert square_area(1) == 1", "assert square_area(0) == 0"], "", None),
    (2, "Write a function to find the elements shared by two lists, returned sorted and without duplicates.",
     "def shared_elements(first, second):\n    return sorted(set(first) & set(second))",
     ["assert shared_elements([1, 2, 3], [2, 3, 4]) == [2, 3]", "assert shared_elements([5, 5, 1], [5]) == [5]",
      "assert shared_elements([1], [2]) == []"], "", None),
    (3, "Write a python function to check whether a number is even.",
     "def is_even(n):\n    return n % 2 == 0",
     ["assert is_even(4) == True", "assert is_even(7) == False", "assert is_even(0) == True"], "", None),
    (4, "Write a function to capitalize the first letter of every word in a sentence.",
     "def capitalize_words(text):\n    return ' '.join(word[:1].upper() + word[1:] for word in text.split(' '))",
     ["assert capitalize_words('hello big world') == 'Hello Big World'", "assert capitalize_words('a') == 'A'",
      "assert capitalize_words('') == ''"], "", None),
    (5, "Write a function to compute the product of all numbers in a list.",
     "def list_product(nums):\n    product = 1\n    for x in nums:\n        product *= x\n    return product",
     ["assert list_product([2, 3, 4]) == 24", "assert list_product([]) == 1", "assert list_product([5, 0]) == 0"],
     "", None),
    (6, "Write a python function to count how many times a character occurs in a string.",
     "def count_char(text, ch):\n    return sum(1 for c in text if c == ch)",
     ["assert count_char('banana', 'a') == 3", "assert count_char('banana', 'z') == 0",
      "assert count_char('', 'a') == 0"], "", None),
    (7, "Write a function to find the smallest of three numbers.",
     "def min_of_three(a, b, c):\n    smallest = a\n    if b < smallest:\n        smallest = b\n"
     "    if c < smallest:\n        smallest = c\n    return smallest",
     ["assert min_of_three(3, 1, 2) == 1", "assert min_of_three(-5, 0, 5) == -5", "assert min_of_three(2, 2, 2) == 2"],
     "", None),
    (8, "Write a function to remove all spaces from a string.",
     "def remove_spaces(text):\n    return text.replace(' ', '')",
     ["assert remove_spaces('a b  c') == 'abc'", "assert remove_spaces('none') == 'none'",
      "assert remove_spaces('   ') == ''"], "", None),
    (9, "Write a function to convert degrees Celsius to degrees Fahrenheit.",
     "def celsius_to_fahrenheit(c):\n    return c * 9 / 5 + 32",
     ["assert celsius_to_fahrenheit(100) == 212", "assert celsius_to_fahrenheit(0) == 32",
      "assert celsius_to_fahrenheit(-40) == -40"], "", None),
    (10, "Write a python function to find the last digit of a non-negative integer.",
     "def last_digit(n):\n    return n % 10",
     ["assert last_digit(123) == 3", "assert last_digit(0) == 0", "assert last_digit(7) == 7"], "", None),
    (11, "Write a python function to find the sum of the digits of a non-negative integer.",
     "def digit_sum(n):\n    return sum(int(d) for d in str(n))",
     ["assert digit_sum(1234) == 10", "assert digit_sum(0) == 0", "assert digit_sum(909) == 18"], "",
     "def digit_sum(n):\n    return len(str(n))"),
    (12, "Write a function to count the words in a sentence separated by whitespace.",
     "def count_words(text):\n    return len(text.split())",
     ["assert count_words('the quick brown fox') == 4", "assert count_words('  spaced   out ') == 2",
      "assert count_words('') == 0"], "",
     "def count_words(text):\n    return len(text.split(' '))"),
    (13, "Write a function to find the second largest distinct value in a list.",
     "def second_largest(nums):\n    return sorted(set(nums))[-2]",
     ["assert second_largest([4, 1, 3, 2]) == 3", "assert second_largest([5, 5, 4]) == 4",
      "assert second_largest([-1, -2]) == -2"], "",
     "def second_largest(nums):\n    return sorted(nums)[-2]"),
    (14, "Write a function to merge two dictionaries; on shared keys the value of the second one wins.",
     "def merge_dicts(first, second):\n    merged = dict(first)\n    merged.update(second)\n    return merged",
     ["assert merge_dicts({'a': 1}, {'b': 2}) == {'a': 1, 'b': 2}",
      "assert merge_dicts({'a': 1}, {'a': 3}) == {'a': 3}", "assert merge_dicts({}, {}) == {}"], "",
     "def merge_dicts(first, second):\n    merged = dict(second)\n    merged.update(first)\n    return merged"),
    (15, "Write a function to find the n-th triangular number.",
     "def triangular_number(n):\n    return n * (n + 1) // 2",
     ["assert triangular_number(1) == 1", "assert triangular_number(4) == 10", "assert triangular_number(10) == 55"],
     "", "def triangular_number(n):\n    return n * n"),
    (16, "Write a function to check whether a list is sorted in non-decreasing order.",
     "def is_sorted(items):\n    return all(a <= b for a, b in zip(items, items[1:]))",
     ["assert is_sorted([1, 2, 2, 5]) == True", "assert is_sorted([3, 1]) == False", "assert is_sorted([]) == True"],
     "", "def is_sorted(items):\n    return all(a < b for a, b in zip(items, items[1:]))"),
    (17, "Write a function to return the running totals of a list of numbers.",
     "def running_totals(nums):\n    totals = []\n    current = 0\n    for x in nums:\n        current += x\n"
     "        totals.append(current)\n    return totals",
     ["assert running_totals(sample) == [3, 4, 8, 9, 14]", "assert running_totals([]) == []",
      "assert running_totals([2, -2]) == [2, 0]"], "sample = [3, 1, 4, 1, 5]",
     "def running_totals(nums):\n    return [sum(nums[:i]) for i in range(len(nums))]"),
    (511, "Write a function to find the greatest common divisor of a list of positive integers.",
     "import math\ndef list_gcd(nums):\n    result = 0\n    for x in nums:\n        result = math.gcd(result, x)\n"
     "    return result",
     ["assert list_gcd([12, 18, 24]) == 6", "assert list_gcd([7]) == 7", "assert list_gcd([5, 9]) == 1"], "", None),
    (512, "Write a function to flatten a list of lists into one list.",
     "def flatten(lists):\n    return [x for inner in lists for x in inner]",
     ["assert flatten([[1, 2], [3]]) == [1, 2, 3]", "assert flatten([]) == []",
      "assert flatten([[], ['a']]) == ['a']"], "", None),
]


# ---------------------------------------------------------------------------------------------------------------
def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def humanevalx_files():
    for lang, (problems, build) in HUMANEVALX.items():
        rows, wrong = [], []
        for i, p in enumerate(problems):
            rows.append(build(i, p))
            wrong.append({"task_id": rows[-1]["task_id"], "completion": wrong_completion(lang, p)})
        write_jsonl(HERE / "humanevalx" / f"{lang}.jsonl", rows)
        write_jsonl(HERE / "humanevalx" / f"{lang}_wrong.jsonl", wrong)


def multiple_files():
    for code, (problems, build) in MULTIPLE.items():
        rows, canonical, wrong = [], [], []
        for i, key in enumerate(ML_ORDER):
            prompt, tests, body, bad = build(key, problems[key])
            assert not any(stop in body for stop in STOP_TOKENS[code]), (code, key)  # a model's cut would keep it
            name = f"HumanEval_{i}_{key}"
            rows.append({"name": name, "language": code, "prompt": prompt, "doctests": "transform",
                         "original": f"datasets/originals/{name}.py", "prompt_terminology": "reworded",
                         "tests": tests, "stop_tokens": STOP_TOKENS[code]})
            canonical.append({"task_id": name, "completion": body})
            wrong.append({"task_id": name, "completion": bad})
        write_jsonl(HERE / "multiple" / f"{code}.jsonl", rows)
        write_jsonl(HERE / "multiple" / f"{code}_canonical.jsonl", canonical)
        write_jsonl(HERE / "multiple" / f"{code}_wrong.jsonl", wrong)


def mbpp_files():
    rows = [{"task_id": tid, "text": text, "code": code, "test_list": tests, "test_setup_code": setup,
             "challenge_test_list": []} for tid, text, code, tests, setup, _ in MBPP]
    write_jsonl(HERE / "mbpp" / "mbpp.jsonl", rows)
    write_jsonl(HERE / "mbpp" / "mbpp_wrong.jsonl",
                [{"task_id": tid, "completion": bad} for tid, *_, bad in MBPP if bad is not None])


if __name__ == "__main__":
    humanevalx_files()
    multiple_files()
    mbpp_files()
