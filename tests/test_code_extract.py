"""Post-processing of model output for brace languages (C++, Java, JavaScript, Go, Rust), on answers shaped like
what completion and chat models produce: prose around fenced code, a `main`/usage example added after the
function, the signature restated or a body only, braces inside literals and comments, answers cut short."""
import pytest

from mftcoder.eval.code_extract import (brace_cut, closes_prompt, code_mask, completion_from_chat,
                                        completion_from_output, cut_at_stops, fenced_blocks, function_name,
                                        open_depth)

# HumanEval-X-shaped prompts (doc comments with braces in them, Rust's `use std::{...}` lines).
CPP = ("/*\nReturn the vector sorted ascending.\n>>> sort_array({5, 2, 3})\n{2, 3, 5}\n*/\n"
       "#include<stdio.h>\n#include<vector>\n#include<algorithm>\nusing namespace std;\n"
       "vector<int> sort_array(vector<int> arr){\n")
JAVA = ("import java.util.*;\nimport java.lang.*;\n\nclass Solution {\n    /**\n    Check if in given list of numbers, "
        "are any two numbers closer to each other than\n    given threshold.\n"
        "    >>> hasCloseElements(Arrays.asList(1.0, 2.0, 3.0), 0.5)\n    false\n     */\n"
        "    public boolean hasCloseElements(List<Double> numbers, double threshold) {\n")
JS = ("/* Check if in given list of numbers, are any two numbers closer to each other than\n  given threshold.\n"
      "  >>> hasCloseElements([1.0, 2.0, 3.0], 0.5)\n  false\n  */\nconst hasCloseElements = (numbers, threshold) => {\n")
GO = ('import (\n    "math"\n)\n\n// Check if in given list of numbers, are any two numbers closer to each other than\n'
      "// given threshold. >>> HasCloseElements([]float64{1.0, 2.0, 3.0}, 0.5) false\n"
      "func HasCloseElements(numbers []float64, threshold float64) bool {\n")
GO_IFACE = ("// Filter given list of any values only for integers\nfunc FilterIntegers(values []interface{}) []int {\n")
RUST = ("\n/*\n Check if in given list of numbers, are any two numbers closer to each other than\n    given threshold.\n*/\n"
        "use std::{slice::Iter, cmp::{max, self}, mem::replace, collections::{HashSet, HashMap}, ops::Index};\n"
        "use std::any::{Any, TypeId};\n\nfn has_close_elements(numbers:Vec<f32>, threshold: f32) -> bool{\n")
RUST_LIFETIME = "/// The longer of two strings.\nfn longest<'a>(x: &'a str, y: &'a str) -> &'a str {\n"

CPP_BODY = "    sort(arr.begin(), arr.end());\n    return arr;\n}\n"
JAVA_BODY = ("        for (int i = 0; i < numbers.size(); i++) {\n"
             "            for (int j = i + 1; j < numbers.size(); j++) {\n"
             "                if (Math.abs(numbers.get(i) - numbers.get(j)) < threshold) return true;\n"
             "            }\n        }\n        return false;\n    }\n")
JS_BODY = ("  for (let i = 0; i < numbers.length; i++) {\n    for (let j = i + 1; j < numbers.length; j++) {\n"
           "      if (Math.abs(numbers[i] - numbers[j]) < threshold) { return true; }\n    }\n  }\n  return false;\n}\n")
GO_BODY = ("    for i := 0; i < len(numbers); i++ {\n        for j := i + 1; j < len(numbers); j++ {\n"
           "            if math.Abs(numbers[i]-numbers[j]) < threshold {\n                return true\n            }\n"
           "        }\n    }\n    return false\n}\n")
RUST_BODY = ("    for i in 0..numbers.len() {\n        for j in (i + 1)..numbers.len() {\n"
             "            if (numbers[i] - numbers[j]).abs() < threshold { return true; }\n        }\n    }\n"
             "    false\n}\n")

