"""One self-contained HTML page from result folders (``infoprobe report``).

The page is built from the files the analyses wrote (JSON tables of :func:`infoprobe.results.write_table`,
their PNG figures, a gate's ``check.json``) and never opens a model (DESIGN.md: reports read
results only). It has one section per analysis found: a headline in words, the figures
(inlined as data URIs), the tables (sortable by a click on a header; units in the headers), and
the provenance (inputs with their SHA-256, every parameter, versions). Nothing is fetched from
the network: styles and the sorting script are inline.

Every number of a headline is an element ``<span class="hl" data-source=FILE
data-pointer=POINTER>`` that names the JSON file (relative to the ``data-root`` of ``<body>``)
and the RFC 6901 pointer of the exact value it shows, rounded for reading.
"""
from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .results import atomic_write_bytes, check_outputs

#: Largest JSON and PNG file read into the page.
MAX_JSON_BYTES = 64 << 20
MAX_PNG_BYTES = 16 << 20
#: Rows of a table shown on the page (the JSON file holds them all).
MAX_ROWS = 300

#: Units of known columns, shown in the headers.
UNITS = {"entropy": "bits", "mutual_information": "bits", "kl_selectivity": "bits", "js_subset_separation": "bits",
         "labeled_mi": "bits", "specific_information": "bits", "omega": "bits", "mean": "bits", "std": "bits",
         "min": "bits", "max": "bits", "accuracy": "fraction", "accuracy_std": "fraction", "fraction": "of units",
         "accuracy_change": "fraction", "unchanged": "fraction", "prunable_fraction": "of units",
         "redundant_fraction": "of units", "binned_entropy": "bits", "mi": "nats or bits: see unit",
         "h_t": "nats or bits", "h_t_given_x": "nats or bits", "latency_ms": "ms"}

#: analysis id -> (title, table names, figure name prefixes, folder names). A table or figure
#: belongs to the first analysis that claims its name or a folder on its path.
ANALYSES = {
    "analyze": ("What ran: infoprobe analyze's plan within its budget", ("analyze",), (), ()),
    "importance": ("Neuron importance (Liu, Amjad & Geiger 2018)", ("importance", "specific_information"),
                   ("importance",), ()),
    "ablation": ("Cumulative ablation", ("ablation", "ablation_replicates"), ("ablation",), ()),
    "synergy": ("Synergy and redundancy: O-information (Varley et al.)", ("synergy", "synergy_profile"),
                ("synergy",), ()),
    "modules": ("Modules: sub-clusters, lesions, clusterability (Hod et al.)",
                ("subclusters", "network", "partition", "dependencies", "double_lesions", "random_lesions"),
                ("subclusters", "class_profiles", "clusterability", "dependencies", "double_lesions",
                 "visualisations", "feature_grid"), ("modules",)),
    "frivolous": ("Frivolous units: prunable and redundant (Casper et al.)",
                  ("frivolous", "prunability", "sweep", "gains", "correlations"),
                  ("prunability", "correlations", "sweep"), ("frivolous",)),
    "flow": ("Information flow through training (Goldfeld et al.)",
             ("flow", "units", "unit_trends", "trend_summary", "distances"), ("flow", "distances"), ("flow",)),
    "check": ("CI gate: candidate against reference", ("check",), ("check",), ()),
}


@dataclass
class _Section:
    id: str
    title: str
    tables: list = field(default_factory=list)     # (relpath, doc)
    figures: list = field(default_factory=list)    # relpath
    headline: list = field(default_factory=list)   # HTML sentences


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def _analysis_of(rel: Path, stem: str, kind: str) -> str | None:
    for aid, (_, tables, prefixes, folders) in ANALYSES.items():
        if any(part in folders for part in rel.parts[:-1]):
            return aid
    for aid, (_, tables, prefixes, _) in ANALYSES.items():
        if kind == "table" and stem in tables:
            return aid
        if kind == "figure" and any(stem == p or stem.startswith(p + "_") for p in prefixes):
            return aid
    return None


