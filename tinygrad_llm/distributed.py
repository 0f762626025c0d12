"""Data parallelism across processes and machines: MPI (mpi4py) on the CPU, NCCL on NVIDIA GPUs.

    world = distributed.init()          # rank, size, local_rank from the MPI launcher
    world.allreduce_(flat_grad)         # in place: the sum over ranks, on every rank
    world.mean(loss)                    # a Python float averaged over ranks
    world.broadcast_(weights)           # rank 0's values everywhere

Launch with `mpirun -n N python -m tinygrad_llm train ...`. Started without a launcher (no MPI
environment variables), init() returns a world of one without importing mpi4py, so a plain run
needs no MPI installed and every collective is a no-op.

Transports. On the CPU every collective is an MPI call on the world communicator; float buffers
are reduced in place (`Allreduce(IN_PLACE, buf)`: no second buffer, no copy). On GPUs (CuPy
arrays) the float collectives go through NCCL (`cupy.cuda.nccl`), which moves GPU memory over
NVLink / InfiniBand itself; MPI only starts it: rank 0 makes the NCCL unique id and broadcasts it
over MPI (as llm.c does), and each rank uses the GPU numbered by its local rank (its index among
the ranks on its machine). Small host-side values (scalars, hashes, RNG states) always go over MPI.

Faults. With more than one rank, an uncaught exception on any rank prints the rank and its error
and calls MPI Abort, which ends every rank of the job at once instead of leaving the others
waiting forever in a collective. check_same() refuses ranks started with a different config or
code (every rank compares its hashes with rank 0's; errors name both).
"""
import hashlib
import json
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# Variables a launcher sets in every rank: MPICH/Hydra and Intel MPI (PMI_*), Open MPI (OMPI_*),
# PMIx-based launchers (PMIX_RANK). Without one of them we are not under mpirun.
LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")

_world = None


