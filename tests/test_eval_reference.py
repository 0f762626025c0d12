"""The eval command's multiple-choice log-likelihoods equal transformers' on a tiny random GPT-2
saved with save_pretrained and loaded with our from_pretrained (token ids are bytes here)."""
import numpy as np
import pytest

from tinygrad_llm import evaluate as ev
from tinygrad_llm.models import from_pretrained


class ByteTok:
    eot_id = None

    def encode(self, text):
        return list(text.encode("utf-8"))


@pytest.mark.reference
def test_multiple_choice_log_likelihoods_match_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=256, n_positions=48, n_embd=32, n_layer=2, n_head=4)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = from_pretrained(tmp_path)
    items = [("The cat sat on the", [" mat.", " moon tonight.", " dog"], 0),
             ("Question: Which is a color?\nAnswer:", [" red", " run"], 0),
             ("x" * 60, [" long context, cropped from the left"], 0)]  # longer than n_positions
    got = ev.score_choices(ours, ByteTok(), items, batch_size=2)
    for (context, endings, _), scores in zip(items, got):
        for ending, score in zip(endings, scores):
            cont = list(ending.encode())
            ids = (list(context.encode()) + cont)[-(48 + 1):]
            with torch.no_grad():
                logp = torch.log_softmax(hf(torch.tensor([ids[:-1]])).logits[0].double(), -1)
            n = len(cont)
            want = sum(float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1 - n, len(ids) - 1))
            np.testing.assert_allclose(score, want, rtol=1e-4, atol=1e-4)
