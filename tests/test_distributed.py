"""Data parallelism on 2 MPI ranks (mpirun started by the tests): gradients, training, ZeRO-1,
exact resume, a failing rank, a mismatched rank; plus the world of one without a launcher."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dist_worker  # noqa: E402
from tinygrad_llm import distributed  # noqa: E402
from tinygrad_llm.checkpoint import load_checkpoint  # noqa: E402
from tinygrad_llm.data import TokenData  # noqa: E402
from tinygrad_llm.data_parallel import partition, rank_seed  # noqa: E402

WORKER = Path(__file__).resolve().parent / "dist_worker.py"
TIMEOUT = 120  # seconds for one mpirun: a hang fails the test instead of stalling the suite


def find_mpirun():
    """mpirun beside this Python (pip install '.[dist]' puts it there), else on PATH."""
    here = Path(sys.executable).parent / "mpirun"
    return str(here) if here.exists() else shutil.which("mpirun")


def mpi_missing():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install '.[dist]')"
    if find_mpirun() is None:
        return "no mpirun found (pip install '.[dist]' installs MPICH's)"
    return None


needs_mpi = pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))


def mpirun(*rank_args, timeout=TIMEOUT):
    """Run `mpirun -n 1 python dist_worker.py ARGS_r : ...` (one rank per argument list; rank_args
    of one list means 2 ranks with the same arguments); returns the CompletedProcess."""
    cmd = [find_mpirun()]
    version = subprocess.run([cmd[0], "--version"], capture_output=True, text=True).stdout
    env = dict(os.environ, TINYGRAD_LLM_SHARDS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               TINYGRAD_LLM_OPTIM_THREADS="1", PYTHONUNBUFFERED="1")
    if "Open MPI" in version:  # as root Open MPI asks for consent; 2 ranks on 2 cores need oversubscribe
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        cmd.append("--oversubscribe")
    if len(rank_args) == 1:
        rank_args = rank_args * 2
    for i, args in enumerate(rank_args):
        cmd += ([":"] if i else []) + ["-n", "1", sys.executable, str(WORKER), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def check(proc):
    assert proc.returncode == 0, f"mpirun exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    check(mpirun(["main", out]))
    return out


def metrics(path):
    return {r["step"]: r for r in map(json.loads, open(path))}


# ---------------------------------------------------------------------------- 2 ranks
@needs_mpi
def test_two_ranks_gradients_equal_one_process_whole_batch(main_run):
    from tinygrad_llm import backend
    from tinygrad_llm.models import GPT, GPTConfig
    backend.manual_seed(0)
    model = GPT(GPTConfig.from_dict(dist_worker.GRAD_MODEL), dtype=np.float64)
    x, y = dist_worker.grad_batch()
    _, loss = model(x, y)
    loss.backward()
    got = np.load(main_run / "grads.npz")
    names = [n for n, _ in model.named_parameters()]
    assert sorted(got.files) == sorted(names)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(got[name], p.grad.data, rtol=1e-11, atol=1e-14, err_msg=name)


class TwoRankData(TokenData):
    """One process drawing what 2 ranks of B/2 rows draw: rank 0's rows, then rank 1's."""

    def __init__(self, seed):
        base = dist_worker.make_data(seed)
        super().__init__(np.concatenate([base.splits["train"], base.splits["val"]]), source_bytes=6000, seed=seed)
        self.meta["vocab_size"] = 13
        self.rank1 = np.random.Generator(np.random.PCG64(rank_seed(seed + 1, 1)))

    def get_batch(self, split, batch_size, block_size, rng=None):
        if rng is not None or split != "train":
            return super().get_batch(split, batch_size, block_size, rng)
        x0, y0 = super().get_batch(split, batch_size // 2, block_size)
        x1, y1 = super().get_batch(split, batch_size // 2, block_size, rng=self.rank1)
        return np.concatenate([x0, x1]), np.concatenate([y0, y1])


@needs_mpi
def test_two_ranks_train_like_one_process_on_their_batches(main_run, tmp_path):
    from tinygrad_llm.train import Trainer
    # eval: the 2 ranks score 4 batches of 2 rows (2 each), the same windows as 2 batches of 4
    cfg = dist_worker.train_config(tmp_path, batch_size=4, eval_iters=2, final_eval="full")
    Trainer(cfg, data=TwoRankData(cfg.seed), log=lambda m: None).run()
    two, one = metrics(main_run / "dp" / "metrics.jsonl"), metrics(tmp_path / "metrics.jsonl")
    assert sorted(two) == sorted(one) == list(range(1, 9))
    for s in one:
        assert two[s]["train_loss"] == pytest.approx(one[s]["train_loss"], rel=1e-5), s
        if one[s]["val_loss"] is not None:  # eval batches split over the ranks, averaged
            assert two[s]["val_loss"] == pytest.approx(one[s]["val_loss"], rel=1e-5), s
    assert two[1]["tokens_per_s"] > 0 and len(two) == 8  # rank 0 alone wrote: one line per step


@needs_mpi
@pytest.mark.parametrize("opt", ["adamw", "muon"])
def test_zero1_gives_the_parameters_of_plain_data_parallelism(main_run, opt):
    plain = load_checkpoint(main_run / f"{opt}_zero0" / "ckpt.safetensors")
    zero = load_checkpoint(main_run / f"{opt}_zero1" / "ckpt.safetensors")
    assert plain["step"] == zero["step"] == 5
    # not atol at float32 rounding: Adam divides each gradient by its own RMS, so an element whose
    # gradient is mostly rounding noise (c_attn's key bias has an exact gradient of 0: softmax
    # ignores a shift of a whole row) moves by rounding noise scaled up to a fraction of lr per step,
    # differently in two runs that sum in different orders; 1e-6 is a thousandth of one step
    lr = dist_worker.train_config("unused").lr
    for name, w in plain["model"].items():
        np.testing.assert_allclose(zero["model"][name], w, rtol=1e-5, atol=1e-3 * lr, err_msg=name)
    init = dist_worker.Trainer(dist_worker.train_config("unused", optimizer=opt), data=dist_worker.make_data(3))
    start = {k: np.array(v) for k, v in init.model.state_dict().items()}
    assert any(not np.allclose(start[k], w) for k, w in plain["model"].items())  # they did train
    # the gathered optimizer state is the plain run's too, in the same layout
    flat_plain = _arrays(plain["optimizer"])
    flat_zero = _arrays(zero["optimizer"])
    assert len(flat_plain) == len(flat_zero) > 0
    for a, b in zip(flat_plain, flat_zero):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
    mem_plain = json.loads((main_run / f"{opt}_zero0" / "memory.json").read_text())
    mem_zero = json.loads((main_run / f"{opt}_zero1" / "memory.json").read_text())
    assert sum(mem_zero) == mem_plain[0] == mem_plain[1]  # the state is split, none duplicated
    assert max(mem_zero) < 0.75 * mem_plain[0]


def _arrays(obj):
    if isinstance(obj, dict):
        return [a for k in sorted(obj, key=str) for a in _arrays(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [a for v in obj for a in _arrays(v)]
    return [obj] if isinstance(obj, np.ndarray) else []


@needs_mpi
def test_resume_of_a_two_rank_run_is_exact(main_run):
    ck = load_checkpoint(main_run / "resume" / "ckpt.safetensors")
    assert ck["step"] == 4 and len(ck["rng"]["ranks"]) == 2
    assert ck["rng"]["ranks"][0]["data"] != ck["rng"]["ranks"][1]["data"]  # each rank its own windows
    check(mpirun(["resume", main_run]))
    full, resumed = metrics(main_run / "full" / "metrics.jsonl"), metrics(main_run / "resume" / "metrics.jsonl")
    assert sorted(resumed) == list(range(1, 9))
    for s in range(5, 9):
        assert resumed[s]["train_loss"] == full[s]["train_loss"], s  # bit for bit
    a = load_checkpoint(main_run / "full" / "ckpt.safetensors")["model"]
    b = load_checkpoint(main_run / "resume" / "ckpt.safetensors")["model"]
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@needs_mpi
def test_a_two_rank_checkpoint_is_refused_on_one_rank(main_run, tmp_path):
    from tinygrad_llm.train import Trainer
    shutil.copy(main_run / "full" / "ckpt.safetensors", tmp_path / "ckpt.safetensors")
    t = Trainer(dist_worker.train_config(tmp_path, model={**dist_worker.MODEL, "dropout": 0.1}),
                data=dist_worker.make_data(3), log=lambda m: None)
    with pytest.raises(ValueError, match="written by 2 rank"):
        t.run(resume=True)


@needs_mpi
def test_an_exception_on_one_rank_aborts_the_job_naming_it(tmp_path):
    proc = mpirun(["crash", tmp_path], timeout=60)  # rank 0 waits in a collective: no abort, no end
    assert proc.returncode != 0
    err = proc.stderr
    assert "[rank 1/2] RuntimeError: injected failure in the data pipeline -- aborting the job" in err, err[-3000:]
    assert "[rank 0/2]" not in err  # rank 0 did nothing wrong; it was ended by the abort


@needs_mpi
def test_sys_exit_on_one_rank_aborts_the_job(tmp_path):
    proc = mpirun(["quit", tmp_path], timeout=60)  # rank 0 waits in an all-reduce for rank 1
    assert proc.returncode != 0
    assert "[rank 1/2] exit: rank 1 found no data -- aborting the job" in proc.stderr, proc.stderr[-3000:]


def mpirun_cli(*rank_argvs, timeout=TIMEOUT):
    """`mpirun -n 1 python -m tinygrad_llm ARGV_0 : -n 1 python -m tinygrad_llm ARGV_1`, from the
    repository root (the package need not be installed)."""
    cmd = [find_mpirun()]
    env = dict(os.environ, TINYGRAD_LLM_SHARDS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    if "Open MPI" in subprocess.run([cmd[0], "--version"], capture_output=True, text=True).stdout:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        cmd.append("--oversubscribe")
    for i, argv in enumerate(rank_argvs):
        cmd += ([":"] if i else []) + ["-n", "1", sys.executable, "-m", "tinygrad_llm", *map(str, argv)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    return proc, time.perf_counter() - t


def tiny_train_argv(data, out_dir):
    return ["train", "--data", data, "--out-dir", out_dir, "--tokenizer", "char", "--n-layer", 1,
            "--n-head", 2, "--n-embd", 16, "--block-size", 8, "--batch-size", 2, "--max-iters", 20,
            "--max-seconds", 0, "--eval-every", 10, "--eval-iters", 2, "--sample-tokens", 0, "--shards", 1]


@needs_mpi
def test_a_usage_error_on_one_rank_ends_the_whole_job(tmp_path):
    # the reported hang: rank 1's one-line usage error was turned into an exit status outside the
    # abort guard, and rank 0 waited in its first collective for ever
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question\n" * 200)
    good = tiny_train_argv(text, tmp_path / "run")
    bad = [a if a != text else "/no/such/file" for a in good]
    proc, seconds = mpirun_cli(good, bad, timeout=90)
    assert proc.returncode != 0
    assert "[rank 1/2] error: --data /no/such/file" in proc.stderr, proc.stderr[-3000:]
    assert "-- aborting the job" in proc.stderr
    assert seconds < 60, seconds


@needs_mpi
def test_a_failing_checkpoint_write_ends_the_whole_job(tmp_path):
    proc = mpirun(["save_fails", tmp_path], timeout=60)  # rank 1 then waits in the next all-reduce
    assert proc.returncode != 0
    assert "[rank 0/2] OSError: [Errno 28] No space left on device" in proc.stderr, proc.stderr[-3000:]
    assert "-- aborting the job" in proc.stderr


@needs_mpi
def test_a_rank_with_another_config_is_refused(tmp_path):
    proc = mpirun(["mismatch", tmp_path, 1], ["mismatch", tmp_path, 2], timeout=60)
    assert proc.returncode != 0
    assert "refusing to start: rank 1 has config" in proc.stderr, proc.stderr[-3000:]
    assert "seed: 1 on rank 0, 2 on rank 1" in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing trained


# ------------------------------------------------------------------------ world of one
def test_without_a_launcher_the_world_is_one_process(monkeypatch):
    for var in distributed.LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(distributed, "_world", None)
    world = distributed.init()
    assert (world.rank, world.size, world.local_rank, world.comm) == (0, 1, 0, None)
    buf = np.arange(4, dtype=np.float32)
    assert world.allreduce_(buf) is buf and buf.tolist() == [0, 1, 2, 3]
    assert world.mean(2.5) == 2.5 and world.sum([1.0, 2.0]) == [1.0, 2.0]
    assert world.allgather_json({"a": 1}) == [{"a": 1}]
    out = np.empty(2, np.float32)
    world.reduce_scatter(np.array([1, 2], np.float32), [2], out)
    assert out.tolist() == [1, 2]
    distributed.check_same(world, {"anything": 1})  # nothing to compare with


def test_partition_cuts_whole_parameters_near_equal_blocks():
    offsets = [0, 10, 20, 30, 40]
    assert partition(offsets, 2) == [0, 2, 4]
    assert partition([0, 100, 101, 102], 2) == [0, 1, 3]  # one big parameter: its own block
    assert partition([0, 5], 3) == [0, 0, 1, 1]  # more ranks than parameters: empty blocks


def test_config_hash_names_the_differing_keys():
    assert distributed.config_hash({"a": 1, "b": 2}) == distributed.config_hash({"b": 2, "a": 1})
    assert distributed.config_hash({"a": 1}) != distributed.config_hash({"a": 2})
    assert len(distributed.code_hash()) == 12


def test_ci_runs_the_readme_test_command_with_mpi_then_the_parity_tests():
    root = Path(__file__).resolve().parents[1]
    command = 'pip install ".[test,dist]" && python -m pytest'
    assert command in (root / "README.md").read_text()
    steps = [line for line in (root / ".ci" / "run").read_text().splitlines()
             if line and not line.startswith(("#", "set ", "cd "))]
    assert steps[0] == command
    assert steps[-1] == "python -m pytest -m reference"
    assert '"mpi4py' in (root / "pyproject.toml").read_text()


# ------------------------------------------------------------------------------- NCCL (GPU)
@pytest.mark.gpu
def test_nccl_collectives_in_a_world_of_one():
    """NCCL itself, with one rank: the unique id, the communicator and each collective's call."""
    import cupy as cp
    comm = distributed.NcclComm(distributed.World())
    for dtype in (cp.float32, cp.float64):
        buf = cp.arange(10, dtype=dtype)
        comm.allreduce_(buf)  # the sum over one rank: itself
        comm.broadcast_(buf, 0)
        out = cp.empty(10, dtype=dtype)
        comm.reduce_scatter(buf, [10], out, 0)
        comm.allgather_(out, [10])
        cp.cuda.get_current_stream().synchronize()
        assert buf.tolist() == out.tolist() == list(range(10))
    loss = cp.asarray(2.5, dtype=cp.float32)
    assert distributed.World().mean(loss) is loss  # one rank: the device scalar, unread