class World:
    """This process's place in the job and the collectives training uses.

    rank, size     this process's index and the number of processes
    local_rank     its index among the processes on its machine (picks its GPU)
    comm           the mpi4py world communicator (None in a world of one)
    """

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.local_rank = 0
        if comm is not None:
            from mpi4py import MPI
            local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
            local.Free()
        else:
            self.local_size = 1
        self._nccl = None

    @property
    def is_main(self):
        """Rank 0: the one that prints, writes metrics and checkpoints."""
        return self.rank == 0

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    # ------------------------------------------------------------------------------- buffers
    def allreduce_(self, buf):
        """Sum a contiguous float array over ranks, in place; returns it."""
        if self.size == 1:
            return buf
        _check_contiguous(buf, "allreduce_")
        if _is_cupy(buf):
            self._nccl_comm().allreduce_(buf)
        else:
            from mpi4py import MPI
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return buf

    def broadcast_(self, buf, root=0):
        """Overwrite buf with root's values on every rank, in place; returns it."""
        if self.size == 1:
            return buf
        _check_contiguous(buf, "broadcast_")
        if _is_cupy(buf):
            self._nccl_comm().broadcast_(buf, root)
        else:
            self.comm.Bcast(buf, root=root)
        return buf

    def reduce_scatter(self, buf, counts, out):
        """Sum buf over ranks and keep this rank's block: out (counts[rank] elements) receives
        elements [sum(counts[:rank]), sum(counts[:rank + 1])) of the sum. sum(counts) == buf.size."""
        lo = sum(counts[:self.rank])
        if self.size == 1:
            out[...] = buf[lo:lo + counts[self.rank]]
            return out
        _check_contiguous(buf, "reduce_scatter")
        if _is_cupy(buf):
            self._nccl_comm().reduce_scatter(buf, counts, out, self.rank)
        else:
            from mpi4py import MPI
            self.comm.Reduce_scatter(buf, out, recvcounts=list(counts), op=MPI.SUM)
        return out

    def allgather_(self, buf, counts):
        """Every rank's block of buf (block r: counts[r] elements, in rank order) everywhere, in
        place: after it buf is the same on all ranks."""
        if self.size == 1:
            return buf
        _check_contiguous(buf, "allgather_")
        if _is_cupy(buf):
            self._nccl_comm().allgather_(buf, counts)
        else:
            from mpi4py import MPI
            displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
            self.comm.Allgatherv(MPI.IN_PLACE, [buf, list(counts), displs, _mpi_type(buf)])
        return buf

    def gather(self, block, counts, out=None, root=0):
        """Every rank's block (counts[r] elements) in rank order in out on root; None elsewhere.
        Host (NumPy) arrays only: for checkpoints, not for the step."""
        if self.size == 1:
            out[...] = block
            return out
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        recv = [out, list(counts), displs, _mpi_type(block)] if self.rank == root else None
        self.comm.Gatherv(block, recv, root=root)
        return out if self.rank == root else None

    # ------------------------------------------------------------------------------- scalars
    def sum(self, values):
        """The sum over ranks of a float or a list of floats (float64 on the wire; a one-element
        device array is read to the host first)."""
        scalar = np.ndim(values) == 0
        arr = np.array([float(v) for v in ([values] if scalar else values)], dtype=np.float64)
        if self.size > 1:
            from mpi4py import MPI
            self.comm.Allreduce(MPI.IN_PLACE, arr, op=MPI.SUM)
        return float(arr[0]) if scalar else arr.tolist()

    def mean(self, value):
        """A float averaged over ranks (NaN or inf on any rank makes it non-finite everywhere).
        A one-element CuPy array stays on the device: averaged over NCCL, never read to the host."""
        if _is_cupy(value):
            if self.size == 1:
                return value
            buf = value.reshape(1).copy()  # NCCL reduces in place: not into the caller's array
            self.allreduce_(buf)
            return buf[0] / self.size
        return self.sum(value) / self.size if self.size > 1 else float(value)

    # ---------------------------------------------------------------- small JSON-able values
    def broadcast_json(self, obj, root=0):
        """root's obj (anything json.dumps takes) on every rank; sent as UTF-8 bytes, never pickled."""
        if self.size == 1:
            return obj
        raw = json.dumps(obj).encode() if self.rank == root else b""
        n = np.array([len(raw)], dtype=np.int64)
        self.comm.Bcast(n, root=root)
        buf = np.frombuffer(raw, dtype=np.uint8).copy() if self.rank == root else np.empty(int(n[0]), np.uint8)
        self.comm.Bcast(buf, root=root)
        return json.loads(buf.tobytes().decode())

    def allgather_json(self, obj):
        """[rank 0's obj, rank 1's, ...] on every rank (JSON over MPI, never pickled)."""
        if self.size == 1:
            return [obj]
        from mpi4py import MPI
        raw = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8).copy()
        sizes = np.zeros(self.size, dtype=np.int64)
        self.comm.Allgather(np.array([raw.size], dtype=np.int64), sizes)
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        out = np.empty(int(sizes.sum()), dtype=np.uint8)
        self.comm.Allgatherv(raw, [out, sizes.tolist(), displs, MPI.BYTE])
        return [json.loads(out[d:d + s].tobytes().decode()) for d, s in zip(displs, sizes.tolist())]

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()

    def abort(self, code=1):
        """End every rank of the job now (MPI Abort); in a world of one, exit this process."""
        if self.size > 1:
            self.comm.Abort(code)
        sys.exit(code)

    # -------------------------------------------------------------------------------- NCCL
    def _nccl_comm(self):
        if self._nccl is None:
            self._nccl = NcclComm(self)
        return self._nccl


def init(device="cpu", abort_on_error=True):
    """The job's World (made once per process; later calls return the same one).

    Under mpirun/mpiexec: the MPI world, with each rank's GPU picked by its local rank when
    device is "cuda", and (abort_on_error, size > 1) an exception hook that aborts the job.
    Without a launcher: a world of one, mpi4py not even imported.
    """
    global _world
    if _world is None:
        if not launched_by_mpi():
            _world = World()
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                raise ImportError("started by an MPI launcher but mpi4py is not installed: "
                                  "pip install '.[dist]' (mpi4py and MPICH)") from None
            _world = World(MPI.COMM_WORLD)
            if abort_on_error and _world.size > 1:
                install_abort_hook(_world)
    if device == "cuda" and _world.size > 1:
        _use_local_gpu(_world)
    return _world


def launched_by_mpi():
    return any(v in os.environ for v in LAUNCHER_VARS)


