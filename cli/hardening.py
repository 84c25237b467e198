"""What every command shares at run time: one-line errors and exit statuses, signals, warnings,
budgets, and result files that appear only when a command succeeds."""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
import warnings

import click

from infoprobe.errors import InfoprobeError, OutputExistsError, one_line

from .options import size

#: Exit status of an interrupted command (128 + SIGINT), as shells report Ctrl-C.
EXIT_INTERRUPTED = 130
#: Exit status of a defect in infoprobe itself (never an input problem).
EXIT_INTERNAL = 3


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so that staged results are discarded on the way out."""


def _interrupt(exc_type):
    """A signal handler raising ``exc_type``, except where the exception would be lost or
    would break a file (a finalizer, an HDF5 write callback: see
    :func:`infoprobe.results.uninterruptible`): there the signal is delivered again 20 ms
    later (SIGALRM)."""
    from infoprobe.results import interruptible

    def handler(signum, frame):
        if not interruptible(frame):
            signal.signal(signal.SIGALRM, handler)
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            return
        raise exc_type()
    return handler


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (e.g. too few random draws to reach alpha) as one line on stderr."""
    click.echo(f"infoprobe: warning: {' '.join(str(message).split())}", err=True)


#: What a failed write's error number means for the user (its file may be unnamed: a write to
#: an open file).
_DISK_HINTS = {errno.ENOSPC: " (the disk of the output folder or of TMPDIR is full: free space there)",
               errno.EFBIG: " (a file reached the file-size limit, ulimit -f, or the file system's largest file)",
               errno.EDQUOT: " (the disk quota is used up)"}


