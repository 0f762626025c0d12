"""The ptxas report parser (tinygrad_llm/cuda/report.py), on a captured nvcc log: no nvcc needed."""
from tinygrad_llm.cuda.report import format_table, parse_ptxas

LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z13gelu_backwardIdEvPKT_S2_PS0_xi' for 'sm_90'
ptxas info    : Function properties for _Z13gelu_backwardIdEvPKT_S2_PS0_xi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
ptxas info    : Compiling entry function '_Z15softmax_forwardIfEvPKT_PS0_ii' for 'sm_90'
ptxas info    : Function properties for _Z15softmax_forwardIfEvPKT_PS0_ii
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 256 bytes smem
"""


def test_every_entry_gets_its_registers_spills_and_shared_memory():
    rows = parse_ptxas(LOG)
    assert [(r["registers"], r["stack"], r["spill_stores"], r["spill_loads"], r["smem"]) for r in rows] == \
        [(40, 0, 0, 0, 0), (255, 16, 8, 4, 256)]
    for r, name in zip(rows, ("gelu_backward<double>", "softmax_forward<float>")):
        r["file"], r["kernel"] = "x.cu", name
    table = format_table(rows)
    assert "local memory in 1: softmax_forward<float>" in table
