"""Graphification: a network's weights as an undirected weighted graph of its units
(Hod et al., "Importance and Coherence", Section 2; Filan et al. 2021, "Clusterability in
Neural Networks").

- **MLP graph**: one vertex per neuron, the input neurons and the output neurons included;
  the edge between neuron i of one layer and neuron j of the next weighs |w_ji|.
- **CNN graph**: one vertex per feature map of the convolutional layers (input, output and
  dense layers left out); the edge between in-channel i and out-channel j of consecutive conv
  layers weighs the L1 norm of the kernel slice K[j, i, :, :]. When a batch norm follows the
  conv, K[j] is first multiplied by gamma_j / sqrt(var_j + eps) (folded by
  :meth:`infoprobe.model.LoadedModel.weights` and stored so in activation stores). Grouped and
  depthwise convs give block-diagonal edges.
- **Branched networks** (ResNet, MobileNetV2): a residual block's output (the ``Add`` of its
  branches, a residual site) is a layer of vertices too, joined one-to-one with weight 1 to
  the feature maps it sums (the identity skip, or the projection conv); the paper analyses
  ResNet-18/50 without saying how skips enter the graph, and this is infoprobe's choice.

The graph keeps each pair of consecutive layers as a dense non-negative *block*
[U_next, U_prev], so that shuffled controls permute the entries of one block at a time; the
adjacency is a symmetric ``scipy.sparse`` CSR matrix assembled from the blocks' non-zeros.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .errors import ConfigError, ModelError

KINDS = ("auto", "mlp", "cnn")
INPUT = "input"


@dataclass
class WeightGraph:
    """Units of a network as graph vertices, layer by layer.

    Attributes
    ----------
    kind : {"mlp", "cnn"}
    layers : list of str
        Vertex layers in order; ``"input"`` for the input neurons of an MLP graph.
    units : list of int
        Vertices per layer.
    blocks : list of (int, int, float64 ndarray [U_dst, U_src])
        ``(src, dst, weights)``: non-negative edge weights between layer ``src`` and layer
        ``dst`` (indices into ``layers``).
    hidden : list of str
        The layers whose units are analysed by lesions (not input, not output).
    """

    kind: str
    layers: list
    units: list
    blocks: list
    hidden: list

    @property
    def offsets(self) -> np.ndarray:
        """int64 [L + 1]: first vertex of each layer, then the vertex count."""
        return np.concatenate([[0], np.cumsum(self.units)]).astype(np.int64)

    @property
    def n_vertices(self) -> int:
        return int(sum(self.units))

    def vertices(self, layer: str) -> np.ndarray:
        """Vertex indices of ``layer`` (int64 [U])."""
        i = self.layers.index(layer)
        return np.arange(self.offsets[i], self.offsets[i + 1])

    def adjacency(self, blocks=None) -> sp.csr_matrix:
        """Symmetric float64 CSR adjacency [V, V] from ``blocks`` (default: the graph's)."""
        off = self.offsets
        rows, cols, vals = [], [], []
        for src, dst, w in (self.blocks if blocks is None else blocks):
            r, c = np.nonzero(w)
            rows += [r + off[dst], c + off[src]]
            cols += [c + off[src], r + off[dst]]
            vals += [w[r, c], w[r, c]]
        n = self.n_vertices
        if not rows:
            return sp.csr_matrix((n, n))
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(n, n))

    def shuffled_blocks(self, rng: np.random.Generator, *, nonzero_only: bool = False) -> list:
        """Blocks with the entries of each block randomly permuted (the clusterability control
        of Filan et al.): all entries, or with ``nonzero_only`` only the non-zero entries among
        their own positions, which keeps a pruned network's sparsity pattern."""
        out = []
        for src, dst, w in self.blocks:
            flat = w.ravel().copy()
            if nonzero_only:
                nz = np.flatnonzero(flat)
                flat[nz] = flat[rng.permutation(nz)]
            else:
                flat = flat[rng.permutation(len(flat))]
            out.append((src, dst, flat.reshape(w.shape)))
        return out


