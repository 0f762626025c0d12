"""Document masking: segment ids from <|endoftext|>, and a GPT whose documents do not see each other."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_llm.autograd import no_grad
from tinygrad_llm.data import document_segments
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.tensor import Tensor

EOT = 7


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), min_size=6, max_size=6), min_size=1, max_size=3))
def test_segments_change_exactly_at_each_separator(rows):
    ids = np.array(rows, dtype=np.int64)
    seg = document_segments(ids, EOT)
    assert seg.shape == ids.shape and seg.dtype.kind == "i"
    for b in range(ids.shape[0]):
        for i in range(ids.shape[1]):
            for j in range(i, ids.shape[1]):
                same_document = not (ids[b, i + 1:j + 1] == EOT).any()
                assert (seg[b, i] == seg[b, j]) == same_document


def _logits(model, ids, seg=None):
    with no_grad():
        logits, _ = model(Tensor(ids), segment_ids=seg)
    return logits.data


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_a_document_does_not_see_the_one_before(pos):
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, pos=pos))
    rng = np.random.default_rng(0)
    a = rng.integers(0, 7, size=(2, 5))
    b = rng.integers(0, 7, size=(2, 9))
    row = np.concatenate([a, np.full((2, 1), EOT), b], axis=1)  # (2, 15): document a, then b
    other = row.copy()
    other[:, :5] = rng.integers(0, 7, size=(2, 5))  # a different first document
    seg = document_segments(row, EOT)
    np.testing.assert_array_equal(seg, document_segments(other, EOT))
    masked, masked_other = _logits(model, row, seg), _logits(model, other, seg)
    np.testing.assert_array_equal(masked[:, 5:], masked_other[:, 5:])  # b is blind to a
    assert not np.allclose(_logits(model, row)[:, 5:], _logits(model, other)[:, 5:])  # unmasked: not
    np.testing.assert_allclose(masked[:, :5], _logits(model, row[:, :5]), rtol=1e-5, atol=1e-6)
    if pos == "rope":  # relative positions: b packed after a is b alone
        np.testing.assert_allclose(masked[:, 5:], _logits(model, row[:, 5:]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("masked", [True, False])
def test_gradients_stay_within_their_document(masked):
    model = GPT(GPTConfig(vocab_size=11, block_size=12, n_layer=1, n_head=2, n_embd=8))
    ids = np.array([[1, 2, 3, EOT, 4, 5, 6, 2, 1, 3]])
    logits, _ = model(Tensor(ids), segment_ids=document_segments(ids, EOT) if masked else None)
    pick = np.zeros(logits.shape, dtype=logits.data.dtype)
    pick[0, 3:] = 1.0  # the second document's outputs only
    (logits * Tensor(pick)).sum().backward()
    # the position embeddings of the first document's places feed nothing else
    grad = model.transformer.wpe.weight.grad.data
    reached = np.abs(grad[:3]).max()
    assert (reached == 0.0) if masked else (reached > 0.0)
    assert np.abs(grad[3:10]).max() > 0.0


def test_segment_ids_are_checked():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match=r"segment_ids must be \(B, T\) = \(1, 4\)"):
        model(Tensor(np.zeros((1, 4), dtype=np.int64)), segment_ids=np.zeros((1, 3), dtype=np.int64))


def test_doc_mask_needs_the_separator_id(tmp_path):
    from tinygrad_llm.data import TokenData
    from tinygrad_llm.train import TrainConfig, Trainer
    data = TokenData(np.arange(200) % 11, source_bytes=400)
    data.meta["vocab_size"] = 11
    cfg = TrainConfig(out_dir=str(tmp_path), model=dict(block_size=8, n_layer=1, n_head=2, n_embd=8),
                      doc_mask=True)
    with pytest.raises(ValueError, match=re.escape("doc_mask needs the id of <|endoftext|>")):
        Trainer(cfg, data=data, log=lambda m: None)


def test_training_with_doc_mask_from_shards(tmp_path):
    from test_shard_data import tiny_corpus
    from tinygrad_llm.train import TrainConfig, Trainer
    folder, _ = tiny_corpus(tmp_path)
    runs = {}
    for mask in (False, True):
        cfg = TrainConfig(data=str(folder), out_dir=str(tmp_path / str(mask)), batch_size=4, max_iters=3,
                          model=dict(block_size=16, n_layer=1, n_head=2, n_embd=16), eval_iters=2,
                          log_every=1, doc_mask=mask, final_eval="sample")
        runs[mask] = Trainer(cfg, log=lambda m: None).run()
    assert runs[True]["status"] == "done"
    assert runs[True]["val_loss"] != runs[False]["val_loss"]  # the mask changes what the model sees
