"""Tools for studying the backward pass: trace it, draw it, watch its health during training.

trace_backward()          context manager recording each node of a backward pass (tracer.py)
draw_graph(t, path)       the graph behind a tensor as Graphviz DOT, and SVG when `dot` exists (graph.py)
scope(name)               tag the ops of a block ("h.0") so pictures cluster and collapse it (scope.py)
scope_blocks(model)       the same for every numbered submodule of a model, without editing its code
gradient_health(model)    gradient norms, update/weight ratios, activation statistics (health.py)
"""
from .graph import draw_graph, graph_to_dot
from .health import gradient_health
from .scope import record_activation, record_activations, scope, scope_blocks
from .tracer import BackwardTrace, backward_formula, trace_backward

__all__ = ["trace_backward", "BackwardTrace", "backward_formula", "draw_graph", "graph_to_dot",
           "scope", "scope_blocks", "record_activations", "record_activation", "gradient_health"]
