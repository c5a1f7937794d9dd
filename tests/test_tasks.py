"""Task registry (names, files, weights) and the content-hash split."""
import json
import os
import random

import pytest

from mftcoder.config import ConfigError, TaskSpec, parse_config
from mftcoder.data.tasks import find_jsonl_files, resolve_tasks, split_of, unique_task_names

LINE = json.dumps({"chat_rounds": [{"role": "human", "content": "hi"}, {"role": "bot", "content": "hello"}]})


def write_task(folder, files=("part.jsonl",), lines=1):
    for rel in files:
        path = os.path.join(str(folder), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("\n".join([LINE] * lines) + "\n")
    return str(folder)


def cfg_for(data_paths, **kw):
    return parse_config({"data_paths": data_paths, "pretrained_model_path": "/unused", "output_dir": "/unused", **kw})


def names_of(*specs):
    return unique_task_names([TaskSpec(**s) if isinstance(s, dict) else TaskSpec(path=s) for s in specs])


# --- names -----------------------------------------------------------------------------------------------------------


def test_two_folders_named_train_get_distinct_names(tmp_path):
    a = write_task(tmp_path / "a" / "train")
    b = write_task(tmp_path / "b" / "train")
    tasks = resolve_tasks(cfg_for([a, b]))
    assert [t.name for t in tasks] == ["a/train", "b/train"]
    assert [t.task_id for t in tasks] == [0, 1]
    assert tasks[0].files == (os.path.join(a, "part.jsonl"),)


def test_clash_grows_only_as_far_as_needed():
    assert names_of("/x/p/train", "/y/p/train", "/z/other") == ["x/p/train", "y/p/train", "other"]
    # a file and a folder with the same stem clash too
    assert names_of("/d1/train.jsonl", "/d2/train") == ["d1/train", "d2/train"]


def test_names_do_not_depend_on_the_order_of_the_other_tasks():
    assert names_of("/a/train", "/b/train") == list(reversed(names_of("/b/train", "/a/train")))


def test_explicit_name_wins_and_a_derived_name_makes_way():
    assert names_of({"path": "/a/train", "name": "completion"}, "/b/train") == ["completion", "train"]
    assert names_of({"path": "/a/x", "name": "train"}, "/b/train") == ["train", "b/train"]


def test_duplicate_explicit_names_are_an_error():
    with pytest.raises(ConfigError, match=r"\['cc'\] given more than once"):
        names_of({"path": "/a", "name": "cc"}, {"path": "/b", "name": "cc"})


def test_the_same_path_twice_is_an_error_that_suggests_names():
    with pytest.raises(ConfigError, match="explicit names"):
        names_of("/a/train", "/a/train/")


def test_trailing_slash_and_jsonl_suffix_are_not_part_of_the_name(tmp_path):
    folder = write_task(tmp_path / "code_completion")
    single = tmp_path / "text2code.jsonl"
    single.write_text(LINE + "\n")
    tasks = resolve_tasks(cfg_for([folder + "/", str(single)]))
    assert [t.name for t in tasks] == ["code_completion", "text2code"]
    assert tasks[1].files == (str(single),)


def test_bracket_string_data_paths_resolve(tmp_path):
    a = write_task(tmp_path / "a")
    b = write_task(tmp_path / "b")
    tasks = resolve_tasks(cfg_for(f"[{a},{b}]"))
    assert [t.name for t in tasks] == ["a", "b"]


# --- files -----------------------------------------------------------------------------------------------------------


def test_files_found_recursively_in_sorted_order(tmp_path):
    root = tmp_path / "task"
    write_task(root, files=("z.jsonl", "b/2.jsonl", "b/10.jsonl", "a/deep/x.jsonl", "notes.txt", "data.json"))
    found = find_jsonl_files(str(root))
    rel = [os.path.relpath(f, root) for f in found]
    assert rel == ["z.jsonl", "a/deep/x.jsonl", "b/10.jsonl", "b/2.jsonl"]


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no data here")
    with pytest.raises(ConfigError, match="contains no .jsonl file") as info:
        resolve_tasks(cfg_for([str(tmp_path / "empty")]))
    assert str(tmp_path / "empty") in str(info.value)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as info:
        resolve_tasks(cfg_for([str(tmp_path / "nowhere")]))
    assert "nowhere" in str(info.value)


def test_gzip_files_are_task_files_and_the_suffix_is_not_part_of_the_name(tmp_path):
    root = tmp_path / "task"
    write_task(root, files=("a.jsonl", "b.jsonl.gz", "c.json.gz", "d.gz"))
    assert [os.path.relpath(f, root) for f in find_jsonl_files(str(root))] == ["a.jsonl", "b.jsonl.gz"]
    single = tmp_path / "text2code.jsonl.gz"
    single.write_bytes(b"")
    assert [t.name for t in resolve_tasks(cfg_for([str(root), str(single)]))] == ["task", "text2code"]


def test_json_only_folder_error_lists_what_it_found(tmp_path):
    root = tmp_path / "task"
    write_task(root, files=("a.json", "b.json", "notes.txt"))
    with pytest.raises(ConfigError, match="contains no .jsonl file") as info:
        resolve_tasks(cfg_for([str(root)]))
    msg = str(info.value)
    assert "found 3 file(s): a.json, b.json, notes.txt" in msg
    assert "expected *.jsonl or *.jsonl.gz" in msg
    assert "jq -c '.[]' data.json > data.jsonl" in msg  # how to turn a JSON array into lines


def test_many_unrelated_files_are_listed_briefly(tmp_path):
    root = tmp_path / "task"
    write_task(root, files=[f"f{i}.txt" for i in range(8)])
    with pytest.raises(ConfigError) as info:
        find_jsonl_files(str(root))
    assert "found 8 file(s): f0.txt, f1.txt, f2.txt, f3.txt, f4.txt and 3 more" in str(info.value)
    assert "jq" not in str(info.value)


# --- symlinks --------------------------------------------------------------------------------------------------------


def test_symlinked_subfolder_is_read(tmp_path):
    root = write_task(tmp_path / "task", files=("a.jsonl",))
    write_task(tmp_path / "elsewhere", files=("b.jsonl", "deep/c.jsonl"))
    os.symlink(tmp_path / "elsewhere", tmp_path / "task" / "linked")
    rel = [os.path.relpath(f, root) for f in find_jsonl_files(root)]
    assert rel == ["a.jsonl", "linked/b.jsonl", "linked/deep/c.jsonl"]


def test_symlink_loop_ends_and_each_file_is_read_once(tmp_path, caplog):
    root = write_task(tmp_path / "task", files=("a.jsonl", "sub/b.jsonl"))
    os.symlink(root, os.path.join(root, "sub", "back_to_top"))  # task/sub/back_to_top -> task
    os.symlink(os.path.join(root, "sub"), os.path.join(root, "sub_again"))  # a second way into task/sub
    os.symlink(os.path.join(root, "a.jsonl"), os.path.join(root, "z_same.jsonl"))  # a second name for a file
    with caplog.at_level("WARNING"):
        rel = [os.path.relpath(f, root) for f in find_jsonl_files(root)]
    assert rel == ["a.jsonl", "sub/b.jsonl"]
    assert "the same folder as" in caplog.text and "the same file as" in caplog.text


def test_broken_symlink_is_an_error(tmp_path):
    root = write_task(tmp_path / "task")
    os.symlink(tmp_path / "gone.jsonl", os.path.join(root, "x.jsonl"))
    with pytest.raises(ConfigError, match="symlink to nothing"):
        find_jsonl_files(root)


def test_a_folder_and_a_link_to_it_as_two_tasks_is_refused(tmp_path):
    real = write_task(tmp_path / "real", files=("part.jsonl",))
    os.symlink(real, tmp_path / "alias")
    with pytest.raises(ConfigError) as info:
        resolve_tasks(cfg_for([real, str(tmp_path / "alias")]))
    msg = str(info.value)
    assert "tasks 'real' and 'alias' both hold the file" in msg
    assert os.path.join(real, "part.jsonl") in msg and "would train twice" in msg


def test_overlapping_tasks_are_refused(tmp_path):
    outer = write_task(tmp_path / "outer", files=("x.jsonl", "inner/y.jsonl"))
    with pytest.raises(ConfigError, match="tasks 'outer' and 'y' both hold the file"):  # a folder and a file in it
        resolve_tasks(cfg_for([outer, os.path.join(outer, "inner", "y.jsonl")]))
    with pytest.raises(ConfigError, match="tasks 'a' and 'b' both hold the file"):  # one folder under two names
        resolve_tasks(cfg_for([{"name": "a", "path": outer}, {"name": "b", "path": outer}]))
    elsewhere = write_task(tmp_path / "other", files=("z.jsonl",))
    os.symlink(os.path.join(outer, "x.jsonl"), os.path.join(elsewhere, "x_link.jsonl"))  # a file linked in
    with pytest.raises(ConfigError, match="tasks 'outer' and 'other' both hold the file"):
        resolve_tasks(cfg_for([outer, elsewhere]))


# --- weights ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def two_tasks(tmp_path):
    return write_task(tmp_path / "cc"), write_task(tmp_path / "t2c")


def test_default_weights_are_equal(two_tasks):
    tasks = resolve_tasks(cfg_for(list(two_tasks)))
    assert [t.loss_weight for t in tasks] == [1.0, 1.0]
    assert [t.sampling_weight for t in tasks] == [None, None]


def test_weights_from_data_paths_entries(two_tasks):
    a, b = two_tasks
    tasks = resolve_tasks(cfg_for([{"path": a, "weight": 3}, b]))
    assert [t.loss_weight for t in tasks] == [3.0, 1.0]


def test_weights_from_task_weights_string_list_and_dict(two_tasks):
    assert [t.loss_weight for t in resolve_tasks(cfg_for(list(two_tasks), task_weights="[1,2]"))] == [1.0, 2.0]
    assert [t.loss_weight for t in resolve_tasks(cfg_for(list(two_tasks), task_weights=[4, 1]))] == [4.0, 1.0]
    tasks = resolve_tasks(cfg_for(list(two_tasks), task_weights={"t2c": 5, "cc": 0.5}))
    assert [t.loss_weight for t in tasks] == [0.5, 5.0]


def test_weights_given_twice_is_an_error(two_tasks):
    a, b = two_tasks
    with pytest.raises(ConfigError, match="task_weights"):
        resolve_tasks(cfg_for([{"path": a, "weight": 3}, b], task_weights="[1,2]"))


def test_dict_weights_with_unknown_task_name(two_tasks):
    with pytest.raises(ConfigError, match=r"task_weights: unknown task\(s\) \['code'\]") as info:
        resolve_tasks(cfg_for(list(two_tasks), task_weights={"code": 1, "cc": 1}))
    assert "['cc', 't2c']" in str(info.value)  # the valid names are listed


def test_dict_weights_missing_a_task(two_tasks):
    with pytest.raises(ConfigError, match=r"no value for task\(s\) \['t2c'\]"):
        resolve_tasks(cfg_for(list(two_tasks), task_weights={"cc": 1}))


def test_list_weights_of_the_wrong_length(two_tasks):
    with pytest.raises(ConfigError, match=r"task_weights: 3 value\(s\) for 2 task\(s\)"):
        resolve_tasks(cfg_for(list(two_tasks), task_weights="[1,2,3]"))


def test_non_positive_weights(two_tasks):
    with pytest.raises(ConfigError, match="task_weights"):
        resolve_tasks(cfg_for(list(two_tasks), task_weights="[1,0]"))


def test_sampling_weights(two_tasks):
    tasks = resolve_tasks(cfg_for(list(two_tasks), task_sampling="explicit", task_sampling_weights={"cc": 1, "t2c": 3}))
    assert [t.sampling_weight for t in tasks] == [1.0, 3.0]
    with pytest.raises(ConfigError, match="task_sampling_weights"):
        resolve_tasks(cfg_for(list(two_tasks), task_sampling="explicit", task_sampling_weights={"x": 1, "cc": 1}))


# --- split -----------------------------------------------------------------------------------------------------------


def sample_lines(n, seed=0):
    rng = random.Random(seed)
    return [json.dumps({"prompt": f"task {i} {rng.random()}", "answer": str(i)}) for i in range(n)]


def test_split_is_stable_by_content():
    fractions = (0.8, 0.1, 0.1)
    lines = sample_lines(300)
    first = {line: split_of(line, fractions) for line in lines}
    shuffled = lines[:]
    random.Random(1).shuffle(shuffled)
    # other lines around it, another order, surrounding whitespace/CRLF: the same split
    assert {line: split_of(line, fractions) for line in shuffled[:100]} == {line: first[line] for line in shuffled[:100]}
    assert all(split_of("  " + line + "\r\n", fractions) == first[line] for line in lines)
    assert set(first.values()) == {"train", "valid", "test"}


def test_split_fractions_are_roughly_respected_on_2000_lines():
    lines = sample_lines(2000)
    counts = {"train": 0, "valid": 0, "test": 0}
    for line in lines:
        counts[split_of(line, (0.8, 0.15, 0.05))] += 1
    # binomial standard deviations are ~18, ~16 and ~10 lines; allow ~4 of them
    assert abs(counts["train"] - 1600) < 72
    assert abs(counts["valid"] - 300) < 64
    assert abs(counts["test"] - 100) < 40


def test_split_extremes():
    lines = sample_lines(500)
    assert {split_of(line, (1.0, 0.0, 0.0)) for line in lines} == {"train"}
    assert "test" not in {split_of(line, (0.98, 0.02, 0.0)) for line in lines}
    assert {split_of(line, (0.0, 1.0, 0.0)) for line in lines} == {"valid"}
