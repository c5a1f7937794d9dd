"""merge: LoRA and QLoRA adapters trained here with peft, merged, compared logit for logit."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mftcoder.merge import merge_adapter
from mftcoder.model.adapters import normalize_key

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = ("{% for m in messages %}{{ '<s>' + ('human' if m['role'] == 'user' else 'bot') + '\\n' + m['content'] + '\\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<s>bot\\n' }}{% endif %}")
TEXTS = [f"def add_{i}(a, b):\n    return a + b + {i}\n" for i in range(8)]


def _train_adapter(base_dir: str, out_dir: str, quantized: bool = False, steps: int = 8) -> str:
    """A few AdamW steps of LoRA (or QLoRA: the base in bitsandbytes nf4) on the tiny model, saved with peft."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base_dir)
    if quantized:
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=bnb, device_map="cpu")
        assert any(type(m).__name__ == "Linear4bit" for m in model.modules())  # really trained on 4-bit weights
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses  # it really trained
    model.save_pretrained(out_dir)
    tok.chat_template = TEMPLATE  # training saves the tokenizer with its template beside the adapter
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    return _train_adapter(tiny_model_dir, str(tmp_path_factory.mktemp("lora")))


@pytest.fixture(scope="module")
def qlora_dir(tiny_model_dir, tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    return _train_adapter(tiny_model_dir, str(tmp_path_factory.mktemp("qlora")), quantized=True)


def _inputs(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tok(["def add_3(a, b):\n    return", "The quick brown fox number 12"], return_tensors="pt", padding=True)


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits.float()


def _adapter_on_base(base_dir, adapter_dir, dtype=torch.float32):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def _plain(path, dtype=None):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, **({"dtype": dtype} if dtype else {})).eval()


def _assert_plain_model_dir(path, dtype_name):
    names = list(safe_open(os.path.join(path, "model.safetensors"), "pt").keys())
    assert not [n for n in names if "lora" in n or "base_layer" in n]
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(n).dtype) for n in names} == {f"torch.{dtype_name}"}
    config = json.load(open(os.path.join(path, "config.json")))
    assert "quantization_config" not in config and config["dtype"] == dtype_name
    model = _plain(path)
    assert not [n for n, _ in model.named_modules() if "lora" in n.lower()]
    assert type(model).__name__ == "LlamaForCausalLM"


def test_cli_merge_equals_adapter_on_base(tiny_model_dir, lora_dir, tmp_path):
    out = tmp_path / "merged"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "mftcoder.merge", "--base", tiny_model_dir, "--adapter", lora_dir,
                          "--output", str(out)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    _assert_plain_model_dir(str(out), "float32")
    batch = _inputs(tiny_model_dir)
    expected = _logits(_adapter_on_base(tiny_model_dir, lora_dir), batch)
    merged = _logits(_plain(str(out)), batch)
    base = _logits(_plain(tiny_model_dir), batch)
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)
    assert (merged - base).abs().max() > 1e-2  # the adapter changed the model, so equality above means something
    # The tokenizer and its chat template come from the adapter directory (the training template).
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out)).chat_template == TEMPLATE
    info = json.load(open(out / "merge_info.json"))
    assert info["adapter"] == os.path.abspath(lora_dir) and info["adapter_config"]["r"] == 8
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # no leftovers of the atomic write
    with pytest.raises(FileExistsError, match="--overwrite"):
        merge_adapter(tiny_model_dir, lora_dir, str(out))


def test_merge_in_bfloat16(tiny_model_dir, lora_dir, tmp_path):
    out = merge_adapter(tiny_model_dir, lora_dir, str(tmp_path / "bf16"), dtype="bfloat16")
    _assert_plain_model_dir(out, "bfloat16")
    batch = _inputs(tiny_model_dir)
    expected = _logits(_adapter_on_base(tiny_model_dir, lora_dir), batch)  # fp32 reference
    merged = _logits(_plain(out, torch.bfloat16), batch)
    assert (merged - expected).abs().max() < 0.05 * expected.abs().max()  # bf16 rounding only