def collect(folders) -> tuple[Path, dict, list]:
    """The result files of ``folders``, sorted into analyses.

    Returns
    -------
    root : Path
        The first folder: JSON sources are named relative to it.
    sections : dict of id -> _Section
        In :data:`ANALYSES` order, only those with a table or a figure.
    skipped : list of str
        Files left out and why (unreadable, too large, outside the folder, not a result table).

    Raises
    ------
    DataError
        A folder does not exist or holds no result file at all.
    """
    folders = [Path(f) for f in folders]
    if not folders:
        raise DataError("no result folder given")
    root = Path(os.path.abspath(folders[0]))
    sections = {aid: _Section(aid, ANALYSES[aid][0]) for aid in ANALYSES}
    skipped = []
    for folder in folders:
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder of results")
        for path in sorted(folder.rglob("*")):
            if path.is_dir() or path.name.startswith(".") or path.suffix not in (".json", ".png"):
                continue
            rel = os.path.relpath(os.path.abspath(path), root)
            if path.is_symlink() or not _inside(folder, path):
                skipped.append(f"{rel}: a link or outside {folder}")
                continue
            size = path.stat().st_size
            if size > (MAX_JSON_BYTES if path.suffix == ".json" else MAX_PNG_BYTES):
                skipped.append(f"{rel}: {size:,} bytes, over the report's limit")
                continue
            if path.suffix == ".png":
                aid = _analysis_of(path.relative_to(folder), path.stem, "figure")
                if aid:
                    sections[aid].figures.append((rel, path.read_bytes()))
                continue
            try:
                doc = json.loads(path.read_bytes())
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                skipped.append(f"{rel}: not valid JSON ({type(exc).__name__})")
                continue
            if not isinstance(doc, dict):
                continue
            if path.stem == "check" and {"passed", "checks", "metrics"} <= set(doc):
                sections["check"].tables.append((rel, doc))
                continue
            if not ({"rows", "columns"} <= set(doc) or path.stem == "network"):
                continue                   # plans, summaries: not tables
            aid = _analysis_of(path.relative_to(folder), path.stem, "table")
            if aid:
                sections[aid].tables.append((rel, doc))
            else:
                skipped.append(f"{rel}: a table of no analysis the report knows")
    found = {k: s for k, s in sections.items() if s.tables or s.figures}
    if not found:
        raise DataError(f"no result of infoprobe in {', '.join(map(str, folders))}")
    return root, found, skipped


# --- headlines: sentences whose numbers point at the JSON values they show ------------------

def _fmt(v, kind: str = "g") -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if kind == "%":
        return f"{100 * v:.1f}%"
    if kind == "+":
        return f"{v:+.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


def _hl(source: str, pointer: str, value, kind: str = "g") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):     # nothing to point at
        return "n/a" if value is None else html.escape(str(value))
    return (f'<span class="hl" data-source="{html.escape(source)}" data-pointer="{html.escape(pointer)}">'
            f"{html.escape(_fmt(value, kind))}</span>")


def _table(sec: _Section, stem: str):
    for rel, doc in sec.tables:
        if Path(rel).stem == stem:
            return rel, doc
    return None, None


def _rows(doc) -> list:
    return doc.get("rows") or []


def _groups(rows: list, key: str = "layer", **where):
    """(value of ``key``, [(row index, row), ...]) of the rows matching ``where``, in order."""
    groups = {}
    for i, r in enumerate(rows):
        if all(r.get(k) == v for k, v in where.items()):
            groups.setdefault(r.get(key), []).append((i, r))
    return groups.items()


def _on_table(stem: str):
    """A headline function of one table: called with (its path, its document) when the section
    holds the table ``stem``; the headline is empty otherwise."""
    def wrap(fn):
        def headline(sec):
            rel, doc = _table(sec, stem)
            return [] if rel is None else fn(rel, doc)
        return headline
    return wrap


@_on_table("importance")
def _headline_importance(rel, doc):
    out = []
    for layer, cand in _groups(_rows(doc)):
        cand = [(i, r) for i, r in cand if isinstance(r.get("mutual_information"), (int, float))]
        if not cand:
            continue
        i, best = max(cand, key=lambda ir: ir[1]["mutual_information"])
        out.append(f"In <b>{html.escape(str(layer))}</b> the most informative unit about the label is unit "
                   f"{_hl(rel, f'/rows/{i}/unit', best['unit'])}, with I(T;Y) = "
                   f"{_hl(rel, f'/rows/{i}/mutual_information', best['mutual_information'])} bits.")
    return out


