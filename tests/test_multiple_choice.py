"""`mftcoder eval multiple-choice`: the readers (CMMLU, C-Eval, MMLU CSV, jsonl) and their file:line errors, the
folder layouts, the pinned prompts (en / zh, k-shot, chat), choice log-likelihoods checked by hand and padded ==
unpadded, and a tiny model trained here to answer a question set scoring >= 0.9 where the untrained one is near
chance."""
import json
import os
import subprocess
import sys

import pytest
import torch

from mftcoder.eval.mc_data import Question, question_files, read_questions, subject_of
from mftcoder.eval.mc_prompts import build_prompt, continuations, detect_language, wrap_chat
from mftcoder.eval.multiple_choice import build_parser, evaluate, load_shots, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def _eval(*argv):
    return evaluate(build_parser().parse_args([*argv, "--no_progress"]))


# ------------------------------------------------------------------------------------------- readers
def test_each_file_format_is_read_with_its_subject_and_source_line(tmp_path):
    cmmlu = _write(tmp_path / "agronomy.csv", ",Question,A,B,C,D,Answer\n0,问题一,甲,乙,丙,丁,C\n"
                                              '1,"两行\n的问题",a,b,c,d,A\n2,问题三,a,b,c,d,D\n')
    ceval = _write(tmp_path / "computer_network_val.csv",
                   "id,question,A,B,C,D,answer,explanation\n0,Q0,a,b,c,d,B,because\n1,Q1,a,b,c,d,D,\n")
    mmlu = _write(tmp_path / "high_school_biology_test.csv", '"What, with a comma?",w,x,y,z,v,E\nQ2,a,b,c,d,e,A\n')
    jsonl = _write(tmp_path / "mine.jsonl", json.dumps({"question": "J0", "A": "a", "B": "b", "C": "c", "answer": "C"})
                   + "\n\n" + json.dumps({"question": "J1", "choices": ["p", "q"], "answer": 1}) + "\n")

    qs = read_questions(cmmlu)
    assert [(q.subject, q.question, q.choices, q.answer) for q in qs] == [
        ("agronomy", "问题一", ("甲", "乙", "丙", "丁"), 2), ("agronomy", "两行\n的问题", ("a", "b", "c", "d"), 0),
        ("agronomy", "问题三", ("a", "b", "c", "d"), 3)]
    assert [q.source for q in qs] == [f"{cmmlu}:2", f"{cmmlu}:3", f"{cmmlu}:5"]  # a record's first line
    qs = read_questions(ceval)
    assert [(q.subject, q.question, q.answer, q.source) for q in qs] == [
        ("computer_network", "Q0", 1, f"{ceval}:2"), ("computer_network", "Q1", 3, f"{ceval}:3")]
    qs = read_questions(mmlu)  # no header; five choices: A..E
    assert [(q.subject, q.question, q.choices, q.letters, q.answer) for q in qs] == [
        ("high_school_biology", "What, with a comma?", ("w", "x", "y", "z", "v"), "ABCDE", 4),
        ("high_school_biology", "Q2", ("a", "b", "c", "d", "e"), "ABCDE", 0)]
    qs = read_questions(jsonl)
    assert [(q.subject, q.choices, q.answer, q.source) for q in qs] == [
        ("mine", ("a", "b", "c"), 2, f"{jsonl}:1"), ("mine", ("p", "q"), 1, f"{jsonl}:3")]
    assert [subject_of(p) for p in ("x/anatomy_dev.csv", "x/anatomy_val.csv", "x/_test.csv", "x/a_test_b.jsonl")] == [
        "anatomy", "anatomy", "_test", "a_test_b"]