def test_distributed_key_spellings_merge_identically(tiny_model_dir, lora_dir, tmp_path):
    # The same adapter with the names FSDP / DDP / activation checkpointing / torch.compile leave in keys,
    # and the adapter name kept: the merge must equal the plain one (peft would load nothing and warn).
    weights = load_file(os.path.join(lora_dir, "adapter_model.safetensors"))
    spelled = {}
    for i, (k, v) in enumerate(weights.items()):
        k = k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
        k = k.replace("model.layers.", "model._fsdp_wrapped_module.layers." if i % 2 else "model.layers.")
        k = k.replace(".self_attn.", "._checkpoint_wrapped_module.self_attn.")
        spelled[("module._orig_mod." if i % 3 == 0 else "") + k] = v
    assert {normalize_key(k) for k in spelled} == set(weights)
    odd = tmp_path / "odd-adapter"
    shutil.copytree(lora_dir, odd)
    save_file(spelled, str(odd / "adapter_model.safetensors"))
    a = merge_adapter(tiny_model_dir, lora_dir, str(tmp_path / "a"))
    b = merge_adapter(tiny_model_dir, str(odd), str(tmp_path / "b"))
    wa, wb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _broken_copy(lora_dir, tmp_path, edit):
    broken = tmp_path / "broken"
    shutil.copytree(lora_dir, broken)
    weights = load_file(os.path.join(lora_dir, "adapter_model.safetensors"))
    edit(weights)
    save_file(weights, str(broken / "adapter_model.safetensors"))
    return str(broken)


def test_zero3_partition_saved_without_gathering_is_refused(tiny_model_dir, lora_dir, tmp_path):
    def empty_one(w):
        k = sorted(w)[0]
        w[k] = torch.empty(0, dtype=w[k].dtype)

    with pytest.raises(ValueError, match="ZeRO-3"):
        merge_adapter(tiny_model_dir, _broken_copy(lora_dir, tmp_path, empty_one), str(tmp_path / "m"))


def test_missing_or_foreign_weights_are_refused(tiny_model_dir, lora_dir, tmp_path):
    def drop_one(w):
        del w[sorted(w)[0]]

    with pytest.raises(ValueError, match="missing from the file"):
        merge_adapter(tiny_model_dir, _broken_copy(lora_dir, tmp_path / "1", drop_one), str(tmp_path / "m1"))

    def rename_one(w):
        k = sorted(w)[0]
        w[k.replace("layers.0.", "layers.7.")] = w.pop(k)

    with pytest.raises(ValueError, match="match no module"):
        merge_adapter(tiny_model_dir, _broken_copy(lora_dir, tmp_path / "2", rename_one), str(tmp_path / "m2"))
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()


def test_qlora_adapter_merges_into_full_precision_base(tiny_model_dir, qlora_dir, tmp_path):
    cfg = json.load(open(os.path.join(qlora_dir, "adapter_config.json")))
    assert cfg["peft_type"] == "LORA"
    batch = _inputs(tiny_model_dir)
    for dtype, name, atol in ((torch.float32, "float32", 1e-5), (torch.bfloat16, "bfloat16", None)):
        out = merge_adapter(tiny_model_dir, qlora_dir, str(tmp_path / name), dtype=name)
        _assert_plain_model_dir(out, name)
        merged = _logits(_plain(out, dtype), batch)
        expected = _logits(_adapter_on_base(tiny_model_dir, qlora_dir), batch)
        if atol:
            torch.testing.assert_close(merged, expected, atol=atol, rtol=0)
            base = _logits(_plain(tiny_model_dir), batch)
            assert (merged - base).abs().max() > 1e-2
        else:
            assert (merged - expected).abs().max() < 0.05 * expected.abs().max()


def test_generate_with_adapter_equals_generate_with_merged_model(tiny_model_dir, lora_dir, tmp_path):
    from mftcoder.infer.engine import GenerationSettings, generate_texts
    from mftcoder.model.inference import load_for_inference as load_model

    merged_dir = merge_adapter(tiny_model_dir, lora_dir, str(tmp_path / "merged"))
    prompts = ["def add_5(a, b):\n", "The quick brown"]
    settings = GenerationSettings(max_new_tokens=12)
    on_the_fly = generate_texts(*load_model(tiny_model_dir, adapter=lora_dir), prompts, settings, progress=False)
    merged = generate_texts(*load_model(merged_dir), prompts, settings, progress=False)
    base = generate_texts(*load_model(tiny_model_dir), prompts, settings, progress=False)
    assert on_the_fly.texts == merged.texts and merged.texts != base.texts


