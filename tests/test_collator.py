"""collate: exact tensors on a hand-built micro-batch."""
import numpy as np
import pytest
import torch

from mftcoder.data.collator import collate

PAD = 0


def sample(ids, mask):
    return np.array(ids, dtype=np.int32), np.array(mask, dtype=np.uint8)


def test_exact_tensors_for_a_packed_and_a_padded_row():
    a = sample([10, 11, 12, 13], [0, 0, 1, 1])  # 3 positions: inputs 10 11 12, targets (11) 12 13
    b = sample([20, 21, 22], [0, 1, 0])  # 2 positions: inputs 20 21, targets 21 (22)
    c = sample([30, 31, 32], [1, 1, 1])  # 2 positions in a row of its own
    batch = collate([[a, b], [c]], task_ids=[2, 5], pad_id=PAD)
    L = torch.tensor
    assert torch.equal(batch["input_ids"], L([[10, 11, 12, 20, 21], [30, 31, PAD, PAD, PAD]]))
    assert torch.equal(batch["labels"], L([[-100, 12, 13, 21, -100], [31, 32, -100, -100, -100]]))
    # positions restart per sample; pad positions continue after the row's last sample (never a new sequence)
    assert torch.equal(batch["position_ids"], L([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]))
    assert torch.equal(batch["sample_ids"], L([[0, 0, 0, 1, 1], [2, 2, -1, -1, -1]]))
    assert torch.equal(batch["sample_task_ids"], L([2, 2, 5]))
    assert torch.equal(batch["task_ids"], L([2, 5]))
    assert batch["num_loss_tokens"] == 5 and isinstance(batch["num_loss_tokens"], int)
    for key in ("input_ids", "labels", "position_ids", "sample_ids", "sample_task_ids", "task_ids"):
        assert batch[key].dtype == torch.long, key
    assert "attention_mask" not in batch  # an all-ones mask would let packed samples attend to each other


def test_pad_to_multiple_of_and_pad_id():
    a = sample([10, 11, 12, 13, 14], [1, 1, 1, 1, 1])
    batch = collate([[a]], task_ids=[0], pad_id=7, pad_to_multiple_of=8)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 7, 7, 7, 7]]
    assert batch["labels"].tolist() == [[11, 12, 13, 14, -100, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [list(range(8))]
    assert batch["sample_ids"].tolist() == [[0, 0, 0, 0, -1, -1, -1, -1]]
    assert batch["num_loss_tokens"] == 4
    # already a multiple: no extra padding
    assert collate([[a]], [0], 7, pad_to_multiple_of=4)["input_ids"].shape == (1, 4)


def test_bad_input_raises_clear_errors():
    good = sample([1, 2, 3], [1, 1, 1])
    with pytest.raises(ValueError, match="1 task ids for 2 units"):
        collate([[good], [good]], [0], PAD)
    with pytest.raises(ValueError, match="unit 1 of the micro-batch holds no sample"):
        collate([[good], []], [0, 0], PAD)
    with pytest.raises(ValueError, match="unit 0 sample 1 has 1 token"):
        collate([[good, sample([4], [1])]], [0], PAD)
    with pytest.raises(ValueError, match="unit 0 sample 0: input_ids .* must be 1-D of equal length"):
        collate([[(np.array([1, 2, 3]), np.array([1, 1]))]], [0], PAD)
