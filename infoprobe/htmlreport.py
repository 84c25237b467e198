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

Result folders may come from anyone, so they are read as untrusted (:func:`collect`): only
regular files with one link on the folder's file system, opened without following links and
without blocking; JSON and PNG files within a share of the memory budget
(:func:`infoprobe.limits.max_memory`); every document checked for the shape of a table, a gate
result or a network once, and every value shown through one formatter that accepts any JSON
value. A file that is refused or malformed is listed under "Files not shown" with the reason.
"""
from __future__ import annotations

import base64
import errno
import html
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .limits import human, max_memory
from .results import atomic_write_bytes, check_outputs, shown_path

#: Largest JSON and PNG file read into the page.
MAX_JSON_BYTES = 64 << 20
MAX_PNG_BYTES = 16 << 20
#: Rows of a table shown on the page (the JSON file holds them all).
MAX_ROWS = 300
#: Columns of a table shown on the page.
MAX_COLUMNS = 100
#: Largest table read at all (rows); a larger one is listed as not shown.
MAX_TABLE_ROWS = 1_000_000
#: Shares of the memory budget: the JSON read (parsed JSON takes up to ~24 times its bytes)
#: and the bytes inlined into the page (figures in base64, tables, provenance; the page is
#: held about three times while it is assembled and written).
JSON_SHARE = 1 / 64
PAGE_SHARE = 1 / 8
#: Folders deeper than this below a result folder are not read.
MAX_DEPTH = 32
#: Sentences of one section's headline; characters of one provenance block.
MAX_HEADLINES = 24
MAX_PROVENANCE_CHARS = 64 << 10
#: Entries of "Files not shown" listed one by one (the rest are counted).
MAX_LISTED = 1000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

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

#: File stems that name a result table: such a file that is not one is malformed, not ignored.
_TABLE_STEMS = frozenset(t for _, tables, _, _ in ANALYSES.values() for t in tables)


@dataclass
class _Section:
    id: str
    title: str
    tables: list = field(default_factory=list)     # (relpath, doc)
    figures: list = field(default_factory=list)    # (relpath, PNG bytes)
    headline: list = field(default_factory=list)   # HTML sentences


class _Budget:
    """What the report may still read (JSON bytes) and inline (page bytes)."""

    def __init__(self, memory: int | None = None):
        self.memory = max_memory() if memory is None else memory
        self.json_left = int(self.memory * JSON_SHARE)
        self.page_left = int(self.memory * PAGE_SHARE)

    def take_page(self, n: int) -> bool:
        if n > self.page_left:
            return False
        self.page_left -= n
        return True

    def over(self, what: str, n: int, left: int) -> str:
        return (f"{what} of {human(n)} would exceed the report's share of the memory budget "
                f"({human(max(left, 0))} left of {human(self.memory)}); raise --max-memory to show it")


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


# --- reading untrusted folders ------------------------------------------------------------------

_KINDS = ((stat.S_ISLNK, "a symbolic link, not followed"), (stat.S_ISFIFO, "a FIFO, not a regular file"),
          (stat.S_ISSOCK, "a socket, not a regular file"), (stat.S_ISCHR, "a character device, not a regular file"),
          (stat.S_ISBLK, "a block device, not a regular file"), (stat.S_ISDIR, "a folder"))


def _not_regular(st) -> str | None:
    """Why a file of ``st`` is not read, or None for a regular file."""
    if stat.S_ISREG(st.st_mode):
        return None
    return next((why for test, why in _KINDS if test(st.st_mode)), "not a regular file")


def _display(name: str) -> str:
    """A file name as the page can hold it (undecodable bytes replaced)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _open_dir(folder_fd: int, parts) -> int:
    """Open the folder ``parts`` below ``folder_fd``, component by component, following no link."""
    fd = os.dup(folder_fd)
    try:
        for part in parts:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0)
                          | getattr(os, "O_CLOEXEC", 0), dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _walk(folder_fd: int, dev: int, note) -> list:
    """(parts, lstat) of the ``.json`` and ``.png`` entries below ``folder_fd``, sorted by path.

    Hidden entries (names starting with ``.``: staging folders of unfinished commands,
    ``.git``) are not looked at. Folders are entered without following links, only on the
    folder's own file system and at most :data:`MAX_DEPTH` deep; anything else that looks
    like a result (a link, a FIFO, a folder on another file system) is reported to ``note``.
    """
    found, stack = [], [()]
    while stack:
        parts = stack.pop()
        try:
            fd = _open_dir(folder_fd, parts)
        except OSError as exc:
            note(parts, f"a folder that cannot be opened ({exc.strerror or type(exc).__name__})")
            continue
        try:
            for name in sorted(os.listdir(fd)):
                if name.startswith("."):
                    continue
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue                                     # vanished meanwhile
                sub = parts + (name,)
                result_like = os.path.splitext(name)[1] in (".json", ".png")
                if stat.S_ISLNK(st.st_mode):
                    try:
                        to_dir = stat.S_ISDIR(os.stat(name, dir_fd=fd).st_mode)
                    except OSError:
                        to_dir = False
                    if result_like or to_dir:
                        note(sub, "a symbolic link, not followed")
                elif stat.S_ISDIR(st.st_mode):
                    if st.st_dev != dev:
                        note(sub, "a folder on another file system, not read")
                    elif len(sub) > MAX_DEPTH:
                        note(sub, f"a folder nested over {MAX_DEPTH} deep, not read")
                    else:
                        stack.append(sub)
                elif result_like:
                    found.append((sub, st))
        except OSError as exc:
            note(parts, f"a folder that cannot be read ({exc.strerror or type(exc).__name__})")
        finally:
            os.close(fd)
    return sorted(found, key=lambda f: f[0])