def install_abort_hook(world):
    """Uncaught exceptions print '[rank r/N] <traceback>' and abort the whole job (MPI Abort):
    the other ranks would otherwise wait forever in their next collective."""
    def hook(kind, value, tb):
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write(f"[rank {world.rank}/{world.size}] {text}")
        _abort_job(world, f"{kind.__name__}: {value}")
    sys.excepthook = hook


@contextmanager
def abort_on_exit(world):
    """Turn a failing sys.exit on one rank into an abort of the job. SystemExit never reaches the
    exception hook, and a rank leaving through MPI's finalize waits there for the others, which
    wait in their next collective for it: the job would hang."""
    try:
        yield
    except SystemExit as e:
        if world.size > 1 and e.code not in (None, 0):
            _abort_job(world, f"exit: {e.code}", code=e.code if isinstance(e.code, int) else 1)
        raise


def end_job_on_failure(status, message):
    """Called by the command line as a rank returns a failing status (a usage error, Ctrl-C):
    under mpirun with more than one rank, print '[rank r/N] message' and abort the whole job, as
    the exception hook does for an exception. A rank that just returned would wait in MPI's
    finalize, and the others in their next collective for it: the job would hang. Does nothing
    in a world of one or before any world was made."""
    if status and _world is not None and _world.size > 1:
        _abort_job(_world, message, code=status)


def _abort_job(world, message, code=1):
    sys.stderr.write(f"[rank {world.rank}/{world.size}] {message} -- aborting the job\n")
    sys.stderr.flush()
    sys.stdout.flush()
    world.comm.Abort(code)


def _use_local_gpu(world):
    import cupy
    n = cupy.cuda.runtime.getDeviceCount()
    if world.local_size > n:
        raise RuntimeError(f"rank {world.rank}: {world.local_size} ranks on this machine but only {n} "
                           "GPUs; start at most one rank per GPU")
    cupy.cuda.Device(world.local_rank).use()


# ------------------------------------------------------------------------------------- NCCL
NCCL_UNIQUE_ID_BYTES = 128  # sizeof(ncclUniqueId)


def nccl_id_bytes(uid):
    """The 128 bytes of an NCCL unique id as unsigned values 0..255, from either form CuPy gives:
    `bytes` (CuPy 14 and later) or a tuple of signed chars -128..127 (CuPy 13 and earlier)."""
    raw = np.frombuffer(uid, np.uint8) if isinstance(uid, (bytes, bytearray)) else \
        np.array([int(b) & 0xFF for b in uid], np.uint8)
    if raw.size != NCCL_UNIQUE_ID_BYTES:
        raise ValueError(f"NCCL unique id of {raw.size} bytes, expected {NCCL_UNIQUE_ID_BYTES}")
    return raw


def nccl_id_for_cupy(raw, cupy_major):
    """The id as NcclCommunicator takes it: `bytes` since CuPy 14, before that a tuple of signed
    chars (its constructor stores each one in a C char, which refuses 128..255)."""
    raw = np.asarray(raw, np.uint8)
    if cupy_major >= 14:
        return raw.tobytes()
    return tuple(int(b) for b in raw.view(np.int8))


def _cupy_major():
    import cupy
    return int(cupy.__version__.split(".")[0])


