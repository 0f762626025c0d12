"""The GPU training step's host syncs, counted on the CPU: a stand-in CuPy (tests/fake_cupy.py)
declares a sync wherever real CuPy would copy a device value to the host, and the package's
counter (cuda/syncs.py) attributes each to its file:line."""
import numpy as np
import pytest

from fake_cupy import FakeCupy
from tinygrad_llm import Tensor, backend, cuda, optim
from tinygrad_llm.cuda import syncs
from tinygrad_llm.data import TokenData
from tinygrad_llm.train import Trainer, TrainConfig

@pytest.fixture
def fake_gpu(monkeypatch):
    """Every "cuda" array is a FakeArray; the kernels are off (the stand-in runs no kernels)."""
    fake = FakeCupy()
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setattr(backend, "cupy", lambda: fake)
    monkeypatch.setattr(backend, "_rng", dict(backend._rng))
    was = cuda.enabled()
    cuda.set_enabled(False)
    yield fake
    cuda.set_enabled(was)
    syncs._take()


def _data(bad_target_at=None):
    ids = np.random.default_rng(0).integers(0, 13, 3000).astype(np.int64)
    if bad_target_at is not None:
        ids[:] = 99  # every batch has ids outside the vocabulary
    d = TokenData(ids, source_bytes=6000, seed=0)
    d.meta["vocab_size"] = 13
    return d


def _trainer(tmp_path, dropout=0.1, **kw):
    cfg = TrainConfig(out_dir=str(tmp_path), model=dict(block_size=8, n_layer=1, n_head=2, n_embd=16,
                                                        dropout=dropout),
                      batch_size=4, max_iters=8, warmup_iters=2, eval_every=0, log_every=1, seed=3,
                      device="cuda", shards=1, grad_clip=1.0, **kw)
    return Trainer(cfg, data=_data(), log=lambda m: None)


def _step(trainer, fake, log):
    with syncs.counting(fake) as count:
        with syncs.deferred_checks():
            loss, _ = trainer.train_step()
        if log:
            loss = syncs.read(loss)
    return count, loss


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_training_step_syncs_only_when_it_logs(fake_gpu, tmp_path, optimizer):
    """Target: 0 host syncs on a step that does not log its loss, 1 on a step that does."""
    t = _trainer(tmp_path, optimizer=optimizer)
    _step(t, fake_gpu, log=True)  # the first step builds the optimizer's buckets
    quiet, _ = _step(t, fake_gpu, log=False)
    logged, value = _step(t, fake_gpu, log=True)
    assert isinstance(value, float) and np.isfinite(value)
    assert quiet.total == 0, quiet.lines()
    assert logged.total == 1, logged.lines()  # the loss read


def test_a_bad_token_id_is_raised_at_the_logged_read(fake_gpu, tmp_path):
    t = _trainer(tmp_path, dropout=0.0)
    x, y = _data(bad_target_at=0).get_batch("train", 4, 8)
    with syncs.counting(fake_gpu) as count, syncs.deferred_checks():
        _, loss = t.model(t._dev(x), t._dev(y))  # queued, not read: the step goes on
    assert count.total == 0, count.lines()
    with pytest.raises(ValueError, match="token id 99 is outside the vocabulary"):
        syncs.read(loss.data)
    assert not syncs._queue  # read once, then gone


def test_device_checks_outside_a_deferred_block_raise_at_once(fake_gpu):
    import tinygrad_llm.functional as F
    logits = Tensor(fake_gpu.asarray(np.zeros((3, 5), np.float32)))
    targets = Tensor(fake_gpu.asarray(np.array([0, 7, 1])))
    with pytest.raises(ValueError, match=r"target 7 at index \(1,\) is outside \[0, 5\)"):
        F.cross_entropy(logits, targets)
    with syncs.deferred_checks():
        loss = F.cross_entropy(logits, targets)
    with pytest.raises(ValueError, match="target 7"):
        syncs.read(loss.data)


def test_clip_on_the_device_is_one_reduction_per_bucket_and_matches_the_cpu(fake_gpu):
    from tinygrad_llm import nn
    from tinygrad_llm.optim.clip import flat_buffers
    rng = np.random.default_rng(5)
    shapes = [(7, 3), (3,), (4, 4)]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [rng.standard_normal(s) * 10 for s in shapes]
    dev = [nn.Parameter(Tensor(fake_gpu.asarray(a.copy()))) for a in init]
    opt = optim.AdamW(dev, lr=0.0)
    opt.zero_grad()  # hands each parameter a view of the bucket's flat gradient
    for p, g in zip(dev, grads):
        p.grad.data[...] = fake_gpu.asarray(g)
    assert len(flat_buffers([p.grad.data for p in dev])) == 1
    with syncs.counting(fake_gpu) as count:
        total = optim.clip_grad_norm_(dev, 1.0)
    assert count.total == 0
    cpu = [nn.Parameter(Tensor(a.copy())) for a in init]
    for p, g in zip(cpu, grads):
        p.grad = Tensor(g.copy())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "_cupy", None)
        want = optim.clip_grad_norm_(cpu, 1.0)
    assert float(total) == pytest.approx(want, rel=1e-12)
    for p, q in zip(dev, cpu):
        np.testing.assert_allclose(p.grad.data.get(), q.grad.data, rtol=1e-12)


def test_a_resumed_gpu_run_draws_the_same_dropout_masks(fake_gpu, tmp_path):
    """The GPU generator's state (seed, counter) is in the checkpoint: resuming continues its
    stream instead of starting it again."""
    def steps(t, n):
        out = []
        for _ in range(n):
            with syncs.deferred_checks():
                loss, _ = t.train_step()
            out.append(syncs.read(loss))
            t.step += 1
        return out
    first = _trainer(tmp_path, dropout=0.3)
    steps(first, 2)
    first.save()
    want = steps(first, 2)
    resumed = _trainer(tmp_path, dropout=0.3)
    resumed.load()
    assert steps(resumed, 2) == want


def test_bench_reports_the_syncs_per_step_by_place(fake_gpu, capsys):
    """`python -m tinygrad_llm bench --device cuda` prints the sync counts of a step that does not
    log and of one that does."""
    import argparse
    from tinygrad_llm.cli import bench
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--device", "cuda", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                              "--block-size", "8", "--batch-size", "2", "--steps", "1", "--warmup", "1",
                              "--shards", "1"])  # the stand-in arrays are NumPy subclasses: no CPU sharding
    bench.main(args)
    out = capsys.readouterr().out
    assert "host syncs per step: 0 when the loss is not logged, 1 when it is" in out
    assert "logged         1  (outside tinygrad_llm)" not in out  # the read is attributed to its line
    assert "tinygrad_llm/cli/bench.py:" in out