@_on_table("ablation")
def _headline_ablation(rel, doc):
    out = []
    for layer, mine in _groups(_rows(doc), scope="layer", ranking="mutual_information", order="low"):
        value = "mean" if any(r.get("value") == "mean" for _, r in mine) else mine[0][1].get("value")
        mine = [(i, r) for i, r in mine if r.get("value") == value]
        i0, r0 = min(mine, key=lambda ir: ir[1]["fraction"])
        i5, r5 = min(mine, key=lambda ir: abs(ir[1]["fraction"] - 0.5))
        out.append(f"Replacing the {_hl(rel, f'/rows/{i5}/fraction', r5['fraction'], '%')} lowest-MI units of "
                   f"<b>{html.escape(str(layer))}</b> by their {html.escape(str(value))} leaves accuracy at "
                   f"{_hl(rel, f'/rows/{i5}/accuracy', r5['accuracy'])} (intact "
                   f"{_hl(rel, f'/rows/{i0}/accuracy', r0['accuracy'])})"
                   + (f"; mean over {_hl(rel, f'/rows/{i5}/replicates', r5['replicates'])} networks, sd "
                      f"{_hl(rel, f'/rows/{i5}/accuracy_std', r5['accuracy_std'])}." if "replicates" in r5 else "."))
    return out


@_on_table("synergy_profile")
def _headline_synergy(rel, doc):
    out = []
    for direction in ("synergy", "redundancy"):
        for layer, mine in _groups(_rows(doc), direction=direction):
            i, r = max(mine, key=lambda ir: ir[1]["size"])
            out.append(f"<b>{html.escape(str(layer))}</b>: the most {'synergistic' if direction == 'synergy' else 'redundant'} "
                       f"group of {_hl(rel, f'/rows/{i}/size', r['size'])} units has O-information "
                       f"{_hl(rel, f'/rows/{i}/mean', r['mean'])} bits"
                       + (f" (mean over {_hl(rel, f'/rows/{i}/networks', r['networks'])} networks)."
                          if (r.get("networks") or 1) > 1 else "."))
    return out


@_on_table("network")
def _headline_modules(rel, doc):
    out = []
    if not isinstance(doc.get("network"), dict):
        return out
    net = doc["network"]
    if "ncut" in net:
        out.append(f"The partition into {_hl(rel, '/network/n_clusters', net.get('n_clusters'))} clusters has "
                   f"n-cut {_hl(rel, '/network/ncut', net['ncut'])}; against shuffled networks p = "
                   f"{_hl(rel, '/network/clusterability_p_all', net.get('clusterability_p_all'))} (the floor with "
                   "n shuffles is 1/(n + 1)).")
    if "fisher_importance" in net:
        out.append(f"Sub-clusters matter more than random groups of the same size: Fisher's combined p = "
                   f"{_hl(rel, '/network/fisher_importance', net['fisher_importance'])}.")
    cats = net.get("categories") or {}
    if cats:
        parts = [f"{_hl(rel, '/network/categories/' + k.replace('~', '~0').replace('/', '~1'), v)} {html.escape(k)}"
                 for k, v in cats.items() if v]
        out.append("Sub-clusters by category: " + ", ".join(parts) + ".")
    return out


def _headline_frivolous(sec):
    out = []
    rel, doc = _table(sec, "gains")
    if rel is not None:
        for i, r in enumerate(_rows(doc)):
            out.append(f"{html.escape(str(r.get('measure')))} units of <b>{html.escape(str(r.get('layer')))}</b> grow "
                       f"with width as width<sup>g</sup>, g = {_hl(rel, f'/rows/{i}/g', r.get('g'))}.")
    for rel, doc in sec.tables:
        if Path(rel).stem == "frivolous":
            for i, r in enumerate(_rows(doc)):
                out.append(f"{html.escape(rel)}: {_hl(rel, f'/rows/{i}/prunable_fraction', r.get('prunable_fraction'), '%')} "
                           f"of <b>{html.escape(str(r.get('layer')))}</b>'s units are prunable and "
                           f"{_hl(rel, f'/rows/{i}/redundant_fraction', r.get('redundant_fraction'), '%')} redundant.")
    return out[:12]