@pytest.mark.parametrize("name, text, line, message", [
    ("m.csv", "Q0,a,b,c,d,A\nQ1,a,b,c,d,F\n", 2, "answer 'F' is not one of A, B, C, D"),
    ("m.csv", "Q0,a,b,c,d,A\nQ1,a,b,c,d,e,A\n", 2, "7 cell(s), expected 6 like the first row"),
    ("m.csv", "Q0,a,B\n", 1, "expected question, A, B[, C...], answer (at least 4 cells)"),
    ("c.csv", ",Question,A,B,C,D,Answer\n0,Q,a,b,c,d,A\n1,,a,b,c,d,B\n", 3, "the question is empty"),
    ("c.csv", ",Question,A,B,C,D,Answer\n0,Q,a,b,c,d,\n", 2, "answer '' is not one of A, B, C, D"),
    ("e.csv", "id,question,A,B,C,D\n0,Q,a,b,c,d\n", 1, "has no answer column (C-Eval's test answers are not public"),
    ("e.csv", "id,question,X,Y,answer\n0,Q,a,b,A\n", 1, "needs choice columns A, B[, C...]"),
    ("j.jsonl", '{"question": "Q", "A": "a", "B": "b", "answer": "A"}\n{"question": "Q", "A": "a", "B": "b"}\n', 2,
     "needs an `answer`"),
    ("j.jsonl", '{"question": "Q", "choices": ["a"], "answer": 0}\n', 1, "needs a `choices` list of at least two"),
    ("j.jsonl", '{"question": "Q", "choices": ["a", "b"], "answer": 2}\n', 1, "answer 2 is not one of A, B"),
    ("j.jsonl", '{"question": "Q", "A": "a", "B": "b", "answer": "A"}\n{"question": \n', 2, "invalid JSON"),
])
def test_a_malformed_row_is_an_error_naming_file_and_line(tmp_path, name, text, line, message):
    path = _write(tmp_path / name, text)
    with pytest.raises(ValueError) as err:
        read_questions(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and message in str(err.value)


def test_layouts_splits_and_subject_filter(tmp_path):
    row = "Q,a,b,c,d,A\n"
    for rel in ("mmlu/test/anatomy_test.csv", "mmlu/val/anatomy_val.csv", "mmlu/dev/anatomy_dev.csv",
                "mmlu/test/virology_test.csv", "cmmlu/test/arts.csv", "flat/one.csv", "flat/two.jsonl", "flat/x.txt"):
        _write(tmp_path / rel, row if rel.endswith(".csv") else '{"question": "Q", "choices": ["a", "b"], "answer": 0}\n')
    files, dev = question_files(str(tmp_path / "mmlu"), "test")
    assert [os.path.basename(f) for f in files] == ["anatomy_test.csv", "virology_test.csv"]
    assert dev == str(tmp_path / "mmlu" / "dev")
    assert [os.path.basename(f) for f in question_files(str(tmp_path / "mmlu"), "val")[0]] == ["anatomy_val.csv"]
    assert question_files(str(tmp_path / "flat"), "test") == (
        [str(tmp_path / "flat" / "one.csv"), str(tmp_path / "flat" / "two.jsonl")], None)
    assert question_files(str(tmp_path / "flat" / "one.csv"), "val") == ([str(tmp_path / "flat" / "one.csv")], None)
    with pytest.raises(ValueError, match=r"has no val/ folder \(it has test/\); pass --split test"):
        question_files(str(tmp_path / "cmmlu"), "val")
    with pytest.raises(ValueError, match=r"--subjects: unknown subject\(s\) \['nope'\]; available: anatomy, virology"):
        _eval("--model", "unused", "--data", str(tmp_path / "mmlu"), "--subjects", "anatomy,nope")
    with pytest.raises(ValueError, match=r"--shots 2: the dev split .* has 1 question\(s\) for subject 'anatomy'; "
                                         r"use --shots 1 or fewer"):
        load_shots(["anatomy"], 2, str(tmp_path / "mmlu" / "dev"))
    with pytest.raises(ValueError, match="--shots 1 needs dev examples"):
        load_shots(["one"], 1, None)


# ------------------------------------------------------------------------------------------- prompts
Q_EN = Question("high_school_biology", "Which is a cell?", ("rock", "neuron", "glass", "steel"), 1, "f:1")
Q_ZH = Question("中国历史", "秦朝的首都是？", ("咸阳", "洛阳", "南京", "北京"), 0, "f:2")


def test_pinned_prompts_zero_and_k_shot():
    assert build_prompt(Q_EN, [], "en") == (
        "The following are multiple choice questions (with answers) about high school biology.\n\n"
        "Which is a cell?\nA. rock\nB. neuron\nC. glass\nD. steel\nAnswer:")
    assert continuations(Q_EN, "en", chat=False) == [" A", " B", " C", " D"]
    shot = Question("high_school_biology", "Which is wet?", ("water", "sand"), 0, "d:1")
    assert build_prompt(Q_EN, [shot, shot], "en") == (
        "The following are multiple choice questions (with answers) about high school biology.\n\n"
        "Which is wet?\nA. water\nB. sand\nAnswer: A\n\n"
        "Which is wet?\nA. water\nB. sand\nAnswer: A\n\n"
        "Which is a cell?\nA. rock\nB. neuron\nC. glass\nD. steel\nAnswer:")
    zh_shot = Question("中国历史", "唐朝的首都是？", ("长安", "杭州"), 0, "d:2")
    assert build_prompt(Q_ZH, [zh_shot], "zh") == (
        "以下是关于中国历史的单项选择题，请直接给出正确答案的选项。\n\n"
        "题目：唐朝的首都是？\nA. 长安\nB. 杭州\n答案是：A\n\n"
        "题目：秦朝的首都是？\nA. 咸阳\nB. 洛阳\nC. 南京\nD. 北京\n答案是：")
    assert continuations(Q_ZH, "zh", chat=False) == ["A", "B", "C", "D"]
    assert continuations(Q_EN, "en", chat=True) == ["A", "B", "C", "D"]  # the letter starts the assistant's reply
    assert detect_language([Q_ZH]) == "zh" and detect_language([Q_EN]) == "en"
    mixed = Question("s", "下列哪个是 Python 关键字？", ("def", "function", "func", "define"), 0, "f:3")
    assert detect_language([mixed]) == "en"  # more Latin letters than CJK characters


def test_k_shot_prompts_come_from_the_dev_split_first_rows(tmp_path):
    _write(tmp_path / "d/test/anatomy_test.csv", "Which bone?,femur,heart,lung,skin,A\n")
    _write(tmp_path / "d/dev/anatomy_dev.csv", "Dev one?,a,b,c,d,B\nDev two?,a,b,c,d,C\nDev three?,a,b,c,d,D\n")
    shots = load_shots(["anatomy"], 2, str(tmp_path / "d/dev"))["anatomy"]
    assert [s.question for s in shots] == ["Dev one?", "Dev two?"]
    assert build_prompt(read_questions(str(tmp_path / "d/test/anatomy_test.csv"))[0], shots, "en").endswith(
        "about anatomy.\n\nDev one?\nA. a\nB. b\nC. c\nD. d\nAnswer: B\n\nDev two?\nA. a\nB. b\nC. c\nD. d\nAnswer: C"
        "\n\nWhich bone?\nA. femur\nB. heart\nC. lung\nD. skin\nAnswer:")


def test_chat_wraps_the_prompt_as_the_user_turn(tiny_chat_model_dir, tiny_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    prompt = build_prompt(Q_EN, [], "en")
    assert wrap_chat(prompt, tok) == tok.apply_chat_template([{"role": "user", "content": prompt}],
                                                             add_generation_prompt=True, tokenize=False)
    assert wrap_chat(prompt, tok).startswith("<s>human\n") and wrap_chat(prompt, tok).endswith("<s>bot\n")
    with pytest.raises(ValueError, match="--chat needs a tokenizer with a chat_template"):
        wrap_chat(prompt, tiny_tokenizer)


# ------------------------------------------------------------------------------------------- scoring
def _hand_loglikelihood(model, tok, context, continuation):
    ctx = tok(context)["input_ids"]
    whole = tok(context + continuation)["input_ids"]
    assert whole[:len(ctx)] == ctx
    with torch.no_grad():
        logprobs = model(torch.tensor([whole])).logits[0].log_softmax(-1)
    return sum(float(logprobs[p - 1, whole[p]]) for p in range(len(ctx), len(whole)))


def test_choice_loglikelihoods_match_a_hand_computation_and_batching(tiny_model_dir, tmp_path, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "d" / "test"
    _write(data / "biology.csv", "Which is a cell?,rock,neuron,glass,steel,B\n"
                                 "A much longer question about which of these things is alive?,rock,tree,glass,salt,B\n"
                                 "Short?,x,y,z,w,D\n")
    _write(data / "history.csv", ",Question,A,B,C,D,Answer\n0,秦朝的首都是？,咸阳,洛阳,南京,北京,A\n"
                                 "1,唐朝的首都是哪座城市？,长安,杭州,南京,北京,A\n")
    one = _eval("--model", tiny_model_dir, "--data", str(tmp_path / "d"), "--batch_size", "1",
                "--output", str(tmp_path / "one.json"))
    many = _eval("--model", tiny_model_dir, "--data", str(tmp_path / "d"), "--batch_size", "8",
                 "--output", str(tmp_path / "many.json"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    by_source = {q["source"]: q for q in one["per_question"]}
    en = by_source[f"{data / 'biology.csv'}:1"]
    zh = by_source[f"{data / 'history.csv'}:2"]
    assert len(tok(" A")["input_ids"]) == 2  # en letters are two tokens here ("Ġ", "A"): the multi-token path
    en_context = ("The following are multiple choice questions (with answers) about biology.\n\n"
                  "Which is a cell?\nA. rock\nB. neuron\nC. glass\nD. steel\nAnswer:")
    zh_context = "以下是关于history的单项选择题，请直接给出正确答案的选项。\n\n题目：秦朝的首都是？\nA. 咸阳\nB. 洛阳\nC. 南京\nD. 北京\n答案是："
    for letter in "ABCD":
        assert en["loglikelihoods"][letter] == pytest.approx(
            _hand_loglikelihood(model, tok, en_context, f" {letter}"), abs=1e-4)
        assert zh["loglikelihoods"][letter] == pytest.approx(
            _hand_loglikelihood(model, tok, zh_context, letter), abs=1e-4)
    best = max("ABCD", key=lambda x: en["loglikelihoods"][x])
    assert en["prediction"] == best and en["correct"] == (best == "B")
    assert one["settings"]["sequences"] == 3 * 4 + 2  # en: one sequence per choice; zh: one per question
    for a, b in zip(one["per_question"], many["per_question"]):  # padded in a batch == alone
        assert a["source"] == b["source"] and a["prediction"] == b["prediction"]
        for letter, v in a["loglikelihoods"].items():
            assert b["loglikelihoods"][letter] == pytest.approx(v, abs=1e-5)
    assert one["per_subject"]["history"]["language"] == "zh" and one["per_subject"]["biology"]["language"] == "en"
    assert one["n_questions"] == 5 and one["n_subjects"] == 2
    assert one["accuracy"] == pytest.approx(sum(q["correct"] for q in one["per_question"]) / 5)
    assert one["accuracy_macro"] == pytest.approx(
        (one["per_subject"]["biology"]["accuracy"] + one["per_subject"]["history"]["accuracy"]) / 2)
    assert one["settings"]["example_prompt"].startswith("The following are multiple choice questions")
    assert one["settings"]["shots"] == 0 and one["settings"]["batch_size"] == 1 and one["versions"]["torch"]


# ------------------------------------------------------------------------------------------- a model that learnt them
def _write_question_set(root):
    """36 templated questions in three subjects and three formats, each letter the answer equally often."""
    def place(right, wrong, i):
        return [*wrong[:i % 4], right, *wrong[i % 4:]]

    mmlu = [[f"What is {i} plus {i + 3}?", *place(str(2 * i + 3), [str(2 * i + 3 + d) for d in (1, 2, 5)], i),
             "ABCD"[i % 4]] for i in range(12)]
    _write(root / "test" / "arithmetic_test.csv", "".join(",".join(r) + "\n" for r in mmlu))
    rows = [{"question": f"Which animal has {i + 2} legs in story {i}?",
             "choices": place(f"animal {i}", [f"animal {i + d}" for d in (1, 2, 5)], i), "answer": i % 4}
            for i in range(12)]
    _write(root / "test" / "animals.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cmmlu = [[str(i), f"{i}加{i}等于几？", *place(str(2 * i), [str(2 * i + d) for d in (1, 3, 7)], i), "ABCD"[i % 4]]
             for i in range(12)]
    _write(root / "test" / "加法.csv", ",Question,A,B,C,D,Answer\n" + "".join(",".join(r) + "\n" for r in cmmlu))


def _train_to_answer(model_dir, data, out_dir, max_steps=200):
    """Teach the tiny model the answer letter of every question, on exactly the prompts the benchmark builds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mftcoder.eval.mc_data import group_by_subject

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    seqs = []
    for qs in group_by_subject(question_files(data, "test")[0]).values():
        language = detect_language(qs)
        for q in qs:
            prompt = build_prompt(q, [], language)
            seqs.append((tok(prompt + continuations(q, language, False)[q.answer])["input_ids"],
                         len(tok(prompt)["input_ids"])))
    width = max(len(w) for w, _ in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for row, (whole, n) in enumerate(seqs):
        ids[row, :len(whole)], mask[row, :len(whole)] = torch.tensor(whole), 1
        labels[row, n:len(whole)] = torch.tensor(whole[n:])  # loss on the answer continuation only
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(max_steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.03:
            break
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def test_a_tiny_model_trained_on_a_question_set_scores_high_where_the_untrained_one_is_at_chance(
        tiny_model_dir, tmp_path, capsys, one_thread):
    data = tmp_path / "qs"
    _write_question_set(data)
    untrained = _eval("--model", tiny_model_dir, "--data", str(data), "--output", str(tmp_path / "before.json"))
    trained_dir = _train_to_answer(tiny_model_dir, str(data), str(tmp_path / "trained"))
    capsys.readouterr()
    assert main(["--model", trained_dir, "--data", str(data), "--batch_size", "16",
                 "--output", str(tmp_path / "after.json"), "--no_progress"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    trained = json.loads((tmp_path / "after.json").read_text())
    print(f"untrained accuracy {untrained['accuracy']:.3f}, trained {trained['accuracy']:.3f}", file=sys.stderr)
    assert trained["n_questions"] == untrained["n_questions"] == 36 and trained["n_subjects"] == 3
    assert {s: e["language"] for s, e in trained["per_subject"].items()} == {
        "arithmetic": "en", "animals": "en", "加法": "zh"}
    assert trained["accuracy"] >= 0.9 and all(e["accuracy"] >= 0.75 for e in trained["per_subject"].values())
    assert untrained["accuracy"] <= 0.45  # chance is 0.25: each letter is right for a quarter of the questions
    assert summary == {"accuracy": trained["accuracy"], "accuracy_macro": trained["accuracy_macro"],
                       "n_questions": 36, "n_correct": trained["n_correct"], "n_subjects": 3,
                       "out": str(tmp_path / "after.json")}
    assert "overall (micro)" in err and "arithmetic" in err


def test_cli_entry_points_and_bad_input(tiny_model_dir, tmp_path, capsys):
    data = _write(tmp_path / "anatomy.csv", "Which bone?,femur,heart,lung,skin,A\nWhich organ pumps?,femur,heart,lung,skin,B\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for cmd in ([sys.executable, "evals/multiple_choice.py"], [sys.executable, "-m", "mftcoder", "eval", "multiple-choice"]):
        out = tmp_path / "r.json"
        res = subprocess.run([*cmd, "--model", tiny_model_dir, "--data", data, "--output", str(out), "--no_progress"],
                             capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["n_questions"] == 2  # one JSON line is all of stdout
        assert json.loads(out.read_text())["per_subject"]["anatomy"]["n"] == 2
        out.unlink()
    bad = _write(tmp_path / "bad.csv", "Q,a,b,c,d,A\nQ,a,b,c,d,Z\n")
    assert main(["--model", tiny_model_dir, "--data", bad, "--output", str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"error: {bad}:2: answer 'Z' is not one of A, B, C, D "
                                                    "(or a 0-based index below 4)")
    assert main(["--model", tiny_model_dir, "--data", data, "--shots", "1", "--output", str(tmp_path / "x.json")]) == 2
    assert "error: --shots 1 needs dev examples" in capsys.readouterr().err
    from mftcoder.eval.cli import BENCHMARKS

    assert BENCHMARKS["multiple-choice"].module == "mftcoder.eval.multiple_choice"