class Group(click.Group):
    """Turns every failure into one line on stderr and an exit status CI can rely on.

    2: an error caused by input (:class:`InfoprobeError`), a full disk or another operating
    system error, memory exhausted; 130: interrupted (Ctrl-C or SIGTERM), with a line saying
    what was kept; 3: a defect in infoprobe (``INFOPROBE_DEBUG=1`` shows the traceback).
    """

    def invoke(self, ctx):
        from infoprobe.results import keep_on_interrupt, kept_on_interrupt

        keep_on_interrupt(None)
        warnings.showwarning = _show_warning
        try:
            previous = {sig: signal.signal(sig, _interrupt(exc)) for sig, exc in
                        ((signal.SIGTERM, _Terminated), (signal.SIGINT, KeyboardInterrupt))}
        except ValueError:   # not the main thread
            previous = {}
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OutputExistsError as exc:             # the library's overwrite=True is --overwrite here
            click.echo(f"infoprobe: error: {one_line(exc.cli_message(), 10_000)}", err=True)
            sys.exit(2)
        except InfoprobeError as exc:
            click.echo(f"infoprobe: error: {one_line(exc, 10_000)}", err=True)
            sys.exit(2)
        except (KeyboardInterrupt, _Terminated):
            click.echo(f"infoprobe: interrupted; {kept_on_interrupt()}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except MemoryError:
            click.echo("infoprobe: error: out of memory; lower --max-memory (or --batch-size) so that infoprobe "
                       "works in smaller blocks", err=True)
            sys.exit(2)
        except OSError as exc:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            hint = _DISK_HINTS.get(exc.errno, "")
            click.echo(f"infoprobe: error: {exc.strerror or one_line(exc, 10_000)}{where}{hint}; nothing was "
                       "written under a final name", err=True)
            sys.exit(2)
        except Exception as exc:
            if os.environ.get("INFOPROBE_DEBUG"):
                raise
            click.echo(f"infoprobe: internal error: {type(exc).__name__}: {one_line(exc)} (a defect in "
                       "infoprobe: please report it; INFOPROBE_DEBUG=1 shows the traceback)", err=True)
            sys.exit(EXIT_INTERNAL)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


#: ``--provider`` choices (kept here so that building the CLI imports no onnxruntime).
PROVIDER_NAMES = ("cpu", "cuda")


#: Commands whose independent parts (models, checkpoints, replicate networks, blocks of
#: interventions, multiplet searches) run on Dask with
#: ``--workers`` / ``--scheduler`` (:mod:`infoprobe.parallel`).
PARALLEL = {"frivolous", "flow", "ablate", "modules", "synergy"}


def harden(cmd: click.Command, *, stage: bool = True, sites: bool = True, runtime: bool = True) -> click.Command:
    """Give a command the budget options and run it inside a result set.

    Adds ``--max-memory`` (every command), ``--site``, ``--sites`` and ``--output`` (commands that read a model,
    ``sites``: every model the command loads discovers its sites under them,
    :func:`infoprobe.model.discovery`) and, where the command captures, ``--max-store-size``;
    ``--provider`` (commands that run models, ``runtime``: every onnxruntime session runs on it,
    :func:`infoprobe.runner.execution`); resolves ``--progress`` left unset to "stderr is a
    terminal"; runs the command with its
    budgets (:func:`infoprobe.limits.budgets`) and every file it writes staged
    (:func:`infoprobe.results.result_set`): the files appear when it succeeds (exit 0, or 1
    for a gate that fails), never after an error or an interruption.
    """
    if getattr(cmd, "_hardened", False):   # main run as a script and imported: harden once
        return cmd
    cmd._hardened = True
    cmd.params.append(click.Option(
        ["--max-memory"], default=None, metavar="SIZE", envvar="INFOPROBE_MAX_MEMORY",
        help="Memory budget: refuse, before allocating, any array larger than this (default 4G; "
             "env INFOPROBE_MAX_MEMORY)."))
    if sites:
        cmd.params += [
            click.Option(["--site", "extra_sites"], multiple=True, metavar="NAME[:AXIS]",
                         help="Also analyse the graph value NAME as a unit site, its units on per-sample axis AXIS "
                              "(0: channels first; the last axis: tokens x units). Repeatable."),
            click.Option(["--sites", "select_sites"], default=None, metavar="GLOBS",
                         help="Only the sites whose names match one of these comma-separated glob patterns "
                              "(e.g. 'block*_add,fc'); `infoprobe inspect` lists the sites."),
            click.Option(["--output", "class_output"], default=None, metavar="NAME",
                         help="The model output that holds the class scores, logits or probabilities [N, classes] (default: "
                              "the float output named like class scores, else the first float output; never an "
                              "integer label tensor such as skl2onnx's 'label'; `inspect` says which). "
                              "E.g. --output probabilities.")]
    if runtime:
        cmd.params.append(click.Option(
            ["--provider"], type=click.Choice(sorted(PROVIDER_NAMES)), default="cpu", show_default=True,
            envvar="INFOPROBE_PROVIDER",
            help="Where onnxruntime runs the models: cpu, or cuda (onnxruntime-gpu's CUDA execution provider; "
                 "env INFOPROBE_PROVIDER)."))
    if any(p.name == "data_path" for p in cmd.params):
        cmd.params += [
            click.Option(["--image-size"], type=click.IntRange(min=1), default=None, metavar="PIXELS",
                         help="A folder of images (--data DIR): resize every image to PIXELS x PIXELS (bilinear). "
                              "Default: the images' own size, the same for all."),
            click.Option(["--mean"], default=None, metavar="M[,M,M]",
                         help="A folder of images: per-channel mean of values in [0, 1] to subtract "
                              "(e.g. 0.485,0.456,0.406); with --std. Default: uint8 values, scaled by --scale."),
            click.Option(["--std"], default=None, metavar="S[,S,S]",
                         help="A folder of images: per-channel standard deviation to divide by "
                              "(e.g. 0.229,0.224,0.225).")]
    if cmd.name in PARALLEL:
        from infoprobe.parallel import NO_WORKERS_TIMEOUT, SCHEDULER_TIMEOUT

        cmd.params += [
            click.Option(["--workers"], type=click.IntRange(min=1), default=1, show_default=True,
                         help="Run the independent work (models of a sweep, checkpoints, replicate networks, blocks "
                              "of ablations and lesions, synergy searches) on a Dask LocalCluster of this many worker "
                              "processes (1: in this process), e.g. --workers 4. Results equal the serial run's. The "
                              "cluster listens on 127.0.0.1 with TLS and a certificate made for the run: no other "
                              "process can join it."),
            click.Option(["--scheduler"], default=None, metavar="ADDRESS",
                         help="Send them to a running Dask scheduler at tls://HOST:PORT instead, with "
                              "--scheduler-security (e.g. --scheduler tls://10.0.0.5:8786 --scheduler-security "
                              "tls.toml); its workers must see the same files at the same paths. Only TLS: task "
                              "results are unpickled here, so the scheduler and its workers must authenticate "
                              "themselves. Connecting and every call to it: at most "
                              f"{SCHEDULER_TIMEOUT:g} s; no workers for {NO_WORKERS_TIMEOUT:g} s ends the run."),
            click.Option(["--scheduler-security", "scheduler_security"], default=None, metavar="FILE",
                         help="TOML file naming the certificates for --scheduler, paths relative to it: "
                              "ca_file = \"ca.pem\" (the authority that signed the scheduler's and workers' "
                              "certificates), cert = \"client.pem\" and key = \"client-key.pem\" (this client's; "
                              "key may be left out if cert holds it). JSON if FILE ends in .json.")]
    callback = cmd.callback

    @functools.wraps(callback)
    def run(*args, max_memory=None, extra_sites=(), select_sites=None, class_output=None, provider="cpu",
            workers=1, scheduler=None, scheduler_security=None, image_size=None, mean=None, std=None, **kwargs):
        from infoprobe.data import image_options
        from infoprobe.limits import budgets
        from infoprobe.model import discovery
        from infoprobe.parallel import engine
        from infoprobe.results import result_set
        from infoprobe.runner import execution

        from .options import csv_list

        if "progress" in kwargs and kwargs["progress"] is None:
            kwargs["progress"] = sys.stderr.isatty()
        status = None
        store = kwargs.pop("max_store_size", None)
        with budgets(memory=size(max_memory) if max_memory else None, store=size(store) if store else None), \
                discovery(extra_sites, csv_list(select_sites), output=class_output,
                          say=lambda line: click.echo(line, err=True)), execution(provider), \
                engine(scheduler or ("local" if workers > 1 else None), workers=workers,
                       security=scheduler_security), \
                image_options(image_size, mean, std):
            with result_set() if stage else contextlib.nullcontext():
                try:
                    return callback(*args, **kwargs)
                except SystemExit as exc:   # a gate's verdict (0/1) keeps its report
                    if exc.code not in (None, 0, 1):
                        raise
                    status = exc.code
        sys.exit(status)

    cmd.callback = run
    return cmd