@_on_table("flow")
def _headline_flow(rel, doc):
    out = []
    for layer, mine in _groups(_rows(doc)):
        mine = [(i, r) for i, r in mine if r.get("mi") is not None]
        if not mine:
            continue
        (i0, a), (i1, b) = mine[0], mine[-1]
        unit = html.escape(str(b.get("unit", "")))
        out.append(f"I(X;T) of <b>{html.escape(str(layer))}</b> goes from {_hl(rel, f'/rows/{i0}/mi', a['mi'])} {unit} "
                   f"at epoch {_hl(rel, f'/rows/{i0}/epoch', a['epoch'])} to {_hl(rel, f'/rows/{i1}/mi', b['mi'])} "
                   f"{unit} at epoch {_hl(rel, f'/rows/{i1}/epoch', b['epoch'])}.")
    return out


def _headline_check(sec):
    out = []
    for rel, doc in sec.tables:
        m = doc.get("metrics", {})
        verdict = "passes" if doc.get("passed") else "fails"
        failed = [c["name"] for c in doc.get("checks", []) if not c.get("passed")]
        s = (f"The candidate <b>{verdict}</b> the gate ({html.escape(rel)}"
             + (f"; failed: {html.escape(', '.join(failed))}" if failed else "") + ").")
        if m.get("accuracy_drop") is not None:
            s += (f" Accuracy {_hl(rel, '/metrics/accuracy_reference', m['accuracy_reference'])} → "
                  f"{_hl(rel, '/metrics/accuracy_candidate', m['accuracy_candidate'])}, drop "
                  f"{_hl(rel, '/metrics/accuracy_drop', m['accuracy_drop'], '+')}")
            st = doc.get("statistics", {})
            if st.get("mcnemar_p") is not None:
                s += f" (McNemar p = {_hl(rel, '/statistics/mcnemar_p', st['mcnemar_p'])})"
            s += "."
        if m.get("label_change") is not None:
            s += f" {_hl(rel, '/metrics/label_change', m['label_change'], '%')} of predicted labels changed."
        first = (doc.get("divergence") or {}).get("first_diverging")
        if first:
            s += f" The models part first at site <b>{html.escape(first)}</b>."
        out.append(s)
    return out


@_on_table("analyze")
def _headline_analyze(rel, doc):
    rows = _rows(doc)
    ran = [(i, r) for i, r in enumerate(rows) if not r.get("skipped")]
    out = ["Ran " + ", ".join(f"{html.escape(r['analysis'])} ({_hl(rel, f'/rows/{i}/seconds', r.get('seconds'))} s)"
                              for i, r in ran) + f" within a budget of "
           f"{_hl(rel, '/meta/parameters/budget_min', (doc.get('meta') or {}).get('parameters', {}).get('budget_min'))}"
           " minutes."]
    out += [f"{html.escape(r['analysis'])} was cut to fit: {html.escape(r['cut'])}." for _, r in ran if r.get("cut")]
    out += [f"{html.escape(r['analysis'])} did not run: {html.escape(r['skipped'])}." for r in rows if r.get("skipped")]
    return out


HEADLINES = {"analyze": _headline_analyze, "importance": _headline_importance, "ablation": _headline_ablation, "synergy": _headline_synergy,
             "modules": _headline_modules, "frivolous": _headline_frivolous, "flow": _headline_flow,
             "check": _headline_check}


