"""Graphification: a network's weights as an undirected weighted graph of its units
(Hod et al., "Importance and Coherence", Section 2; Filan et al. 2021, "Clusterability in
Neural Networks").

- **MLP graph**: one vertex per neuron, the input neurons and the output neurons included;
  the edge between neuron i of one layer and neuron j of the next weighs |w_ji|.
- **CNN graph**: one vertex per feature map of the convolutional layers (input, output and
  dense layers left out); the edge between in-channel i and out-channel j of consecutive conv
  layers weighs the L1 norm of the kernel slice K[j, i, :, :]. When a batch norm follows the
  conv, K[j] is first multiplied by gamma_j / sqrt(var_j + eps) (folded by
  :meth:`infoprobe.model.LoadedModel.weights` and stored so in activation stores).

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


def build_graph(specs: list, kind: str = "auto") -> WeightGraph:
    """A :class:`WeightGraph` from layer descriptions.

    Parameters
    ----------
    specs : list of dict
        One per unit layer, in depth order, with keys ``name``, ``kind`` ("dense"|"conv"),
        ``units``, ``inputs`` (upstream unit-layer names), ``is_output`` and ``weight`` (a
        callable returning float32 [U, fan_in] or [C_out, C_in, kh, kw], batch norm folded).
    kind : {"auto", "mlp", "cnn"}
        ``auto``: ``cnn`` when the network has a conv layer.

    Raises
    ------
    ModelError
        The layers are not a chain the graph can describe (a dense layer fed by several
        layers or by a layer of another width in an MLP graph; a conv fed by several convs or
        a grouped conv; no layer of the requested kind).
    ConfigError
        Unknown ``kind``.
    """
    kind = _spec_kind(kind, specs)
    by_name = {s["name"]: s for s in specs}
    layers, units, blocks, hidden = [], [], [], []
    if kind == "mlp":
        if any(s["kind"] != "dense" for s in specs):
            raise ModelError("an MLP graph needs dense layers only; this network has conv layers "
                             "(use the cnn graph)")
        firsts = [s for s in specs if not s["inputs"]]
        if len(firsts) != 1:
            raise ModelError(f"an MLP graph needs one layer fed by the input; found {len(firsts)}")
        layers.append(INPUT)
        units.append(0)  # the input's width is the fan-in of the layer it feeds
        for s in specs:
            w = np.abs(np.asarray(s["weight"](), np.float64))
            if not s["inputs"]:
                units[0] = w.shape[1]
            if len(s["inputs"]) > 1:
                raise ModelError(f"layer {s['name']!r} is fed by several layers ({', '.join(s['inputs'])}); "
                                 "an MLP graph needs a chain of dense layers")
            src = layers.index(s["inputs"][0]) if s["inputs"] else 0
            if w.shape[1] != units[src]:
                raise ModelError(f"layer {s['name']!r} has fan-in {w.shape[1]} but its input "
                                 f"{layers[src]!r} has {units[src]} units; an MLP graph needs each "
                                 "dense layer to read the previous one directly")
            layers.append(s["name"])
            units.append(int(s["units"]))
            blocks.append((src, len(layers) - 1, w))
            if not s["is_output"]:
                hidden.append(s["name"])
    else:
        convs = [s for s in specs if s["kind"] == "conv"]
        if not convs:
            raise ModelError("a CNN graph needs conv layers; this network has none (use the mlp graph)")
        for s in convs:
            w = np.asarray(s["weight"](), np.float64)
            ups = [u for u in s["inputs"] if by_name[u]["kind"] == "conv"]
            if len(s["inputs"]) > 1:
                raise ModelError(f"conv layer {s['name']!r} is fed by several layers ({', '.join(s['inputs'])}); "
                                 "the CNN graph needs a chain of conv layers")
            layers.append(s["name"])
            units.append(int(s["units"]))
            if ups:
                src = layers.index(ups[0])
                if w.shape[1] != units[src]:
                    raise ModelError(f"conv layer {s['name']!r} reads {w.shape[1]} channels per group but "
                                     f"{ups[0]!r} has {units[src]}: grouped convs are not supported")
                blocks.append((src, len(layers) - 1, np.abs(w).sum(axis=(2, 3))))
            if not s["is_output"]:
                hidden.append(s["name"])
    return WeightGraph(kind, layers, units, blocks, hidden)


def graph_from_model(lm, kind: str = "auto") -> WeightGraph:
    """The weight graph of a :class:`~infoprobe.model.LoadedModel` (see :func:`build_graph`)."""
    specs = [{"name": lay.name, "kind": lay.kind, "units": lay.units, "inputs": tuple(lay.inputs),
              "is_output": lay.is_output, "weight": (lambda lay=lay: lm.weights(lay)[0])}
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
                      "weight": (lambda name=name: store.read_weights(name))})
    return build_graph(specs, kind)
