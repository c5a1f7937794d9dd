import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from mftcoder.testing import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny-llama")), arch="llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory):
    from mftcoder.testing import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny-qwen2")), arch="qwen2")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with the chat template training saves (MFTCoder role tags), as a trained model directory has."""
    import shutil

    from transformers import AutoTokenizer

    from mftcoder.data.template import attach_chat_template, get_template

    out = str(tmp_path_factory.mktemp("tiny-chat"))
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(out)
    attach_chat_template(tok, get_template("mftcoder", tok))
    tok.save_pretrained(out)
    return out


@pytest.fixture
def one_thread(monkeypatch):
    """Tiny models run fastest on one thread, and a busy 2-core machine does not thrash (train() reads
    OMP_NUM_THREADS when it starts); the thread count is restored afterwards."""
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)