# --- the page ---------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1b1f24;background:#fafafa}
header,main{max-width:1100px;margin:0 auto;padding:0 16px}
header h1{font-size:1.6em;margin:.8em 0 .2em}
nav{display:flex;flex-wrap:wrap;gap:.4em 1em;margin:.5em 0 1em}
section.analysis{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 16px;margin:0 0 18px}
.headline{font-size:1.05em;background:#eef4fb;border-left:4px solid #2b6cb0;padding:6px 12px;margin:8px 0}
.headline p{margin:.3em 0}
.hl{font-weight:600;font-variant-numeric:tabular-nums}
figure{margin:12px 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
.table-wrap{overflow-x:auto;max-height:420px;overflow-y:auto;border:1px solid #eee;margin:6px 0}
table{border-collapse:collapse;font-size:.85em;font-variant-numeric:tabular-nums}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{position:sticky;top:0;background:#f3f3f3;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
td.text,th.text{text-align:left}
details{margin:6px 0}
details.provenance pre{white-space:pre-wrap;word-break:break-all;font-size:.8em;background:#f6f6f6;padding:8px}
.skipped{color:#8a4b00}
@media (max-width:600px){body{font-size:14px}section.analysis{padding:6px 8px}}
"""

_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var numeric = th.classList.contains('num');
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-value'), y = b.cells[col].getAttribute('data-value');
        if (!numeric) { return asc ? x.localeCompare(y) : y.localeCompare(x); }
        var fx = x === '' ? NaN : parseFloat(x), fy = y === '' ? NaN : parseFloat(y);
        if (isNaN(fx) || isNaN(fy)) { return isNaN(fx) - isNaN(fy); }   /* blanks last */
        return asc ? fx - fy : fy - fx;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _cell(v) -> tuple[str, str, bool]:
    """(shown text, data-value, numeric)."""
    if isinstance(v, bool):
        return str(v), str(v), False
    if isinstance(v, (int, float)):
        return _fmt(v), repr(float(v)), True
    if v is None:
        return "", "", True
    text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    short = text if len(text) <= 80 else text[:77] + "..."
    return short, text[:200], False


def _html_table(rel: str, doc: dict) -> str:
    columns = [str(c) for c in doc.get("columns") or []]
    rows = _rows(doc)
    if not columns:
        return ""
    numeric = [all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) or r.get(c) is None
                   for r in rows[:MAX_ROWS]) and any(isinstance(r.get(c), (int, float)) for r in rows[:MAX_ROWS])
               for c in columns]
    head = "".join(f'<th class="{"num" if num else "text"}" scope="col">{html.escape(c)}'
                   + (f" [{html.escape(UNITS[c])}]" if c in UNITS else "") + "</th>"
                   for c, num in zip(columns, numeric))
    body = []
    for r in rows[:MAX_ROWS]:
        cells = []
        for c, num in zip(columns, numeric):
            text, value, _ = _cell(r.get(c))
            cells.append(f'<td class="{"num" if num else "text"}" data-value="{html.escape(value)}">'
                         f"{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = (f"<p>First {MAX_ROWS:,} of {len(rows):,} rows; all are in <code>{html.escape(rel)}</code> and its CSV.</p>"
            if len(rows) > MAX_ROWS else "")
    return (f'<details{" open" if len(rows) <= 40 else ""}><summary><code>{html.escape(rel)}</code> '
            f"({len(rows):,} rows)</summary>{note}"
            f'<div class="table-wrap"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div></details>")


def _check_tables(rel: str, doc: dict) -> str:
    """The gate's checks and per-site divergence as ordinary tables."""
    parts = [_html_table(rel + " (checks)", {"columns": ["name", "value", "threshold", "passed", "description"],
                                             "rows": doc.get("checks", [])})]
    sites = (doc.get("divergence") or {}).get("sites")
    if sites:
        cols = ["reference", "candidate", "matched_by", "compared_on", "relative_error", "correlation_mean",
                "correlation_min", "cka", "diverged"]
        parts.append(_html_table(rel + " (per-site divergence)", {"columns": cols, "rows": sites}))
    classes = (doc.get("metrics") or {}).get("class_accuracy")
    if classes:
        cols = ["class", "n", "reference", "candidate", "drop", "drop_upper", "mcnemar_p", "p_adjusted", "significant"]
        parts.append(_html_table(rel + " (per class)", {"columns": cols, "rows": classes}))
    return "".join(parts)


def _caption(meta: dict) -> str:
    """Model, data and N of a figure, from its section's provenance."""
    inputs = meta.get("inputs") or {}
    params = meta.get("parameters") or {}
    names = []
    for role, d in inputs.items():
        if isinstance(d, dict) and d.get("path"):
            names.append(f"{role} {Path(str(d['path'])).name}")
    if len(names) > 4:
        names = names[:3] + [f"... ({len(names)} inputs)"]
    n = params.get("n_samples")
    split = params.get("split") or (params.get("store_attrs") or {}).get("data_split")
    return "; ".join(names + ([f"split {split}"] if split else []) + ([f"N = {n:,}"] if isinstance(n, int) else []))


def _provenance(sec: _Section) -> str:
    seen, blocks = set(), []
    for rel, doc in sec.tables:
        meta = doc.get("meta") or {"inputs": {k: v for k, v in (doc.get("models") or {}).items()},
                                   "data": doc.get("data"), "parameters": doc.get("parameters")}
        text = json.dumps(meta, indent=1, sort_keys=True, default=str)
        if text in seen:
            continue
        seen.add(text)
        blocks.append(f"<p><code>{html.escape(rel)}</code></p><pre>{html.escape(text)}</pre>")
    return ('<details class="provenance"><summary>Provenance: inputs (sha256), parameters, versions</summary>'
            + "".join(blocks) + "</details>")


def render(folders, *, title: str | None = None) -> str:
    """The report page of ``folders`` as an HTML string (see :func:`write_report`).

    Raises
    ------
    DataError
        As :func:`collect`.
    """
    root, sections, skipped = collect(folders)
    parts = []
    for sid, sec in sections.items():
        sec.headline = HEADLINES[sid](sec)
        meta = next((d.get("meta") for _, d in sec.tables if isinstance(d.get("meta"), dict)), {}) or {}
        caption = _caption(meta)
        figs = "".join(
            f'<figure><img alt="{html.escape(rel)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
            f"<figcaption><code>{html.escape(rel)}</code>{' — ' + html.escape(caption) if caption else ''}"
            "</figcaption></figure>" for rel, data in sec.figures)
        tables = "".join(_check_tables(rel, doc) if sid == "check" else _html_table(rel, doc)
                         for rel, doc in sec.tables)
        head = ('<div class="headline">' + "".join(f"<p>{s}</p>" for s in sec.headline) + "</div>"
                if sec.headline else "")
        parts.append(f'<section class="analysis" id="{sid}"><h2>{html.escape(sec.title)}</h2>{head}{figs}'
                     f"{tables}{_provenance(sec)}</section>")
    nav = "".join(f'<a href="#{sid}">{html.escape(sec.title.split(":")[0].split(" (")[0])}</a>'
                  for sid, sec in sections.items())
    skipped_html = ("<section class=\"analysis\" id=\"skipped\"><h2>Files not shown</h2><ul class=\"skipped\">"
                    + "".join(f"<li>{html.escape(s)}</li>" for s in skipped) + "</ul></section>") if skipped else ""
    title = title or f"infoprobe report: {', '.join(Path(f).name for f in folders)}"
    from . import __version__

    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f'<body data-root="{html.escape(str(root))}"><header><h1>{html.escape(title)}</h1>'
            f"<p>infoprobe {html.escape(__version__)}; results read from "
            f"{html.escape(', '.join(str(Path(f).resolve()) for f in folders))}.</p><nav>{nav}</nav></header>"
            f"<main>{''.join(parts)}{skipped_html}</main><script>{_JS}</script></body></html>")


def write_report(folders, out, *, title: str | None = None, overwrite: bool = False) -> Path:
    """Write one self-contained HTML report of the result folders ``folders`` to ``out``.

    Parameters
    ----------
    folders : list of path-like
        Result folders of infoprobe's analyses (``--out`` of ``importance``, ``ablate``,
        ``synergy``, ``modules``, ``frivolous``, ``flow``, ``demo``; a gate's ``check.json``).
        JSON sources in the page are named relative to the first.
    out : path-like
        The HTML file; written atomically.
    title : str, optional
    overwrite : bool
        Replace an existing ``out``.

    Returns
    -------
    Path

    Raises
    ------
    OutputExistsError
        ``out`` exists and not ``overwrite``.
    DataError
        A folder is missing or holds no result.
    """
    check_outputs([out], overwrite)
    page = render(folders, title=title)
    atomic_write_bytes(out, page.encode())
    return Path(out)