def _read_file(folder_fd: int, parts, lst, dev: int, limit: int, too_large) -> tuple[bytes | None, str | None]:
    """The bytes of the regular file ``parts`` below ``folder_fd``, or (None, why not).

    The entry (``lst``, from ``lstat``) must be a regular file with one link on the
    folder's device (``dev``) and at most ``limit`` bytes (``too_large(size)`` says why
    not); it is opened with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO swapped in cannot block) and
    checked again with ``fstat`` before a byte is read.
    """
    def why_not(st) -> str | None:
        kind = _not_regular(st)
        if kind:
            return kind
        if st.st_nlink != 1:
            return f"a hard link ({st.st_nlink} links to the same file), not read"
        if st.st_dev != dev:
            return "on another file system than its result folder, not read"
        if st.st_size > limit:
            return too_large(st.st_size)
        return None

    reason = why_not(lst)
    if reason:
        return None, reason
    try:
        dfd = _open_dir(folder_fd, parts[:-1])
        try:
            fd = os.open(parts[-1], os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                         | getattr(os, "O_CLOEXEC", 0), dir_fd=dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "a symbolic link, not followed"
        return None, f"cannot be opened ({exc.strerror or type(exc).__name__})"
    try:
        st = os.fstat(fd)
        reason = why_not(st)
        if reason:
            return None, reason
        if (st.st_ino, st.st_dev) != (lst.st_ino, lst.st_dev):
            return None, "replaced while the report read its folder, not read"
        chunks, got = [], 0
        while got <= st.st_size:
            block = os.read(fd, min(st.st_size + 1 - got, 1 << 24))
            if not block:
                break
            chunks.append(block)
            got += len(block)
        if got != st.st_size:
            return None, "changed size while read, not read"
        return b"".join(chunks), None
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or type(exc).__name__})"
    finally:
        os.close(fd)


# --- the shapes of result documents ---------------------------------------------------------------

def _list_of_dicts(v, what: str) -> str | None:
    if not isinstance(v, list):
        return f"{what} is {_type_name(v)}, not a list"
    bad = next((i for i, r in enumerate(v) if not isinstance(r, dict)), None)
    return None if bad is None else f"{what}[{bad}] is {_type_name(v[bad])}, not an object"


def _type_name(v) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(v), type(v).__name__)


def _table_shape(doc: dict) -> str | None:
    """Why ``doc`` is not a table of :func:`infoprobe.results.write_table`: {"meta": object,
    "columns": [str, ...], "rows": [object, ...]} (meta may be absent), or None."""
    if "rows" not in doc or "columns" not in doc:
        return f"not a result table: no {'rows' if 'rows' not in doc else 'columns'}"
    why = _list_of_dicts(doc["rows"], "rows")
    if why:
        return why
    cols = doc["columns"]
    if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
        return "columns is not a list of strings"
    if doc.get("meta") is not None and not isinstance(doc["meta"], dict):
        return f"meta is {_type_name(doc['meta'])}, not an object"
    if len(doc["rows"]) > MAX_TABLE_ROWS:
        return f"{len(doc['rows']):,} rows, over the report's limit of {MAX_TABLE_ROWS:,}"
    return None


