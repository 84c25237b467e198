"""Which units matter, judged by retraining: the O-information paper's Section 4.2 (Fig. 2).

For each of several 784-20-20-20-10 ReLU MLPs trained on MNIST from different seeds:

1. keep the initial weights, train (Adam, 15 epochs, as ``fixtures/build_fixtures.py``);
2. export the validation split's activations with the PyTorch adapter;
3. choose k units per hidden layer four ways: the most synergistic multiplet of size k
   (O-information with the label, exhaustive to 6 then greedy), the top-k units by
   single-unit GC-MI (mixture form and ANOVA/model form), and random sets;
4. reset those units to their initial weights, freeze the rest, retrain, and measure the
   test accuracy (``infoprobe.adapters.torch.retrain_subnetwork``).

The paper's reading: the smaller the accuracy drop, the more important the kept units.

    pip install torch==2.13.0 && pip install -e '.[torch]'
    python examples/retrain_subnetworks.py --data ../shared/data/mnist_10k.npz --out retrain.json

Prints a table of the mean accuracy drop (and its standard deviation over networks) per
selection method and k, and writes every run to ``--out`` as JSON.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from infoprobe.adapters.torch import export_activations, retrain_subnetwork
from infoprobe.analyses.synergy import layer_activations, synergy
from infoprobe.estimators.gaussian import gcmi_mixture_cd, gcmi_model_cd
from infoprobe.store import Store

LAYERS = ("fc1", "fc2", "fc3")


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(784, 20), torch.nn.Linear(20, 20)
        self.fc3, self.fc4 = torch.nn.Linear(20, 20), torch.nn.Linear(20, 10)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc4(torch.relu(self.fc3(x)))


def train(net, x, y, epochs, seed):
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 32):
            b = order[i:i + 32]
            loss = torch.nn.functional.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()


def selections(store_path, ks, n_random, rng):
    """{method: {k: {layer: units}}} for the synergy, GC-MI and random selections."""
    res = synergy(store_path, layers=list(LAYERS), max_size=max(ks), progress=False)
    out = {"synergy": {}, "gcmi_mixture": {}, "gcmi_model": {}}
    out.update({f"random_{r}": {} for r in range(n_random)})
    with Store(store_path) as s:
        y = s.require_labels()
        acts = {lay: layer_activations(s, lay, "pre")[0] for lay in LAYERS}
    mi = {lay: (np.nan_to_num(gcmi_mixture_cd(a, y), nan=-np.inf), np.nan_to_num(gcmi_model_cd(a, y), nan=-np.inf))
          for lay, a in acts.items()}
    for k in ks:
        out["synergy"][k] = {lay: list(res.best(lay, direction="synergy", size=k)["units"]) for lay in LAYERS}
        out["gcmi_mixture"][k] = {lay: np.argsort(-mi[lay][0])[:k].tolist() for lay in LAYERS}
        out["gcmi_model"][k] = {lay: np.argsort(-mi[lay][1])[:k].tolist() for lay in LAYERS}
        for r in range(n_random):
            out[f"random_{r}"][k] = {lay: sorted(rng.choice(20, k, replace=False).tolist()) for lay in LAYERS}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/mnist_10k.npz")
    ap.add_argument("--seeds", default="1,2,3,4,5", help="one network per seed")
    ap.add_argument("--k", default="5,10", help="units kept per hidden layer")
    ap.add_argument("--random", type=int, default=3, help="random selections per network and k")
    ap.add_argument("--epochs", type=int, default=15, help="training epochs")
    ap.add_argument("--retrain-epochs", type=int, default=5)
    ap.add_argument("--out", default="retrain.json")
    args = ap.parse_args()
    d = np.load(args.data)
    x = torch.as_tensor(d["x"].reshape(len(d["x"]), -1).astype(np.float32) / 255)
    y = torch.as_tensor(d["y"].astype(np.int64))
    tr, va, te = (torch.as_tensor(d["split"] == s) for s in (0, 1, 2))
    ks = [int(k) for k in args.k.split(",")]
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        torch.manual_seed(seed)
        net = MLP()
        init = {k: v.clone() for k, v in net.state_dict().items()}
        train(net, x[tr], y[tr], args.epochs, seed)
        with tempfile.TemporaryDirectory() as tmp:
            store = export_activations(net, (x[va], y[va]), Path(tmp) / "val.h5", progress=False)
            sel = selections(store, ks, args.random, np.random.default_rng(seed))
        for method, by_k in sel.items():
            for k, keep in by_k.items():
                r = retrain_subnetwork(net, init, keep, (x[tr], y[tr]), (x[te], y[te]),
                                       epochs=args.retrain_epochs, seed=seed, progress=False)
                runs.append(dict(seed=seed, method=method.split("_")[0] if method.startswith("random") else method,
                                 k=k, keep=keep, **{key: r[key] for key in
                                                    ("accuracy_trained", "accuracy_reset", "accuracy_retrained", "drop")}))
                print(f"seed {seed} k {k:2d} {method:13s} trained {r['accuracy_trained']:.4f} "
                      f"reset {r['accuracy_reset']:.4f} retrained {r['accuracy_retrained']:.4f}", flush=True)
    print("\nmean accuracy drop (trained - retrained) over networks; std over networks in brackets")
    methods = ["synergy", "gcmi_mixture", "gcmi_model", "random"]
    print("k   " + "".join(f"{m:>22s}" for m in methods))
    for k in ks:
        cells = []
        for m in methods:
            per_net = [np.mean([r["drop"] for r in runs if r["method"] == m and r["k"] == k and r["seed"] == s])
                       for s in sorted({r["seed"] for r in runs})]
            cells.append(f"{np.mean(per_net):10.4f} ({np.std(per_net):.4f})")
        print(f"{k:<4d}" + "".join(f"{c:>22s}" for c in cells))
    Path(args.out).write_text(json.dumps(dict(args=vars(args), runs=runs), indent=1))


if __name__ == "__main__":
    main()