@needs_mpi
@pytest.mark.gpu
def test_two_gpus_over_nccl(tmp_path):
    """2 ranks, one GPU each: NCCL's collectives, then 2 x 3 rows' gradients equal 6 rows' on the CPU."""
    import cupy as cp
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs 2 GPUs (one per rank: NCCL refuses two ranks on one device)")
    check(mpirun(["nccl", tmp_path]))
    from tinygrad_llm import backend
    from tinygrad_llm.models import GPT, GPTConfig
    backend.manual_seed(0)
    model = GPT(GPTConfig.from_dict(dist_worker.GRAD_MODEL), dtype=np.float64)
    x, y = dist_worker.grad_batch()
    _, loss = model(x, y)
    loss.backward()
    got = np.load(tmp_path / "grads.npz")
    for name, p in model.named_parameters():
        np.testing.assert_allclose(got[name], p.grad.data, rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.gpu
def test_zero1_on_the_gpu_matches_the_plain_step(tmp_path):
    """ZeRO-1's block step on CuPy buffers (a world of one) against the ordinary optimizer step."""
    from tinygrad_llm import backend
    from tinygrad_llm.train import Trainer
    runs = {}
    for zero in (0, 1):
        cfg = dist_worker.train_config(tmp_path / str(zero), device="cuda", zero=zero, max_iters=4,
                                       eval_every=4)
        t = Trainer(cfg, data=dist_worker.make_data(3), log=lambda m: None)
        t.run()
        runs[zero] = {k: backend.to_numpy(getattr(v, "data", v)) for k, v in t.model.state_dict().items()}
    for name, w in runs[0].items():
        np.testing.assert_allclose(runs[1][name], w, rtol=1e-5, atol=1e-6, err_msg=name)