# (id, lang, prompt, kind, raw model output, exact completion)
CASES = [
    # ------------------------------------------------------------------------------------------------ C++
    ("cpp-completion-adds-main", "cpp", CPP, "completion",
     CPP_BODY + "\nint main(){\n    vector<int> v = sort_array({3, 1});\n    printf(\"%d\\n\", v[0]);\n}\n",
     CPP_BODY),
    ("cpp-completion-braces-in-literals", "cpp", CPP, "completion",
     "    // a stray } in a comment\n    const char* s = \"}}\";\n    char c = '}';\n    /* { */\n"
     "    if (arr.empty()) { return arr; }\n" + CPP_BODY + "int main() { return 0; }\n",
     "    // a stray } in a comment\n    const char* s = \"}}\";\n    char c = '}';\n    /* { */\n"
     "    if (arr.empty()) { return arr; }\n" + CPP_BODY),
    ("cpp-chat-prose-fence-main", "cpp", CPP, "chat",
     "Here's a C++ solution that sorts the vector:\n\n```cpp\n#include <vector>\n#include <algorithm>\n"
     "using namespace std;\n\nvector<int> sort_array(vector<int> arr) {\n" + CPP_BODY +
     "\nint main() {\n    vector<int> v = sort_array({5, 2, 3});\n    for (int x : v) printf(\"%d \", x);\n"
     "    return 0;\n}\n```\n\nThe function uses `std::sort`, which runs in O(n log n).",
     "\n" + CPP_BODY),
    ("cpp-chat-body-only", "cpp", CPP, "chat",
     "```cpp\n    sort(arr.begin(), arr.end());\n    return arr;\n```\n",
     CPP_BODY),
    ("cpp-chat-second-block-defines", "cpp", CPP, "chat",
     "First include the header:\n```c++\n#include <algorithm>\n```\nThen:\n```C++\nvector<int> sort_array(vector<int> arr)\n{\n"
     "    std::sort(arr.begin(), arr.end()); // keeps {duplicates}\n    return arr;\n}\n```\n",
     "\n    std::sort(arr.begin(), arr.end()); // keeps {duplicates}\n    return arr;\n}\n"),
    ("cpp-chat-in-class", "cpp", CPP, "chat",
     "```cpp\nclass Solution {\npublic:\n    vector<int> sort_array(vector<int> arr) {\n        sort(arr.begin(), arr.end());\n"
     "        return arr;\n    }\n};\n```",
     "\n        sort(arr.begin(), arr.end());\n        return arr;\n    }\n"),
    ("cpp-chat-unclosed-fence", "cpp", CPP, "chat",
     "```cpp\nvector<int> sort_array(vector<int> arr){\n    for (int i = 0; i < arr.size(); i++) {\n        for (int j = i + 1",
     "\n    for (int i = 0; i < arr.size(); i++) {\n        for (int j = i + 1\n}\n}\n"),
    # ----------------------------------------------------------------------------------------------- Java
    ("java-completion-adds-main-class", "java", JAVA, "completion",
     JAVA_BODY + "}\n\npublic class Main {\n    public static void main(String[] args) {\n"
     "        System.out.println(new Solution().hasCloseElements(Arrays.asList(1.0, 2.0), 0.5));\n    }\n}\n",
     JAVA_BODY + "}\n"),
    ("java-chat-helper-after-entry", "java", JAVA, "chat",
     "Sort a copy, then compare neighbours:\n\n```java\nimport java.util.*;\n\nclass Solution {\n"
     "    public boolean hasCloseElements(List<Double> numbers, double threshold) {\n"
     "        List<Double> sorted = sortedCopy(numbers);\n        for (int i = 1; i < sorted.size(); i++) {\n"
     "            if (sorted.get(i) - sorted.get(i - 1) < threshold) {\n                return true;\n            }\n"
     "        }\n        return false;\n    }\n\n    private List<Double> sortedCopy(List<Double> xs) {\n"
     "        List<Double> copy = new ArrayList<>(xs);\n        Collections.sort(copy);\n        return copy;\n    }\n}\n\n"
     "public class Main {\n    public static void main(String[] args) {\n"
     "        System.out.println(new Solution().hasCloseElements(Arrays.asList(1.0, 2.8, 3.0), 0.3));\n    }\n}\n```\n"
     "This runs in O(n log n).",
     "\n        List<Double> sorted = sortedCopy(numbers);\n        for (int i = 1; i < sorted.size(); i++) {\n"
     "            if (sorted.get(i) - sorted.get(i - 1) < threshold) {\n                return true;\n            }\n"
     "        }\n        return false;\n    }\n\n    private List<Double> sortedCopy(List<Double> xs) {\n"
     "        List<Double> copy = new ArrayList<>(xs);\n        Collections.sort(copy);\n        return copy;\n    }\n}\n"),
    ("java-chat-bare-method-literals", "java", JAVA, "chat",
     "```java\npublic boolean hasCloseElements(List<Double> numbers, double threshold) {\n"
     "    String open = \"{\"; char close = '}'; // } in a comment\n" + JAVA_BODY.replace("        ", "    ", 1)
     + "```\n",
     "\n    String open = \"{\"; char close = '}'; // } in a comment\n" + JAVA_BODY.replace("        ", "    ", 1)
     + "}\n"),
    ("java-chat-main-inside-solution", "java", JAVA, "chat",
     "```Java\npublic class Solution {\n    public boolean hasCloseElements(List<Double> numbers, double threshold) {\n"
     + JAVA_BODY + "    public static void main(String[] args) {\n        System.out.println(\"ok }\");\n    }\n}\n```",
     "\n" + JAVA_BODY + "    public static void main(String[] args) {\n        System.out.println(\"ok }\");\n    }\n}\n"),
    # ----------------------------------------------------------------------------------------- JavaScript
    ("js-completion-console-log", "js", JS, "completion",
     JS_BODY + "\nconsole.log(hasCloseElements([1.0, 2.0, 3.9], 0.3));\n",
     JS_BODY),
    ("js-completion-template-literals", "js", JS, "completion",
     "  const msg = `pairs ${numbers.map(n => `{${n}}`).join(', ')} }`;\n  if (msg.includes('}')) { }\n"
     + JS_BODY + "module.exports = hasCloseElements;\n",
     "  const msg = `pairs ${numbers.map(n => `{${n}}`).join(', ')} }`;\n  if (msg.includes('}')) { }\n" + JS_BODY),
    ("js-chat-function-declaration", "js", JS, "chat",
     "You can solve it with two loops:\n\n```javascript\nfunction hasCloseElements(numbers, threshold) {\n" + JS_BODY
     + "\n// Example usage:\nconsole.log(hasCloseElements([1.0, 2.8, 3.0], 0.3)); // true\n```",
     "\n" + JS_BODY),
    ("js-chat-arrow-restated-other-fences", "js", JS, "chat",
     "Save it and run:\n```bash\nnode close.js { }\n```\n```js\nconst hasCloseElements = (numbers, threshold) => {\n"
     + JS_BODY + "};\n```\n",
     "\n" + JS_BODY),
    # ------------------------------------------------------------------------------------------------- Go
    ("go-completion-adds-main", "go", GO, "completion",
     GO_BODY + "\nfunc main() {\n    fmt.Println(HasCloseElements([]float64{1.0, 2.0}, 0.5))\n}\n",
     GO_BODY),
    ("go-completion-raw-string-rune", "go", GO, "completion",
     "    pattern := `}{}`\n    r := '}'\n    _, _ = pattern, r\n" + GO_BODY + "func helper() {}\n",
     "    pattern := `}{}`\n    r := '}'\n    _, _ = pattern, r\n" + GO_BODY),
    ("go-chat-package-and-main", "go", GO, "chat",
     "```go\npackage main\n\nimport (\n    \"fmt\"\n    \"math\"\n)\n\n"
     "func HasCloseElements(numbers []float64, threshold float64) bool {\n" + GO_BODY
     + "\nfunc main() {\n    fmt.Println(HasCloseElements([]float64{1.0, 2.8, 3.0}, 0.3))\n}\n```\nOutput: `true`.",
     "\n" + GO_BODY),
    ("go-chat-interface-params", "go", GO_IFACE, "chat",
     "```golang\nfunc FilterIntegers(values []interface{}) []int {\n    result := []int{}\n"
     "    for _, v := range values {\n        if i, ok := v.(int); ok {\n            result = append(result, i)\n"
     "        }\n    }\n    return result\n}\n```",
     "\n    result := []int{}\n    for _, v := range values {\n        if i, ok := v.(int); ok {\n"
     "            result = append(result, i)\n        }\n    }\n    return result\n}\n"),
    # ----------------------------------------------------------------------------------------------- Rust
    ("rust-completion-adds-main", "rust", RUST, "completion",
     RUST_BODY + "\nfn main() {\n    println!(\"{}\", has_close_elements(vec![1.0, 2.0], 0.5));\n}\n",
     RUST_BODY),
    ("rust-completion-raw-strings-lifetimes", "rust", RUST_LIFETIME, "completion",
     "    let _raw = r#\"}\"}\"#;\n    let _bytes = b\"}\";\n    let _c = '}';\n    let _e = '\\u{7d}';\n"
     "    'outer: loop { break 'outer; }\n    if x.len() >= y.len() { x } else { y }\n}\n\nfn main() {}\n",
     "    let _raw = r#\"}\"}\"#;\n    let _bytes = b\"}\";\n    let _c = '}';\n    let _e = '\\u{7d}';\n"
     "    'outer: loop { break 'outer; }\n    if x.len() >= y.len() { x } else { y }\n}\n"),
    ("rust-chat-fence-and-main", "rust", RUST, "chat",
     "Here is the function:\n\n```rust\nfn has_close_elements(numbers: Vec<f32>, threshold: f32) -> bool {\n" + RUST_BODY
     + "\nfn main() {\n    let v = vec![1.0, 2.8, 3.0];\n    println!(\"{:?}\", has_close_elements(v, 0.3));\n}\n```\n",
     "\n" + RUST_BODY),
    ("rust-chat-lifetime-signature", "rust", RUST_LIFETIME, "chat",
     "```rs\nfn longest<'a>(x: &'a str, y: &'a str) -> &'a str {\n    if x.len() >= y.len() { x } else { y }\n}\n```",
     "\n    if x.len() >= y.len() { x } else { y }\n}\n"),
    ("rust-chat-body-only-unfenced", "rust", RUST_LIFETIME, "chat",
     "    if x.len() >= y.len() { x } else { y }\n}\n\nThat's it: the 'a lifetime ties the result to both inputs.",
     "    if x.len() >= y.len() { x } else { y }\n}\n"),
]


