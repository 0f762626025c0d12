"""Text in, text out: a prompt encoded, continued by a model's generate(), decoded.

Works with any tokenizer that has encode/decode (BPETokenizer, CharTokenizer) and any model with
GPT's generate(); the model code itself never sees text.
"""
import numpy as np


def generate_text(model, tok, prompt, max_new_tokens, temperature=0.8, top_k=None, top_p=None,
                  seed=None, num_samples=1):
    """Decoded continuations of prompt (the prompt included), one string per sample."""
    ids = tok.encode(prompt, allowed_special="all")  # a prompt may hold <|endoftext|>
    if not ids:
        raise ValueError("the prompt encodes to no tokens")
    idx = np.tile(np.asarray(ids, dtype=np.int64)[None], (num_samples, 1))
    eos = getattr(tok, "eot_id", None)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         eos_id=eos, seed=seed).numpy()
    texts = [tok.decode(row.tolist()) for row in out]
    return texts[0] if num_samples == 1 else texts