# ------------------------------------------------------------------------------------------- the wrong base
def _variant_base(tiny_model_dir, out, vocab_tokens=None, **changes):
    """The tiny Llama with other sizes (fresh random weights); another tokenizer when `vocab_tokens` is given."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mftcoder.testing import build_tokenizer

    tok = build_tokenizer(vocab_tokens) if vocab_tokens else AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    for key, value in changes.items():
        setattr(config, key, value)
    if vocab_tokens:
        config.vocab_size = len(tok)
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return str(out)


def _unrecorded(adapter_dir, out):
    """The adapter with a hub id as its recorded base, so only the layer and vocabulary checks can tell."""
    shutil.copytree(adapter_dir, out)
    cfg = json.load(open(out / "adapter_config.json"))
    cfg["base_model_name_or_path"] = "some-org/some-model"
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return str(out)


def test_adapter_on_a_base_with_more_layers_is_refused_unless_forced(tiny_model_dir, lora_dir, tmp_path, capsys):
    base3 = _variant_base(tiny_model_dir, tmp_path / "base3", num_hidden_layers=3)
    with pytest.raises(ValueError, match=r"num_hidden_layers 2 \(recorded base .*\) vs 3; layers: the adapter adapts "
                                         r"layers up to 1 \(2 layers\), the base has 3.*--force"):
        merge_adapter(base3, lora_dir, str(tmp_path / "m"))
    moved = _unrecorded(lora_dir, tmp_path / "moved")
    with pytest.raises(ValueError, match=r"was not trained on base .*: layers: the adapter adapts layers up to 1"):
        merge_adapter(base3, moved, str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cli = [sys.executable, "-m", "mftcoder.merge", "--base", base3, "--adapter", moved, "--output", str(tmp_path / "m")]
    res = subprocess.run(cli, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert res.returncode == 2 and "error: adapter" in res.stderr and "the base has 3" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "m").exists()
    from mftcoder.merge import build_parser

    assert "--force" in build_parser().format_help()
    merge_adapter(base3, moved, str(tmp_path / "m"), force=True)
    assert "warning: adapter" in capsys.readouterr().err
    assert os.path.isfile(tmp_path / "m" / "model.safetensors")


def test_adapter_on_a_base_with_another_vocabulary_is_refused(tiny_model_dir, lora_dir, tmp_path):
    other_vocab = _variant_base(tiny_model_dir, tmp_path / "vocab", vocab_tokens=700)
    with pytest.raises(ValueError, match=r"vocab_size 512 \(recorded base .*\) vs 7\d\d.*vocabulary: the adapter's "
                                         r"tokenizer has 512 tokens, the base's 7\d\d"):
        merge_adapter(other_vocab, lora_dir, str(tmp_path / "m"))
    with pytest.raises(ValueError, match=r"was not trained on base .*: vocabulary: the adapter's tokenizer has 512"):
        merge_adapter(other_vocab, _unrecorded(lora_dir, tmp_path / "moved"), str(tmp_path / "m"))
    # same tokenizer files but a 700-row embedding: only the recorded base's config tells
    more_rows = _variant_base(tiny_model_dir, tmp_path / "rows", vocab_size=700)
    with pytest.raises(ValueError, match=r"vocab_size 512 \(recorded base .*\) vs 700"):
        merge_adapter(more_rows, lora_dir, str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_generate_refuses_an_adapter_on_the_wrong_base_unless_forced(tiny_model_dir, lora_dir, tmp_path):
    from mftcoder.model.inference import load_for_inference

    base3 = _variant_base(tiny_model_dir, tmp_path / "base3", num_hidden_layers=3)
    with pytest.raises(ValueError, match="the base has 3"):
        load_for_inference(base3, adapter=lora_dir)
    model, _ = load_for_inference(base3, adapter=lora_dir, force=True)
    assert not [n for n, _ in model.named_modules() if "lora" in n]
    model, _ = load_for_inference(tiny_model_dir, adapter=lora_dir)  # the right base passes the checks
