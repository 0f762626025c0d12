"""The same GPT-2-style model in tinygrad_llm and in PyTorch, for the training-step benchmarks.

cfg is a dict with n_layer, n_head, n_embd, block_size, vocab_size. Both models: learned
positions, pre-norm blocks with layer norm, fused causal attention, tanh-GELU MLP (4x), tied
input/output embeddings, biases on.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tinygrad_llm as tl  # noqa: E402
from tinygrad_llm import optim, parallel  # noqa: E402
from tinygrad_llm.models import GPT, GPTConfig  # noqa: E402


def build_ours(cfg):
    tl.manual_seed(0)
    return GPT(GPTConfig(vocab_size=cfg["vocab_size"], block_size=cfg["block_size"],
                         n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"]))


def build_torch(cfg):
    """The PyTorch twin (eager, float32); the returned model maps (idx, targets) to the loss."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as TF
    torch.manual_seed(0)
    C, H, L, V, T = cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["vocab_size"], cfg["block_size"]

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = tnn.LayerNorm(C), tnn.LayerNorm(C)
            self.c_attn, self.c_proj = tnn.Linear(C, 3 * C), tnn.Linear(C, C)
            self.c_fc, self.mlp_proj = tnn.Linear(C, 4 * C), tnn.Linear(4 * C, C)

        def forward(self, x):
            B, T_, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T_, H, C // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hs)
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T_, C))  # (B, T, C)
            return x + self.mlp_proj(TF.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class Model(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = tnn.Embedding(V, C), tnn.Embedding(T, C)
            self.h = tnn.ModuleList([Block() for _ in range(L)])
            self.ln_f = tnn.LayerNorm(C)
            self.lm_head = tnn.Linear(C, V, bias=False)
            self.lm_head.weight = self.wte.weight  # weight tying, as GPT-2

        def forward(self, idx, targets):
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for b in self.h:
                x = b(x)
            logits = self.lm_head(self.ln_f(x))
            return TF.cross_entropy(logits.view(-1, V), targets.view(-1))

    return Model()


def ours_step(model, lr, betas, shards=None):
    """One training step of ours, as train.py runs it: forward and backward (the batch in one row
    shard per core, parallel.py), clip at 1.0, AdamW (decay 0.1 on matrices)."""
    opt = optim.AdamW(optim.param_groups_for_weight_decay(model, 0.1), lr=lr, betas=betas)
    params = list(model.parameters())

    def step(x, y):
        loss = parallel.loss_backward(lambda xs, ys: model(xs, ys)[1], x, y, shards=shards)
        optim.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        return loss  # a float: on the GPU a device sync, as in a real loop that logs the loss
    return step



def torch_step(model, lr, betas, to_tensor=None, **adamw_kwargs):
    """The same step in PyTorch; to_tensor converts each batch array first (None: use as is)."""
    import torch
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=betas, **adamw_kwargs)

    def step(x, y):
        if to_tensor is not None:
            x, y = to_tensor(x), to_tensor(y)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step