class NcclComm:
    """An NCCL communicator over the MPI world: rank 0 makes the unique id, MPI broadcasts it as
    128 unsigned bytes, every rank rebuilds the form its CuPy takes and joins with its rank.
    Collectives run on the current CuPy stream."""

    def __init__(self, world):
        try:
            from cupy.cuda import nccl
        except ImportError:
            nccl = None
        if nccl is None or not getattr(nccl, "available", True):
            raise RuntimeError(f"rank {world.rank}: CuPy has no NCCL; install the library CuPy loads "
                               "(python -m cupyx.tools.install_library --library nccl --cuda 12.x, "
                               "or NCCL from NVIDIA's packages)")
        self.nccl, self.world = nccl, world
        raw = np.empty(NCCL_UNIQUE_ID_BYTES, np.uint8)
        if world.rank == 0:
            raw[:] = nccl_id_bytes(nccl.get_unique_id())
        world.broadcast_(raw)  # a NumPy buffer: over MPI, rank 0's 128 bytes everywhere
        self.comm = nccl.NcclCommunicator(world.size, nccl_id_for_cupy(raw, _cupy_major()), world.rank)

    def _dtype(self, buf):
        types = {"float32": self.nccl.NCCL_FLOAT32, "float64": self.nccl.NCCL_FLOAT64,
                 "float16": self.nccl.NCCL_FLOAT16, "bfloat16": getattr(self.nccl, "NCCL_BFLOAT16", None)}
        t = types.get(buf.dtype.name)
        if t is None:
            raise TypeError(f"NCCL collectives: unsupported dtype {buf.dtype}")
        return t

    @staticmethod
    def _stream():
        import cupy
        return cupy.cuda.get_current_stream().ptr

    def allreduce_(self, buf):
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._dtype(buf), self.nccl.NCCL_SUM,
                            self._stream())

    def broadcast_(self, buf, root):
        self.comm.bcast(buf.data.ptr, buf.size, self._dtype(buf), root, self._stream())

    def reduce_scatter(self, buf, counts, out, rank):
        lo = sum(counts[:rank])
        if len(set(counts)) == 1:  # NCCL's reduce-scatter takes equal blocks only
            self.comm.reduceScatter(buf.data.ptr, out.data.ptr, counts[0], self._dtype(buf),
                                    self.nccl.NCCL_SUM, self._stream())
        else:  # unequal blocks: the whole sum, then our block (twice the traffic, still exact)
            self.allreduce_(buf)
            out[...] = buf[lo:lo + counts[rank]]

    def allgather_(self, buf, counts):
        # unequal blocks: one broadcast per rank inside a group (NCCL runs them as one launch)
        self.nccl.groupStart()
        lo = 0
        for r, c in enumerate(counts):
            if c:
                view = buf[lo:lo + c]
                self.comm.bcast(view.data.ptr, c, self._dtype(buf), r, self._stream())
            lo += c
        self.nccl.groupEnd()


# ---------------------------------------------------------------------------- consistency
def code_hash():
    """SHA-256 (12 hex digits) of the package's Python and CUDA sources, in path order."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.suffix in (".py", ".cu", ".cuh") and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def config_hash(config):
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


class RankMismatch(RuntimeError):
    """A rank was started with a different config or code version than rank 0."""


def check_same(world, config):
    """Refuse to start when any rank's config or code differs from rank 0's.

    Rank 0 broadcasts its hashes; every rank reports whether its own match, so every rank raises
    the same error, naming the ranks that differ and both hashes (and the differing config keys).
    """
    if world.size == 1:
        return
    mine = {"config": config_hash(config), "code": code_hash()}
    ref = world.broadcast_json({**mine, "values": config})
    differs = mine["config"] != ref["config"] or mine["code"] != ref["code"]
    verdicts = world.allgather_json({**mine, "values": config} if differs else None)
    problems = []
    for r, v in enumerate(verdicts):
        if not v:
            continue
        if v["config"] != ref["config"]:
            keys = sorted(k for k in set(v["values"]) | set(ref["values"])
                          if v["values"].get(k) != ref["values"].get(k))
            diffs = ", ".join(f"{k}: {ref['values'].get(k)!r} on rank 0, {v['values'].get(k)!r} on rank {r}"
                              for k in keys)
            problems.append(f"rank {r} has config {v['config']} but rank 0 has {ref['config']} ({diffs})")
        if v["code"] != ref["code"]:
            problems.append(f"rank {r} runs code version {v['code']} but rank 0 runs {ref['code']}")
    if problems:
        raise RankMismatch("refusing to start: " + "; ".join(problems))


# ---------------------------------------------------------------------------------- helpers
def _is_cupy(buf):
    from . import backend
    return backend.array_module(buf) is not np


def _check_contiguous(buf, what):
    if not buf.flags.c_contiguous:
        raise ValueError(f"distributed.{what}: the buffer must be C-contiguous (shape {buf.shape}, "
                         f"strides {buf.strides})")


def _mpi_type(buf):
    from mpi4py import MPI
    types = {"float32": MPI.FLOAT, "float64": MPI.DOUBLE, "int64": MPI.INT64_T, "int32": MPI.INT32_T}
    if buf.dtype.name not in types:
        raise TypeError(f"distributed: no MPI type for {buf.dtype}")
    return types[buf.dtype.name]
