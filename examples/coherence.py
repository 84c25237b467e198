"""Input- and output-coherence of a network's sub-clusters by feature visualisation
(Hod et al., Section 3.1.2 and Appendix A.8), with the PyTorch adapter.

    pip install torch==2.13.0 && pip install -e '.[torch]'
    python examples/coherence.py fixtures/fashion_mlp.onnx --out coherence_mlp/
    python examples/coherence.py fixtures/fashion_cnn.onnx --out coherence_cnn/ --steps 128

Writes coherence.csv/json (one row per sub-cluster: the true sub-cluster's score, softmax
entropy, activation variance and CV, total variations, the random sets' means, percentile p
values), coherence_summary.csv/json (Fisher and chi-squared combined p values per measure)
and coherence.png (true sub-cluster beside its 9 random ones), and prints the summary.
"""
from __future__ import annotations

import argparse

from infoprobe.adapters.torch import coherence


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--clusters", type=int, default=12)
    ap.add_argument("--random", type=int, default=9)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    res = coherence(args.model, n_clusters=args.clusters, n_random=args.random, seed=args.seed,
                    steps=args.steps, lr=args.lr)
    res.save(args.out, overwrite=args.overwrite)
    res.plot(args.out)
    print(f"{len(res.rows)} sub-clusters tested against {args.random} random sets each")
    for row in res.summary:
        if row["measure"] == "cv":
            print(f"{'cv':9s} quartiles of the true sub-clusters: {row['q1']:.3f} {row['median']:.3f} {row['q3']:.3f}")
        else:
            print(f"{row['measure']:9s} Fisher p {row['fisher_p']:.4f}   chi-squared p {row['chi2_p']:.4f}   (n={row['n']})")


if __name__ == "__main__":
    main()