def _gate_shape(doc: dict) -> str | None:
    """Why ``doc`` is not a gate result (``infoprobe check --json``), or None."""
    missing = [k for k in ("passed", "checks", "metrics") if k not in doc]
    if missing:
        return f"not a gate result: no {', '.join(missing)}"
    if not isinstance(doc["passed"], bool):
        return f"passed is {_type_name(doc['passed'])}, not a boolean"
    if not isinstance(doc["metrics"], dict):
        return f"metrics is {_type_name(doc['metrics'])}, not an object"
    for key in ("statistics", "divergence", "models", "data", "parameters", "confusions"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            return f"{key} is {_type_name(doc[key])}, not an object"
    why = _list_of_dicts(doc["checks"], "checks")
    if why:
        return why
    for key, v in (("divergence.sites", (doc.get("divergence") or {}).get("sites")),
                   ("metrics.class_accuracy", doc["metrics"].get("class_accuracy"))):
        if v is not None and (why := _list_of_dicts(v, key)):
            return why
    return None


def _network_shape(doc: dict) -> str | None:
    """Why ``doc`` is not the ``network.json`` of ``infoprobe modules``, or None."""
    if doc.get("meta") is not None and not isinstance(doc["meta"], dict):
        return f"meta is {_type_name(doc['meta'])}, not an object"
    if not isinstance(doc.get("network"), dict):
        return f"network is {_type_name(doc.get('network'))}, not an object"
    cats = doc["network"].get("categories")
    if cats is not None and not isinstance(cats, dict):
        return f"network.categories is {_type_name(cats)}, not an object"
    return None


def _classify(stem: str, doc) -> tuple[str | None, str | None]:
    """("table" | "gate" | "network" | None, why it is malformed or None). None and None: a
    JSON file that is no result table (a plan, a summary), left out without a word."""
    if not isinstance(doc, dict):
        return None, (f"not a result table: the document is {_type_name(doc)}" if stem in _TABLE_STEMS else None)
    if "rows" in doc or "columns" in doc:
        return "table", _table_shape(doc)
    if stem == "check":
        return "gate", _gate_shape(doc)
    if stem == "network" and "network" in doc:
        return "network", _network_shape(doc)
    if stem in _TABLE_STEMS:
        return None, "not a result table: no rows and columns"
    return None, None


def collect(folders, *, budget: _Budget | None = None) -> tuple[Path, dict, list]:
    """The result files of ``folders``, sorted into analyses.

    Only regular files with one link, on the file system of their result folder, are read;
    symbolic links, hard links, FIFOs, devices and sockets are not (files are opened with
    ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat`` before they are read). Hidden
    entries (names starting with ``.``, such as the staging folders of commands still
    writing there, or ``.git``) are not looked at. A JSON file is read when it fits in
    :data:`MAX_JSON_BYTES` and what is left of the report's JSON share of the memory
    budget; a PNG when its base64 fits in what is left of the page's share. Every JSON
    document is checked once for the shape of a table, a gate result or a network.

    Parameters
    ----------
    folders : list of path-like
        Result folders; JSON sources are named relative to the first.
    budget : optional
        What may still be read and inlined (default: shares of
        :func:`infoprobe.limits.max_memory`; :func:`render` passes its own).

    Returns
    -------
    root : Path
        The first folder: JSON sources are named relative to it.
    sections : dict of id -> _Section
        In :data:`ANALYSES` order, only those with a table or a figure.
    skipped : list of str
        Files left out and why ("name: reason"): links, special files, too large for the
        budget, invalid JSON, malformed tables, tables of no known analysis.

    Raises
    ------
    DataError
        No folder given, a folder does not exist or cannot be opened, or nothing at all can
        be shown (the message names the first files left out and why).
    """
    folders = [Path(f) for f in folders]
    if not folders:
        raise DataError("no result folder given")
    budget = budget or _Budget()
    root = Path(os.path.abspath(folders[0]))
    sections = {aid: _Section(aid, ANALYSES[aid][0]) for aid in ANALYSES}
    skipped = []
    for folder in folders:
        try:
            folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise DataError(f"{folder} is not a folder of results"
                            + ("" if exc.errno in (errno.ENOENT, errno.ENOTDIR) else f" ({exc.strerror})")) from None
        try:
            _collect_folder(folder, folder_fd, root, sections, skipped, budget)
        finally:
            os.close(folder_fd)
    found = {k: s for k, s in sections.items() if s.tables or s.figures}
    if not found:
        why = f"; not shown: {'; '.join(skipped[:3])}" + (f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else "")
        raise DataError(f"no result of infoprobe in {', '.join(map(str, folders))}" + (why if skipped else ""))
    return root, found, skipped


def _collect_folder(folder: Path, folder_fd: int, root: Path, sections: dict, skipped: list, budget: _Budget):
    base = os.path.abspath(folder)
    dev = os.fstat(folder_fd).st_dev

    def rel_of(parts) -> str:
        return _display(os.path.relpath(os.path.join(base, *parts), root) if parts else os.path.relpath(base, root))

    def note(parts, why):
        skipped.append(f"{rel_of(parts)}: {why}")

    for parts, lst in _walk(folder_fd, dev, note):
        rel = rel_of(parts)
        name = parts[-1]
        if _display(name) != name:
            note(parts, "a name that is not valid UTF-8, not read")
            continue
        stem, suffix = os.path.splitext(name)
        inner = Path(*parts)
        if suffix == ".png":
            aid = _analysis_of(inner, stem, "figure")
            if aid is None:
                continue                         # a figure of no analysis: not part of the page
            limit = min(MAX_PNG_BYTES, budget.page_left * 3 // 4)
            data, why = _read_file(folder_fd, parts, lst, dev, limit, lambda n: (
                f"{n:,} bytes, over the report's limit of {MAX_PNG_BYTES:,} for a figure" if n > MAX_PNG_BYTES
                else budget.over("a figure", n, budget.page_left * 3 // 4)))
            if data is not None and not data.startswith(_PNG_SIGNATURE):
                data, why = None, "not a PNG image"
            if data is None:
                note(parts, why)
                continue
            budget.take_page(4 * -(-len(data) // 3))
            sections[aid].figures.append((rel, data))
            continue
        limit = min(MAX_JSON_BYTES, budget.json_left)
        data, why = _read_file(folder_fd, parts, lst, dev, limit, lambda n: (
            f"{n:,} bytes, over the report's limit of {MAX_JSON_BYTES:,} for a JSON file" if n > MAX_JSON_BYTES
            else budget.over("a JSON file", n, budget.json_left)))
        if data is None:
            note(parts, why)
            continue
        budget.json_left -= len(data)
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            note(parts, f"not valid JSON ({type(exc).__name__})")
            continue
        del data
        kind, why = _classify(stem, doc)
        if why:
            note(parts, why)
        elif kind == "gate":
            sections["check"].tables.append((rel, doc))
        elif kind is not None:
            aid = _analysis_of(inner, stem, "table")
            if aid:
                sections[aid].tables.append((rel, doc))
            else:
                note(parts, "a table of no analysis the report knows")


# --- values of any JSON type, as text -----------------------------------------------------------

def _num(v):
    """``v`` if it is a finite real number (not a boolean), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return v if math.isfinite(float(v)) else None
    except OverflowError:                       # an integer beyond any float
        return None


def _get(d, *keys):
    """``d[k1][k2]...`` where each level is an object holding the key, else None."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _text(v, limit: int | None = 80) -> str:
    """Any JSON value as text of at most ``limit`` characters (None: no limit), encodable."""
    if isinstance(v, str):
        s = v
    elif v is None:
        s = ""
    elif isinstance(v, bool):
        s = str(v)
    elif _num(v) is not None:
        s = _fmt(v)
    elif isinstance(v, float):
        s = str(v)                               # nan, inf
    else:
        try:
            s = json.dumps(v, allow_nan=True, default=str) if isinstance(v, (list, dict)) else str(v)
        except (ValueError, TypeError, RecursionError):
            s = _type_name(v)
        except OverflowError:
            s = "(too large a number)"
    if limit is not None and len(s) > limit:
        s = s[: limit - 3] + "..."
    return s.encode("utf-8", "replace").decode("utf-8")


def _esc(v, limit: int | None = 80) -> str:
    return html.escape(_text(v, limit))


# --- headlines: sentences whose numbers point at the JSON values they show ------------------

def _fmt(v, kind: str = "g") -> str:
    """``v`` for reading: ``kind`` "g" (4 significant digits, thousands separated), "%",
    "+" (signed, 4 decimals) or ".Nf" (N decimals; a value that rounds to zero is shown
    unsigned, "0.000", not "-0.000")."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if _num(v) is None:
        return _text(v)
    if kind.startswith("."):
        s = format(v, kind)
        return s[1:] if s.startswith("-") and float(s) == 0 else s
    if kind == "%":
        return f"{100 * v:.1f}%"
    if kind == "+":
        return f"{v:+.4f}"
    if isinstance(v, int) and abs(v) < 10**15:
        return f"{v:,}"
    return f"{v:.4g}" if abs(v) < 1e4 or abs(v) >= 1e15 else f"{v:,.0f}"


def _hl(source: str, pointer: str, value, kind: str = "g") -> str:
    if _num(value) is None:                      # nothing to point at
        return "n/a" if value is None else _esc(value)
    return (f'<span class="hl" data-source="{html.escape(source)}" data-pointer="{html.escape(_text(pointer, None))}">'
            f"{html.escape(_fmt(value, kind))}</span>")


def _pointer_key(k: str) -> str:
    return k.replace("~", "~0").replace("/", "~1")


def _table(sec: _Section, stem: str):
    for rel, doc in sec.tables:
        if Path(rel).stem == stem:
            return rel, doc
    return None, None


def _rows(doc) -> list:
    """The rows of a document whose shape was checked (:func:`_table_shape`)."""
    rows = doc.get("rows")
    return rows if isinstance(rows, list) else []


def _groups(rows: list, key: str = "layer", **where):
    """(value of ``key`` as text, [(row index, row), ...]) of the rows matching ``where``, in order."""
    groups = {}
    for i, r in enumerate(rows):
        if all(r.get(k) == v for k, v in where.items()):
            groups.setdefault(_text(r.get(key)), []).append((i, r))
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
        cand = [(i, r) for i, r in cand if _num(r.get("mutual_information")) is not None]
        if not cand:
            continue
        i, best = max(cand, key=lambda ir: ir[1]["mutual_information"])
        out.append(f"In <b>{html.escape(layer)}</b> the most informative unit about the label is unit "
                   f"{_hl(rel, f'/rows/{i}/unit', best.get('unit'))}, with I(T;Y) = "
                   f"{_hl(rel, f'/rows/{i}/mutual_information', best['mutual_information'])} bits.")
    return out


@_on_table("ablation")
def _headline_ablation(rel, doc):
    out = []
    for layer, mine in _groups(_rows(doc), scope="layer", ranking="mutual_information", order="low"):
        value = "mean" if any(r.get("value") == "mean" for _, r in mine) else mine[0][1].get("value")
        mine = [(i, r) for i, r in mine if r.get("value") == value and _num(r.get("fraction")) is not None]
        if not mine:
            continue
        i0, r0 = min(mine, key=lambda ir: ir[1]["fraction"])
        i5, r5 = min(mine, key=lambda ir: abs(ir[1]["fraction"] - 0.5))
        out.append(f"Replacing the {_hl(rel, f'/rows/{i5}/fraction', r5['fraction'], '%')} lowest-MI units of "
                   f"<b>{html.escape(layer)}</b> by their {_esc(value)} leaves accuracy at "
                   f"{_hl(rel, f'/rows/{i5}/accuracy', r5.get('accuracy'))} (intact "
                   f"{_hl(rel, f'/rows/{i0}/accuracy', r0.get('accuracy'))})"
                   + (f"; mean over {_hl(rel, f'/rows/{i5}/replicates', r5['replicates'])} networks, sd "
                      f"{_hl(rel, f'/rows/{i5}/accuracy_std', r5.get('accuracy_std'))}." if "replicates" in r5 else "."))
    return out


def largest_multiplets(rows: list) -> list:
    """(row index, row) of the largest multiplet size of each layer and search direction of
    ``synergy_profile`` rows (:func:`infoprobe.analyses.synergy.profiles`), layer by layer,
    the synergy side (lowest O-information) first: the rows the synergy headline quotes.
    Rows without a numeric ``size`` and ``mean`` are passed over."""
    best = {}
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or r.get("direction") not in ("synergy", "redundancy") \
                or _num(r.get("size")) is None or _num(r.get("mean")) is None:
            continue
        key = (_text(r.get("layer")), r["direction"])
        if key not in best or r["size"] > best[key][1]["size"]:
            best[key] = (i, r)
    layers = list(dict.fromkeys(layer for layer, _ in best))
    return [best[(layer, d)] for layer in layers for d in ("synergy", "redundancy") if (layer, d) in best]


#: Per search direction of a synergy profile: (the best called by name, the dominance it
#: claims, its sign condition as HTML, the other side's name and dominance, the end of the
#: spread over networks that may cross zero when the mean has the sign).
_SIDES = {"synergy": ("synergistic", "synergy-dominated", "Ω &lt; 0", "redundant", "redundancy-dominated", "max"),
          "redundancy": ("redundant", "redundancy-dominated", "Ω &gt; 0", "synergistic", "synergy-dominated", "min")}


def _synergy_sentence(rel: str, i: int, r: dict) -> str:
    """The headline of one profile row, worded from the sign of O-information (Rosas et al.
    2019): Omega < 0 synergy-dominated, Omega > 0 redundancy-dominated. The best multiplet of
    the synergy side (lowest Omega) is called synergistic only when its Omega < 0, the best of
    the redundancy side redundant only when its Omega > 0; with several networks, the mean is
    quoted and a sign that does not hold in every network is said."""
    name, dominated, sign, other, other_dominated, spread = _SIDES[r["direction"]]
    v, n = r["mean"], _num(r.get("networks")) or 1
    holds = v < 0 if r["direction"] == "synergy" else v > 0
    layer, size = f"<b>{_esc(r.get('layer'))}</b>", _hl(rel, f"/rows/{i}/size", r["size"])
    omega = f"Ω = {_hl(rel, f'/rows/{i}/mean', v)} bits"
    notes = [f"mean over {_hl(rel, f'/rows/{i}/networks', r['networks'])} networks"] if n > 1 else []
    if "greedy" in _text(r.get("method")):
        notes.append("found by greedy search")
    far = "min" if spread == "max" else "max"         # the other end of the spread over networks
    w, u = _num(r.get(spread)), _num(r.get(far))
    tail = ""
    if not holds:
        s = (f"{layer}: no {dominated} multiplet ({sign}) of {size} units found"
             + (" on average" if n > 1 else "") + f": the least {other} has {omega}, "
             + (other_dominated if v != 0 else f"neither {dominated} nor {other_dominated}"))
        if n > 1 and u is not None and (u < 0 if r["direction"] == "synergy" else u > 0):
            tail = (f", though some network has one: the {'smallest' if far == 'min' else 'largest'} is "
                    f"{_hl(rel, f'/rows/{i}/{far}', u)} bits")
    elif n > 1 and w is not None and (w >= 0 if r["direction"] == "synergy" else w <= 0):
        s = f"{layer}: the most {name} multiplets of {size} units have {omega}, {dominated} on average"
        notes.insert(0, sign)
        tail = (f", not in every network: the {'largest' if spread == 'max' else 'smallest'} is "
                f"{_hl(rel, f'/rows/{i}/{spread}', w)} bits")
    else:
        s = f"{layer}: the most {name} multiplet of {size} units has {omega}, {dominated}"
        notes.insert(0, sign)
    return s + (f" ({'; '.join(notes)})" if notes else "") + tail + "."


@_on_table("synergy_profile")
def _headline_synergy(rel, doc):
    return [_synergy_sentence(rel, i, r) for i, r in largest_multiplets(_rows(doc))]


@_on_table("network")
def _headline_modules(rel, doc):
    out = []
    net = doc.get("network")
    if not isinstance(net, dict):
        return out
    if "ncut" in net:
        out.append(f"The partition into {_hl(rel, '/network/n_clusters', net.get('n_clusters'))} clusters has "
                   f"n-cut {_hl(rel, '/network/ncut', net['ncut'])}; against shuffled networks p = "
                   f"{_hl(rel, '/network/clusterability_p_all', net.get('clusterability_p_all'))} (the floor with "
                   "n shuffles is 1/(n + 1)).")
    p = _num(net.get("fisher_importance"))
    if p is not None:
        alpha = _num(_get(doc, "meta", "parameters", "alpha")) or 0.05
        out.append(("Sub-clusters matter more than random groups of the same size" if p < alpha else
                    "Sub-clusters do not matter detectably more than random groups of the same size")
                   + f": Fisher's combined p = {_hl(rel, '/network/fisher_importance', p)}"
                   + (f" (below α = {_fmt(alpha)})." if p < alpha else f" (not below α = {_fmt(alpha)})."))
    cats = net.get("categories")
    if isinstance(cats, dict) and cats:
        parts = [f"{_hl(rel, '/network/categories/' + _pointer_key(k), v)} {_esc(k)}"
                 for k, v in list(cats.items())[:MAX_HEADLINES] if v]
        out.append("Sub-clusters by category: " + ", ".join(parts) + ".")
    return out


def _headline_frivolous(sec):
    out = []
    rel, doc = _table(sec, "gains")
    if rel is not None:
        for i, r in enumerate(_rows(doc)[:12]):
            out.append(f"{_esc(r.get('measure'))} units of <b>{_esc(r.get('layer'))}</b> scale "
                       f"with width as width<sup>g</sup>, g = {_hl(rel, f'/rows/{i}/g', r.get('g'))}.")
    for rel, doc in sec.tables:
        if Path(rel).stem == "frivolous":
            for i, r in enumerate(_rows(doc)[:12]):
                out.append(f"{html.escape(rel)}: {_hl(rel, f'/rows/{i}/prunable_fraction', r.get('prunable_fraction'), '%')} "
                           f"of <b>{_esc(r.get('layer'))}</b>'s units are prunable and "
                           f"{_hl(rel, f'/rows/{i}/redundant_fraction', r.get('redundant_fraction'), '%')} redundant.")
        if len(out) >= 12:
            break
    return out[:12]


def _decimals(se) -> int:
    """Decimals that show a value to the first significant digit of its standard error
    ``se`` (3 where none is known), between 1 and 6."""
    if not se:
        return 3
    return min(6, max(1, -math.floor(math.log10(se))))


def _trajectory_sentence(rel: str, layer: str, mine: list, measure: str, name: str, unit: str,
                         axis: str, se_column: str | None = None) -> str:
    """The headline of one layer's ``measure`` over checkpoints (``mine``: (row index, row) in
    training order): its first and last values, its highest and, when between them, its
    lowest, each with where it is on ``axis``; values to the first significant digit of the
    largest standard error (``se_column``), so that noise around zero reads "0.000", and a
    value within two standard errors of zero said to be; and the checkpoints
    indistinguishable from the highest (within two standard errors of the difference)."""
    from .report import AXIS_LABELS

    ses = [(i, r[se_column]) for i, r in mine if se_column and (_num(r.get(se_column)) or 0) > 0]
    i_se, se = max(ses, key=lambda ise: ise[1]) if ses else (None, None)
    fixed = f".{_decimals(se)}f"

    def at(i, r):
        zero = se is not None and abs(r[measure]) <= 2 * (_num(r.get(se_column)) or se)
        return (f"{_hl(rel, f'/rows/{i}/{measure}', r[measure], fixed)} {unit}"
                + (" (zero within two standard errors)" if zero else "")
                + f" at {AXIS_LABELS.get(axis, axis)} {_hl(rel, f'/rows/{i}/{axis}', r.get(axis))}")

    head = f"{name} of <b>{html.escape(layer)}</b>"
    if len(mine) == 1:
        return f"{head} is {at(*mine[0])}."
    high = max(mine, key=lambda ir: ir[1][measure])
    low = min(mine, key=lambda ir: ir[1][measure])
    roles = {}
    for (i, _), role, shown in ((mine[0], "first", True), (high, "highest", True),
                                (low, "lowest", low[0] not in (mine[0][0], mine[-1][0], high[0])), (mine[-1], "last", True)):
        if shown:
            roles.setdefault(i, []).append(role)
    s = f"{head}: " + ", ".join(f"{' and '.join(roles[i])} {at(i, r)}" for i, r in mine if i in roles)
    if se is not None:
        s += f"; Monte Carlo standard error at most {_hl(rel, f'/rows/{i_se}/{se_column}', se, fixed)} {unit}"
        near = [(i, r) for i, r in mine if high[1][measure] - r[measure]
                <= 2 * math.hypot(_num(r.get(se_column)) or 0, _num(high[1].get(se_column)) or 0)]
        if len(near) > 1:
            lo, hi = near[0], near[-1]
            s += (f"; within two standard errors of the highest from {AXIS_LABELS.get(axis, axis)} "
                  f"{_hl(rel, f'/rows/{lo[0]}/{axis}', lo[1].get(axis))} to "
                  f"{_hl(rel, f'/rows/{hi[0]}/{axis}', hi[1].get(axis))} ({len(near)} of {len(mine)} checkpoints)")
    return s + "."


@_on_table("flow")
def _headline_flow(rel, doc):
    from .report import axis_column

    rows = _rows(doc)
    axis = axis_column(rows)
    out = []
    for layer, mine in _groups(rows):
        mine = sorted(mine, key=lambda ir: _num(ir[1].get(axis)) if _num(ir[1].get(axis)) is not None else ir[0])
        mi = [(i, r) for i, r in mine if _num(r.get("mi")) is not None]
        if mi:
            out.append(_trajectory_sentence(rel, layer, mi, "mi", "I(X;T)", _esc(mi[-1][1].get("unit") or "bits"),
                                            axis, "mi_se"))
            continue
        binned = [(i, r) for i, r in mine if _num(r.get("binned_entropy")) is not None]
        if binned:
            out.append(_trajectory_sentence(rel, layer, binned, "binned_entropy", "H(Bin(T))", "bits", axis))
    return out


def _headline_check(sec):
    out = []
    for rel, doc in sec.tables:
        m = doc.get("metrics") or {}
        verdict = "passes" if doc.get("passed") is True else "fails"
        failed = [_text(c.get("name")) for c in doc.get("checks") or [] if not c.get("passed")]
        s = (f"The candidate <b>{verdict}</b> the gate ({html.escape(rel)}"
             + (f"; failed: {html.escape(_text(', '.join(failed), 300))}" if failed else "") + ").")
        if m.get("accuracy_drop") is not None:
            s += (f" Accuracy {_hl(rel, '/metrics/accuracy_reference', m.get('accuracy_reference'))} → "
                  f"{_hl(rel, '/metrics/accuracy_candidate', m.get('accuracy_candidate'))}, drop "
                  f"{_hl(rel, '/metrics/accuracy_drop', m['accuracy_drop'], '+')}")
            p = _get(doc, "statistics", "mcnemar_p")
            if p is not None:
                s += f" (McNemar p = {_hl(rel, '/statistics/mcnemar_p', p)})"
            s += "."
        if m.get("label_change") is not None:
            s += f" {_hl(rel, '/metrics/label_change', m['label_change'], '%')} of predicted labels changed."
        first = _get(doc, "divergence", "first_diverging")
        if first:
            s += f" The models part first at site <b>{_esc(first)}</b>."
        out.append(s)
    return out


@_on_table("analyze")
def _headline_analyze(rel, doc):
    """What ran, with its settings, seconds and estimate; the total against the budget (within
    it, or over it by how much: ``meta.timing``); what was cut or skipped; the store kept."""
    rows = _rows(doc)
    ran = [(i, r) for i, r in enumerate(rows) if not r.get("skipped")]

    def one(i, r):
        sets = f"; {_esc(r['settings'], 120)}" if r.get("settings") else ""
        est = f", estimated {_hl(rel, f'/rows/{i}/estimate_s', r.get('estimate_s'))} s" \
            if _num(r.get("estimate_s")) is not None else ""
        return f"{_esc(r.get('analysis'))} ({_hl(rel, f'/rows/{i}/seconds', r.get('seconds'))} s{est}{sets})"

    out = ["Ran " + (", ".join(one(i, r) for i, r in ran[:MAX_HEADLINES]) or "nothing") + "."]
    timing = _get(doc, "meta", "timing")
    budget = _get(doc, "meta", "parameters", "budget_min")
    budget_text = f"the budget of {_hl(rel, '/meta/parameters/budget_min', budget)} minutes"
    if isinstance(timing, dict) and _num(timing.get("total_s")) is not None:
        total = (f"In all {_hl(rel, '/meta/timing/total_s', timing['total_s'])} s, calibration "
                 f"{_hl(rel, '/meta/timing/calibration_s', timing.get('calibration_s'))} s included")
        if _num(budget) is None:
            out.append(f"{total}, running the plan given (no time budget).")
        elif timing.get("within_budget") is True:
            out.append(f"{total}: within {budget_text}.")
        else:
            out.append(f"{total}: over {budget_text} by {_hl(rel, '/meta/timing/over_s', timing.get('over_s'))} s.")
        if timing.get("store"):
            out.append(_esc(timing["store"], 300))
    elif _num(budget) is not None:          # written before analyze recorded its total
        out.append(f"Planned within {budget_text}; this analyze.json does not record the total time.")
    out += [f"{_esc(r.get('analysis'))} was cut to fit: {_esc(r['cut'], 300)}." for _, r in ran if r.get("cut")]
    out += [f"{_esc(r.get('analysis'))} did not run: {_esc(r['skipped'], 300)}." for r in rows if r.get("skipped")]
    return out


HEADLINES = {"analyze": _headline_analyze, "importance": _headline_importance, "ablation": _headline_ablation, "synergy": _headline_synergy,
             "modules": _headline_modules, "frivolous": _headline_frivolous, "flow": _headline_flow,
             "check": _headline_check}


def plain_text(sentence: str) -> str:
    """A headline sentence of the page as plain text (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]*>", "", sentence))


def headlines(folders) -> dict:
    """The headline sentences of the report of ``folders`` as plain text, by analysis id
    (a key of :data:`ANALYSES`, only those with results): the same sentences, from the same
    JSON files, as the page :func:`render` writes, for a terminal.

    Raises
    ------
    DataError
        As :func:`collect`.
    """
    _, sections, _ = collect(folders)
    return {sid: [plain_text(s) for s in HEADLINES[sid](sec)] for sid, sec in sections.items()}


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
    """(shown text, data-value, numeric) of any JSON value."""
    if isinstance(v, bool):
        return str(v), str(v), False
    if _num(v) is not None:
        return _fmt(v), repr(float(v)), True
    if v is None or isinstance(v, float):      # null; NaN and infinities sort as blanks
        return _text(v), "", True
    return _text(v, 80), _text(v, 200), False


def _html_table(rel: str, doc: dict) -> str:
    all_columns = [c for c in doc.get("columns") or [] if isinstance(c, str)]
    columns = all_columns[:MAX_COLUMNS]
    rows = _rows(doc)
    if not columns:
        return ""
    shown = rows[:MAX_ROWS]
    numeric = [all(_num(r.get(c)) is not None or r.get(c) is None or isinstance(r.get(c), float) for r in shown)
               and any(_num(r.get(c)) is not None for r in shown) for c in columns]
    head = "".join(f'<th class="{"num" if num else "text"}" scope="col">{_esc(c)}'
                   + (f" [{html.escape(UNITS[c])}]" if c in UNITS else "") + "</th>"
                   for c, num in zip(columns, numeric))
    body = []
    for r in shown:
        cells = []
        for c, num in zip(columns, numeric):
            text, value, _ = _cell(r.get(c))
            cells.append(f'<td class="{"num" if num else "text"}" data-value="{html.escape(value)}">'
                         f"{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = []
    if len(rows) > MAX_ROWS:
        notes.append(f"First {MAX_ROWS:,} of {len(rows):,} rows; all are in <code>{html.escape(rel)}</code> and its CSV.")
    if len(all_columns) > MAX_COLUMNS:
        notes.append(f"First {MAX_COLUMNS:,} of {len(all_columns):,} columns; all are in "
                     f"<code>{html.escape(rel)}</code> and its CSV.")
    note = "".join(f"<p>{n}</p>" for n in notes)
    return (f'<details{" open" if len(rows) <= 40 else ""}><summary><code>{html.escape(rel)}</code> '
            f"({len(rows):,} rows)</summary>{note}"
            f'<div class="table-wrap"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div></details>")


def _check_tables(rel: str, doc: dict) -> str:
    """The gate's checks and per-site divergence as ordinary tables."""
    parts = [_html_table(rel + " (checks)", {"columns": ["name", "value", "threshold", "passed", "description"],
                                             "rows": doc.get("checks") or []})]
    sites = _get(doc, "divergence", "sites")
    if sites:
        cols = ["reference", "candidate", "matched_by", "compared_on", "relative_error", "correlation_mean",
                "correlation_min", "cka", "diverged"]
        parts.append(_html_table(rel + " (per-site divergence)", {"columns": cols, "rows": sites}))
    classes = _get(doc, "metrics", "class_accuracy")
    if classes:
        cols = ["class", "n", "reference", "candidate", "drop", "drop_upper", "mcnemar_p", "p_adjusted", "significant"]
        parts.append(_html_table(rel + " (per class)", {"columns": cols, "rows": classes}))
    return "".join(parts)


def _caption(meta: dict) -> str:
    """Model, data and N of a figure, from its section's provenance."""
    inputs = meta.get("inputs") if isinstance(meta.get("inputs"), dict) else {}
    params = meta.get("parameters") if isinstance(meta.get("parameters"), dict) else {}
    names = []
    for role, d in list(inputs.items())[:100]:
        if isinstance(d, dict) and d.get("path"):
            names.append(f"{_text(role, 40)} {Path(_text(d['path'], 1000)).name[:80]}")
    if len(names) > 4:
        names = names[:3] + [f"... ({len(inputs)} inputs)"]
    n = params.get("n_samples")
    split = params.get("split") or _get(params, "store_attrs", "data_split")
    return "; ".join(names + ([f"split {_text(split, 40)}"] if split else [])
                     + ([f"N = {_fmt(n)}"] if isinstance(n, int) and _num(n) is not None else []))


def _provenance(sec: _Section) -> str:
    seen, blocks = set(), []
    for rel, doc in sec.tables:
        meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else None
        if meta is None:
            models = doc.get("models")
            meta = {"inputs": dict(models) if isinstance(models, dict) else {},
                    "data": doc.get("data"), "parameters": doc.get("parameters")}
        try:
            text = json.dumps(meta, indent=1, sort_keys=True, default=str)
        except (ValueError, TypeError, RecursionError):
            text = "(provenance that cannot be shown)"
        if len(text) > MAX_PROVENANCE_CHARS:
            text = text[:MAX_PROVENANCE_CHARS] + f"\n... (first {MAX_PROVENANCE_CHARS:,} characters; all in {rel})"
        if text in seen:
            continue
        seen.add(text)
        blocks.append(f"<p><code>{html.escape(rel)}</code></p><pre>{_esc(text, None)}</pre>")
    return ('<details class="provenance"><summary>Provenance: inputs (sha256), parameters, versions</summary>'
            + "".join(blocks) + "</details>")


def _section_html(sid: str, sec: _Section, skipped: list, budget: _Budget) -> str:
    """The HTML of one section; what does not fit the page's share of the budget is listed in
    ``skipped`` instead."""
    headline = HEADLINES[sid](sec)
    sec.headline = headline[:MAX_HEADLINES] + (
        [f"... and {len(headline) - MAX_HEADLINES:,} more; see the tables."] if len(headline) > MAX_HEADLINES else [])
    meta = next((d.get("meta") for _, d in sec.tables if isinstance(d.get("meta"), dict)), {}) or {}
    caption = _caption(meta)
    figs = "".join(
        f'<figure><img alt="{html.escape(rel)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f"<figcaption><code>{html.escape(rel)}</code>{' — ' + html.escape(caption) if caption else ''}"
        "</figcaption></figure>" for rel, data in sec.figures)
    tables = []
    for rel, doc in sec.tables:
        t = _check_tables(rel, doc) if sid == "check" else _html_table(rel, doc)
        if budget.take_page(len(t)):
            tables.append(t)
        else:
            skipped.append(f"{rel}: {budget.over('its table', len(t), budget.page_left)}")
    prov = _provenance(sec)
    if not budget.take_page(len(prov)):
        prov = ""
    head = ('<div class="headline">' + "".join(f"<p>{s}</p>" for s in sec.headline) + "</div>"
            if sec.headline else "")
    return (f'<section class="analysis" id="{sid}"><h2>{html.escape(sec.title)}</h2>{head}{figs}'
            f"{''.join(tables)}{prov}</section>")


def render(folders, *, title: str | None = None) -> str:
    """The report page of ``folders`` as an HTML string (see :func:`write_report`).

    The files are read as :func:`collect` reads them, within shares of the memory budget
    (:func:`infoprobe.limits.max_memory`, ``--max-memory``): at most :data:`JSON_SHARE` of
    it in JSON, at most :data:`PAGE_SHARE` inlined into the page (figures, tables,
    provenance). A file refused, malformed or over the budget is listed under "Files not
    shown" with the reason; so are the files of a section that fails to render for a reason
    not foreseen (the rest of the page is still written).

    Raises
    ------
    DataError
        As :func:`collect`.
    """
    budget = _Budget()
    root, sections, skipped = collect(folders, budget=budget)
    parts = []
    shown = {}
    for sid, sec in sections.items():
        try:
            parts.append(_section_html(sid, sec, skipped, budget))
            shown[sid] = sec
        except MemoryError:
            raise
        except Exception as exc:                 # last resort: one section, not the page
            for rel in [rel for rel, _ in sec.tables] + [rel for rel, _ in sec.figures]:
                skipped.append(f"{rel}: could not be shown ({type(exc).__name__} while rendering its section)")
    nav = "".join(f'<a href="#{sid}">{html.escape(sec.title.split(":")[0].split(" (")[0])}</a>'
                  for sid, sec in shown.items())
    listed = skipped[:MAX_LISTED] + ([f"... and {len(skipped) - MAX_LISTED:,} more files"]
                                     if len(skipped) > MAX_LISTED else [])
    skipped_html = ("<section class=\"analysis\" id=\"skipped\"><h2>Files not shown</h2><ul class=\"skipped\">"
                    + "".join(f"<li>{_esc(s, 1000)}</li>" for s in listed) + "</ul></section>") if skipped else ""
    title = title or f"infoprobe report: {', '.join(Path(f).name for f in folders)}"
    from . import __version__

    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_esc(title, None)}</title><style>{_CSS}</style></head>"
            f'<body data-root="{_esc(shown_path(root), None)}"><header><h1>{_esc(title, None)}</h1>'
            f"<p>infoprobe {html.escape(__version__)}; results read from "
            f"{_esc(', '.join(shown_path(Path(f).resolve()) for f in folders), None)}.</p><nav>{nav}</nav></header>"
            f"<main>{''.join(parts)}{skipped_html}</main><script>{_JS}</script></body></html>")


def write_report(folders, out, *, title: str | None = None, overwrite: bool = False) -> Path:
    """Write one self-contained HTML report of the result folders ``folders`` to ``out``.

    The folders are read as untrusted (:func:`collect`, :func:`render`): regular files
    only, no links or special files, within the memory budget; every file left out is
    listed on the page under "Files not shown" with the reason.

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
        A folder is missing, or nothing in the folders can be shown (the message names the
        first files left out and why).
    """
    check_outputs([out], overwrite)
    page = render(folders, title=title)
    atomic_write_bytes(out, page.encode("utf-8", "replace"))
    return Path(out)