def _spec_kind(kind, specs):
    if kind not in KINDS:
        raise ConfigError(f"unknown graph kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "auto":
        kind = "cnn" if any(s["kind"] == "conv" for s in specs) else "mlp"
    return kind


def _edges(s, w, src_units: int, kind: str) -> np.ndarray:
    """Non-negative block [U, U_src] of an affine site reading a site of ``src_units`` units:
    |w| (dense) or the L1 norm of each kernel slice (conv), block-diagonal for a grouped or
    depthwise conv (output channel j of group g reads the input channels of group g)."""
    if kind == "mlp":
        w = np.abs(np.asarray(w, np.float64))
        if w.shape[1] != src_units:
            raise ModelError(f"layer {s['name']!r} has fan-in {w.shape[1]} but its input has {src_units} units; an "
                             "MLP graph needs each dense layer to read the previous one directly")
        return w
    w = np.abs(np.asarray(w, np.float64)).sum(axis=tuple(range(2, np.ndim(w))))   # [C_out, C_in / groups]
    per_group = w.shape[1]
    if src_units % per_group or s["units"] % (src_units // per_group):
        raise ModelError(f"conv layer {s['name']!r} reads {per_group} channels per group but its input has "
                         f"{src_units}, which is not a whole number of groups")
    groups = src_units // per_group
    if groups == 1:
        return w
    out_per = s["units"] // groups
    block = np.zeros((s["units"], src_units))
    for g in range(groups):
        block[g * out_per:(g + 1) * out_per, g * per_group:(g + 1) * per_group] = w[g * out_per:(g + 1) * out_per]
    return block


def build_graph(specs: list, kind: str = "auto") -> WeightGraph:
    """A :class:`WeightGraph` from site descriptions.

    Vertices are the units of the affine sites (and, in an MLP graph, the input neurons) and
    of the residual sites (the output of a residual block, the sum of its branches). Edges:

    - an affine site to the site it reads: |w_ji| (dense) or the L1 norm of the kernel slice
      K[j, i] (conv, batch norm folded), block-diagonal for grouped and depthwise convs;
    - a residual site to each branch it sums: one-to-one edges of weight 1 (the identity map,
      a 1x1 kernel of value 1), whether the branch is the identity skip or a projection conv
      (whose own kernel edges connect it to the block's input).

    Parameters
    ----------
    specs : list of dict
        One per unit site, in depth order, with keys ``name``, ``kind`` ("dense"|"conv"|
        "token"), ``units``, ``inputs`` (upstream site names), ``is_output``, ``found_by``
        (default "affine") and ``weight`` (a callable returning float32 [U, fan_in] or
        [C_out, C_in/groups, kh, kw], batch norm folded; affine sites only).
    kind : {"auto", "mlp", "cnn"}
        ``auto``: ``cnn`` when the network has a conv layer.

    Raises
    ------
    ModelError
        The sites cannot be described by the graph: a site other than affine or residual
        (LayerNorm, attention heads, a user site), an affine site fed by several sites, a
        dense layer fed by a layer of another width in an MLP graph, a conv whose channels are
        not whole groups, a residual sum of sites of different widths, no layer of the
        requested kind.
    ConfigError
        Unknown ``kind``.
    """
    kind = _spec_kind(kind, specs)
    wanted = ("dense", "token") if kind == "mlp" else ("conv",)
    if kind == "mlp" and any(s["kind"] == "conv" for s in specs):
        raise ModelError("an MLP graph needs dense layers only; this network has conv layers (use the cnn graph)")
    sites = [s for s in specs if s["kind"] in wanted]
    if not sites:
        raise ModelError(f"a{'n MLP' if kind == 'mlp' else ' CNN'} graph needs {wanted[0]} layers; this network has none "
                         f"(use the {'cnn' if kind == 'mlp' else 'mlp'} graph)")
    other = next((s for s in sites if s.get("found_by", "affine") not in ("affine", "residual")), None)
    if other is not None:
        raise ModelError(f"site {other['name']!r} ({other.get('found_by')}) has no weights the graph can use; the "
                         "weight graph reads affine layers and residual sums (leave it out with --sites)")
    by_name = {s["name"]: s for s in specs}
    layers, units, blocks, hidden = [], [], [], []
    if kind == "mlp":
        firsts = [s for s in sites if not s["inputs"]]
        if len(firsts) != 1:
            raise ModelError(f"an MLP graph needs one layer fed by the input; found {len(firsts)}")
        layers.append(INPUT)
        units.append(0)  # the input's width is the fan-in of the layer it feeds
    for s in sites:
        ups = [u for u in s["inputs"] if u in by_name and by_name[u]["kind"] in wanted]
        layers.append(s["name"])
        units.append(int(s["units"]))
        dst = len(layers) - 1
        if s.get("found_by", "affine") == "residual":
            for u in ups:
                if units[layers.index(u)] != s["units"]:
                    raise ModelError(f"residual site {s['name']!r} sums {u!r} of {units[layers.index(u)]} units "
                                     f"into {s['units']}")
                blocks.append((layers.index(u), dst, np.eye(s["units"])))
        else:
            if len(s["inputs"]) > 1:
                raise ModelError(f"layer {s['name']!r} is fed by several layers ({', '.join(s['inputs'])}); the "
                                 "weight graph needs each affine layer to read one site (a residual sum counts as one)")
            w = s["weight"]()
            if kind == "mlp" and not s["inputs"]:
                units[0] = int(np.shape(w)[1])
                blocks.append((0, dst, np.abs(np.asarray(w, np.float64))))
            elif ups:
                src = layers.index(ups[0])
                blocks.append((src, dst, _edges(s, w, units[src], kind)))
            elif kind == "mlp":
                raise ModelError(f"layer {s['name']!r} reads a layer the MLP graph does not hold")
        if not s["is_output"]:
            hidden.append(s["name"])
    if not blocks:
        raise ModelError(f"the {kind.upper()} graph of this network has no edges: its {wanted[0]} sites "
                         f"({', '.join(s['name'] for s in sites)}) do not read one another")
    return WeightGraph(kind, layers, units, blocks, hidden)


def graph_from_model(lm, kind: str = "auto") -> WeightGraph:
    """The weight graph of a :class:`~infoprobe.model.LoadedModel` (see :func:`build_graph`)."""
    specs = [{"name": lay.name, "kind": lay.kind, "units": lay.units, "inputs": tuple(lay.inputs),
              "is_output": lay.is_output, "found_by": lay.found_by, "weight": (lambda lay=lay: lm.weights(lay)[0])}
             for lay in sorted(lm.layers, key=lambda lay: lay.depth)]
    return build_graph(specs, kind)


def graph_from_store(store, kind: str = "auto") -> WeightGraph:
    """The weight graph from the incoming weights saved in an activation store
    (``/layers/<name>/weight``; see :func:`build_graph`).

    Raises
    ------
    StoreError
        A layer has no stored weights.
    """
    specs = []
    for name in store.layer_names:
        info = store.layer_info(name)
        specs.append({"name": name, "kind": info["kind"], "units": int(info["units"]),
                      "inputs": tuple(info["inputs"]), "is_output": bool(info.get("is_output", False)),
                      "found_by": info.get("found_by", "affine"),
                      "weight": (lambda name=name: store.read_weights(name))})
    return build_graph(specs, kind)