@pytest.mark.parametrize("lang,prompt,kind,raw,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_recorded_outputs(lang, prompt, kind, raw, expected):
    assert completion_from_output(raw, prompt, lang, kind) == expected


@pytest.mark.parametrize("lang,prompt,kind,raw,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_prompt_plus_completion_balances(lang, prompt, kind, raw, expected):
    code = code_mask(prompt + completion_from_output(raw, prompt, lang, kind), lang)
    assert code.count("{") == code.count("}") > 0


# ------------------------------------------------------------------------------------------ building blocks
@pytest.mark.parametrize("lang,prompt,depth,name", [
    ("cpp", CPP, 1, "sort_array"), ("java", JAVA, 2, "hasCloseElements"), ("js", JS, 1, "hasCloseElements"),
    ("js", "// doc\nfunction has_close_elements(numbers, threshold){\n", 1, "has_close_elements"),
    ("go", GO, 1, "HasCloseElements"), ("go", GO_IFACE, 1, "FilterIntegers"),
    ("rust", RUST, 1, "has_close_elements"), ("rust", RUST_LIFETIME, 1, "longest"),
    ("java", "class Problem {\n    // f(x) { }\n    public static long f(long x) throws Exception {\n", 2, "f"),
])
def test_open_depth_and_function_name(lang, prompt, depth, name):
    assert open_depth(prompt, lang) == depth
    assert function_name(prompt, lang) == name


def test_lexer_blanks_literals_and_comments():
    assert code_mask('let s = `a{${ {x: "}"}.x }b}`; // }\nlet c = \'{\';', "js") == (
        "let s =       {x:    }.x     ;     \nlet c =    ;")
    raw, byte, esc, nested = 'r##"}"#"##', "'{'", "'\\u{7d}'", "/* /* } */ { */"
    blank = lambda lit: " " * len(lit)  # noqa: E731
    assert code_mask(f"fn f<'a>(x: &'a str) {{ let r = {raw}; b{byte}; {esc}; {nested} }}", "rust") == (
        f"fn f< a>(x: & a str) {{ let r = {blank(raw)}; b{blank(byte)}; {blank(esc)}; {blank(nested)} }}")
    # a stray apostrophe in prose does not swallow the code after it
    assert code_mask("Here's it: int f() { return '}'; }", "cpp") == "Here's it: int f() { return    ; }"
    assert code_mask('s := `\n}`; r := \'{\'', "go") == "s :=  \n  ; r :=    "


def test_closes_prompt_during_generation():
    """Fed token by token, the cut point appears exactly when the closing `}` (and its newline) arrives."""
    raw = CPP_BODY + "\nint main(){}\n"
    cuts = [closes_prompt(raw[:n], CPP, "cpp") for n in range(len(raw) + 1)]
    first = next(n for n, c in enumerate(cuts) if c is not None)
    assert first == len(CPP_BODY) - 1 and cuts[first] == len(CPP_BODY) - 1  # the `}` just arrived
    assert cuts[first + 1:] == [len(CPP_BODY)] * (len(raw) - first)  # then the newline is kept
    assert closes_prompt('    puts("}}}");\n', CPP, "cpp") is None
    assert brace_cut("    return 1;\n", CPP, "cpp") == "    return 1;\n"  # never closed: all of it


def test_cut_at_stops():
    assert cut_at_stops("  return 1;\n}\n\nint main()", ["\n}", "\nint main"]) == "  return 1;"
    assert cut_at_stops("abc", []) == "abc" and cut_at_stops("abc", ["", "x"]) == "abc"


def test_multiple_e_stop_tokens_then_brace_rule():
    raw = "        return x + 1;\n    }\n\n    public static void main(String[] args) {\n    }\n}\n"
    prompt = "class Problem {\n    public static long f(long x) {\n"
    assert completion_from_output(raw, prompt, "java", "completion", stops=["\n    }\n"]) == "        return x + 1;"
    assert completion_from_output(raw, prompt, "java", "completion") == "        return x + 1;\n    }\n\n" \
        "    public static void main(String[] args) {\n    }\n}\n"


def test_fenced_blocks():
    answer = ("```Python\nprint(1)\n```\n```\nuntagged\n```\n```c++ title=x\nint a;\n```\n"
              "  ```cpp\n  int b;\n  ```\n```cpp\nint c;")
    assert fenced_blocks(answer, ("cpp", "c++")) == ["untagged\n", "int a;\n", "  int b;\n", "int c;\n"]
    assert fenced_blocks(answer, ("python",)) == ["print(1)\n", "untagged\n"]
    assert fenced_blocks("no code here", ("go",)) == []


def test_python_delegates_to_postprocess():
    prompt = 'def inc(x: int) -> int:\n    """Add one."""\n'
    chat = "Sure!\n```python\ndef inc(x: int) -> int:\n    return x + 1\n\nprint(inc(1))\n```"
    assert completion_from_chat(chat, prompt, "python") == "\ndef inc(x: int) -> int:\n    return x + 1\n"
    assert completion_from_output("    return x + 1\n\nprint(inc(2))\n", prompt, "python", "completion") == (
        "    return x + 1\n")


def test_bad_language_and_kind():
    with pytest.raises(ValueError, match="unknown language 'kotlin'; expected one of"):
        completion_from_output("", "", "kotlin", "chat")
    with pytest.raises(ValueError, match="unknown output kind 'fim'"):
        completion_from_output("", CPP, "cpp", "fim")


# Real compilers agree: prompt + completion is a valid program (syntax and, for C++/Rust, types).
_CHECKERS = {
    "cpp": (["g++", "-std=c++11", "-fsyntax-only", "-x", "c++", "-"], ""),
    "js": (["node", "--check", "-"], ""),
    "go": (["gofmt", "-e"], "package main\n"),
    # rustc replaces its output file by renaming: never point it at /dev/null (as root that replaces the device)
    "rust": (["rustc", "--crate-type", "lib", "--emit=metadata", "-o", "{tmp}/lib.rmeta", "-"], ""),
}


@pytest.mark.parametrize("lang,prompt,kind,raw,expected",
                         [c[1:] for c in CASES if c[1] in _CHECKERS and "unclosed" not in c[0]],
                         ids=[c[0] for c in CASES if c[1] in _CHECKERS and "unclosed" not in c[0]])
def test_compilers_accept_prompt_plus_completion(lang, prompt, kind, raw, expected, tmp_path):
    import os
    import shutil
    import subprocess
    cmd, prefix = _CHECKERS[lang]
    tool = shutil.which(cmd[0]) or shutil.which(os.path.expanduser(f"~/.cargo/bin/{cmd[0]}"))
    if tool is None:
        pytest.skip(f"{cmd[0]} is not installed")
    source = prefix + prompt + completion_from_output(raw, prompt, lang, kind)
    done = subprocess.run([tool] + [part.replace("{tmp}", str(tmp_path)) for part in cmd[1:]], input=source, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_javac_accepts_prompt_plus_completion(tmp_path):
    import shutil
    import subprocess
    if shutil.which("javac") is None:
        pytest.skip("javac is not installed")
    java = [c for c in CASES if c[1] == "java"]
    for i, (_, lang, prompt, kind, raw, _) in enumerate(java):  # one compile of all: javac starts slowly
        (tmp_path / f"Case{i}.java").write_text(
            prompt.replace("class Solution", f"class Solution{i}") + completion_from_output(raw, prompt, lang, kind))
    done = subprocess.run(["javac", "-d", str(tmp_path / "out")] + sorted(str(p) for p in tmp_path.glob("*.java")),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
