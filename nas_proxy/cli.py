"""``nas-proxy``: argparse wiring only. Each command parses, calls the library, prints.

Bad input (a :class:`NasProxyError`) or a bad environment (a file that cannot be written, a
full disk, no memory) prints one ``error: ...`` line and exits 2. Anything else is a bug: one
``error: internal error ...`` line and exit 1; ``--debug`` (or ``NAS_PROXY_DEBUG=1``) adds the
traceback of any error.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from nas_proxy.errors import NasProxyError, one_line
from nas_proxy.log import debug_enabled, plain_warnings

if TYPE_CHECKING:  # the CLI imports a command's modules when the command runs: `--help` stays fast
    from nas_proxy.plan import ExecutionSettings

Command = Callable[[argparse.Namespace], int]
AddCommand = Callable[["argparse._SubParsersAction[OneLineParser]"], None]

# Each section below appends its ``_add_*`` function; the order is the order of `nas-proxy --help`.
COMMANDS: list[AddCommand] = []


class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors as one ``error: ...`` line and exit 2 (also the benchmarks' parser)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own usage errors: one line, exit 2, like ours.
        self.exit(2, f"error: {self.prog}: {message}\n")


@contextmanager
def log_lines(*names: str, quiet: Sequence[str] = ()) -> Iterator[None]:
    """While the block runs, the named loggers' records go to stderr: ``warning: ...`` or the plain message.

    The ``quiet`` loggers say nothing meanwhile (Dask's client logs a lost scheduler with
    tracebacks; our own lines say it once).
    """

    class _Lines(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            text = record.getMessage()
            return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Lines())
    loggers = [logging.getLogger(n) for n in names]
    for name in quiet:  # imported first: a library sets its loggers' levels when imported
        with suppress(ImportError):
            importlib.import_module(name)
    # Each logger below them too: Dask sets levels on some (distributed.client) that would let them speak.
    silenced = [logging.getLogger(n) for n in quiet] + [
        lg for key, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger) and any(key.startswith(n + ".") for n in quiet)
    ]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    saved_quiet = [lg.level for lg in silenced]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False  # once, here; not again through the root's handlers
    for lg in silenced:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
        for lg, level in zip(silenced, saved_quiet, strict=True):
            lg.setLevel(level)


# ----------------------------------------------------------------------------- space


def _cmd_space_list(args: argparse.Namespace) -> int:
    from nas_proxy.space import load_space

    space = load_space(args.space)
    for spec in space.select(sample=args.sample, seed=args.seed, pattern=args.filter):
        print(spec.id)
    return 0


def _cmd_space_show(args: argparse.Namespace) -> int:
    from nas_proxy.data import DATASETS
    from nas_proxy.errors import UnknownNameError
    from nas_proxy.models import build_model, count_flops, count_params
    from nas_proxy.space import load_space

    space = load_space(args.space)
    spec = space.get(args.arch_id)
    if args.dataset not in DATASETS:
        raise UnknownNameError("dataset", args.dataset, DATASETS)
    info = DATASETS[args.dataset]
    model = build_model(spec, info.channels, info.size, info.num_classes)
    print(f"id:       {spec.id}")
    for key, value in spec.as_dict().items():
        print(f"{key + ':':<9} {value}")
    print(f"input:    {info.channels}x{info.size}x{info.size} ({args.dataset}), {info.num_classes} classes")
    print(f"features: {'x'.join(map(str, model.feature_shape))} -> linear {model.classifier.in_features}")
    print(f"params:   {count_params(model):,}")
    print(f"flops:    {count_flops(spec, info.channels, info.size, info.num_classes):,}")
    print(f"index:    {space.index(spec)} of {len(space)} in {space.name}")
    return 0


def _add_space(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    p = sub.add_parser("space", help="list or inspect search spaces")
    ssub = p.add_subparsers(dest="space_cmd", required=True, parser_class=OneLineParser)
    lst = ssub.add_parser("list", help="print one architecture id per line (canonical order)")
    lst.add_argument("space", nargs="?", default="convnet720", help="space name or .toml path (default convnet720)")
    lst.add_argument("--sample", type=int, default=None, metavar="N", help="stratified sample of N ids")
    lst.add_argument("--seed", type=int, default=0)
    lst.add_argument("--filter", default=None, metavar="GLOB", help="shell glob on ids, e.g. 'ConvNet-D3-*-BN-*'")
    lst.set_defaults(func=_cmd_space_list)
    show = ssub.add_parser("show", help="spec, parameter count and FLOPs of one architecture")
    show.add_argument("arch_id", metavar="ID")
    show.add_argument("--space", default="convnet720")
    show.add_argument("--dataset", default="fashionmnist", help="input shape and classes come from this dataset")
    show.set_defaults(func=_cmd_space_show)


COMMANDS.append(_add_space)


# ----------------------------------------------------------------------------- train


def _cmd_train(args: argparse.Namespace) -> int:
    from nas_proxy.data import load_dataset
    from nas_proxy.space import ArchSpec
    from nas_proxy.train import TrainConfig, train_and_evaluate

    spec = ArchSpec.from_id(args.arch)
    train, test = load_dataset(args.dataset, root=args.data_root, device=args.device)
    if args.train_subset is not None:
        train = train.random_subset(args.train_subset, seed=args.seed)
    config = TrainConfig(epochs=args.epochs)
    out = train_and_evaluate(spec, train, test, config, seed=args.seed)
    print(f"arch:     {spec.id}")
    print(f"train:    {len(train)} images of {train.dataset}, {config.epochs} epochs, {out.steps} steps")
    print(f"status:   {out.status}")
    print(f"accuracy: {100 * out.accuracy:.2f} %")
    print(f"seconds:  {out.seconds:.1f}")
    return 0


def _add_train(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    p = sub.add_parser("train", help="train one candidate on real data and print its test accuracy")
    p.add_argument("--arch", default="ConvNet-D3-W128-AR-IN-AP", metavar="ID")
    p.add_argument("--dataset", default="fashionmnist", help="name, .npz file or image-folder root")
    p.add_argument("--data-root", default=None, help="folder holding the dataset's files")
    p.add_argument("--train-subset", type=int, default=None, metavar="N", help="train on N random images")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.set_defaults(func=_cmd_train)


COMMANDS.append(_add_train)


# ----------------------------------------------------------------------------- build / eval-proxy / show
# (section: proxies)


def _proxy_progress(args: argparse.Namespace) -> bool:
    # A bar for a person watching; in logs and pipes a line a minute (nas_proxy.log), never silence.
    return not args.no_progress


def _cmd_build(args: argparse.Namespace) -> int:
    from nas_proxy.proxies import build_proxy, get_builder, parse_params

    # Validate the method and its settings before loading any data: bad input fails fast.
    params = parse_params(args.method, args.set or [])
    for flag in ("ipc", "seed"):
        if flag in params:
            raise NasProxyError(f"set {flag} with --{flag}, not --set {flag}=...")
    builder = get_builder(args.method, ipc=args.ipc, seed=args.seed, **params)
    built = build_proxy(
        builder, args.dataset, out=args.out, data_root=args.data_root, device=args.device,
        progress=_proxy_progress(args),
    )
    m = built.proxy.manifest
    print(f"path:     {built.path}")
    print(f"method:   {m.method} ({', '.join(f'{k}={v}' for k, v in sorted(m.params.items()))})")
    print(f"seconds:  {m.build_seconds:.1f}")
    print(f"images:   {m.images} ({m.ipc} per class x {m.num_classes} classes of {m.dataset})")
    print(f"bytes:    {m.bytes:,}")
    return 0


def _cmd_eval_proxy(args: argparse.Namespace) -> int:
    from nas_proxy.data import check_pair, load_dataset
    from nas_proxy.log import note
    from nas_proxy.proxies import load_proxy
    from nas_proxy.proxies.artifact import check_dataset, dataset_argument
    from nas_proxy.proxies.scoring import evaluate_proxy, summarize
    from nas_proxy.space import ArchSpec
    from nas_proxy.train import RunOutcome, TrainConfig

    proxy = load_proxy(args.path)
    spec = ArchSpec.from_id(args.arch)
    config = TrainConfig(epochs=args.epochs)
    if args.models < 1:
        raise NasProxyError(f"--models must be at least 1, got {args.models}")
    _, test = load_dataset(args.dataset or dataset_argument(proxy.manifest), root=args.data_root, device=args.device)
    if args.dataset is None:
        check_dataset(proxy, test, args.path)  # its own data, unchanged since the build
    elif test.dataset != proxy.manifest.dataset:
        note(f"testing on {test.dataset}, not {proxy.manifest.dataset} that {args.path} was built from")
    if args.test_subset is not None:
        test = test.random_subset(args.test_subset, seed=0)  # fixed subset: comparable across proxies
    check_pair(proxy.as_split(), test, f"proxy {proxy.id}")
    print(f"proxy:    {args.path} ({proxy.id}, {len(proxy)} images)")
    print(f"protocol: {spec.id}, {config.epochs} epochs, {args.models} models, test on {len(test)} {test.dataset}")

    def report(i: int, out: RunOutcome) -> None:
        status = "" if out.status == "ok" else f" ({out.status})"
        print(f"model {i + 1} (seed {args.seed + i}): {100 * out.accuracy:.2f} %{status}  [{out.seconds:.1f} s]")

    progress = _proxy_progress(args)
    accs = evaluate_proxy(proxy, test, spec, args.models, config, args.seed, progress=progress, on_model=report)
    mean, std = summarize(accs)
    print(f"accuracy: {mean:.2f} +- {std:.2f}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from nas_proxy.proxies import load_proxy
    from nas_proxy.proxies.render import format_manifest, save_grid

    proxy = load_proxy(args.path)
    print(format_manifest(proxy))
    if args.out:
        if args.per_class is not None and args.per_class < 1:
            raise NasProxyError(f"--per-class must be at least 1, got {args.per_class}")
        path = save_grid(proxy, args.out, per_class=args.per_class)
        print(f"grid:             {path}")
    return 0


def _add_proxies(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    from nas_proxy.proxies import BUILDERS
    from nas_proxy.proxies.plugins import plugin_names
    from nas_proxy.space import DEFAULT_ARCH

    b = sub.add_parser("build", help="build a proxy training set (coreset or condensed) and save it")
    # Plugin names come from package metadata: listing them imports no plugin.
    plugins = [n for n in plugin_names() if n not in BUILDERS]
    listed = ", ".join(BUILDERS) + (f"; plugins: {', '.join(plugins)}" if plugins else "")
    b.add_argument("--method", required=True, help=listed)
    b.add_argument("--dataset", default="fashionmnist", help="name, .npz file or image-folder root")
    b.add_argument("--ipc", type=int, default=10, metavar="K", help="images per class (default 10)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default=None, metavar="PATH", help="default results/proxies/DATASET-METHOD-ipcK-sSEED.npz")
    b.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a method hyperparameter, e.g. --set embed_epochs=2"
    )
    b.add_argument("--data-root", default=None, help="folder holding the dataset's files")
    b.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_cmd_build)

    e = sub.add_parser("eval-proxy", help="train fresh nets on a proxy file and print test accuracy mean +- std")
    e.add_argument("path", metavar="PATH")
    e.add_argument("--arch", default=DEFAULT_ARCH.id, metavar="ID")
    e.add_argument("--models", type=int, default=5, metavar="N", help="nets to train, seeds SEED..SEED+N-1")
    e.add_argument("--epochs", type=int, default=300, metavar="E", help="training epochs (reference: 300)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--dataset", default=None, help="test data (default: the proxy's own dataset)")
    e.add_argument("--test-subset", type=int, default=None, metavar="N", help="test on a fixed random N images")
    e.add_argument("--data-root", default=None, help="folder holding the dataset's files")
    e.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_eval_proxy)

    s = sub.add_parser("show", help="print a proxy file's manifest; --out writes its images as a labelled grid")
    s.add_argument("path", metavar="PATH")
    s.add_argument("--out", default=None, metavar="PNG", help="write the image grid here")
    s.add_argument("--per-class", type=int, default=None, metavar="K", help="images per class in the grid")
    s.set_defaults(func=_cmd_show)


COMMANDS.append(_add_proxies)


# ----------------------------------------------------------------------------- import
# (section: import)


def _cmd_import(args: argparse.Namespace) -> int:
    from nas_proxy.proxies import save_proxy
    from nas_proxy.proxies.importers import import_proxy

    keys = None
    if args.keys is not None:
        parts = tuple(k.strip() for k in args.keys.split(","))
        if len(parts) != 2 or not all(parts):
            raise NasProxyError(f"--keys expects IMAGES,LABELS (two array names), got {args.keys!r}")
        keys = (parts[0], parts[1])
    result = import_proxy(
        args.source, format=args.format, dataset=args.dataset, index=args.index, method=args.method,
        pixels=args.pixels, soft_labels=args.soft_labels, labels=args.labels, keys=keys,
        build_seconds=args.build_seconds,
    )
    path = save_proxy(result.proxy, args.out)
    m = result.proxy.manifest
    origin = m.origin or {}
    where = f", experiment {origin['index']} of {origin['experiments']}" if "experiments" in origin else ""
    print(f"path:     {path}")
    print(f"method:   {m.method} (imported: {origin.get('format')}{where})")
    print(f"source:   {origin.get('source')} (sha256 {origin.get('sha256')})")
    print(f"images:   {m.images} ({m.ipc} per class x {m.num_classes} classes of {m.dataset})")
    for note in result.notes:
        print(f"note:     {note}")
    print(f"next:     nas-proxy eval-proxy {path}")
    return 0


def _add_import(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    p = sub.add_parser("import", help="turn a condensed set another tool wrote into a checked proxy file")
    p.add_argument("source", metavar="SOURCE",
                   help="the file; tensors: the image file (its label file beside it) or their folder")
    p.add_argument("--format", required=True, help="dc-official (res_*.pt), tensors (MTT-style .pt), npz")
    p.add_argument("--dataset", required=True, help="the dataset it was distilled from: name, .npz file or folder")
    p.add_argument("--out", required=True, metavar="FILE", help="the proxy file to write (.npz)")
    p.add_argument("--index", type=int, default=None, metavar="K", help="dc-official: the experiment (default 0)")
    p.add_argument("--method", default=None, metavar="NAME",
                   help="the name reports show (default: a dc-official file's own, else 'imported')")
    p.add_argument("--pixels", default="auto", metavar="SCALE",
                   help="the file's pixel scale: auto (default: the format's convention; npz: from dtype and range), "
                        "normalized, unit ([0,1]), byte (0..255)")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="tensors: the label file (default: the image file's name with 'images' -> 'labels')")
    p.add_argument("--keys", default=None, metavar="IMAGES,LABELS", help="npz / dict of tensors: the two names")
    p.add_argument("--soft-labels", default="refuse", metavar="HOW",
                   help="soft (N x classes) labels: refuse (default) or argmax")
    p.add_argument("--build-seconds", type=float, default=0.0, metavar="S",
                   help="what the outside build took, for the report's build time (default 0: not known)")
    p.set_defaults(func=_cmd_import)


COMMANDS.append(_add_import)


# ----------------------------------------------------------------------------- evaluate / runs / report / demo
# (section: evaluate)


def _bar(args: argparse.Namespace) -> bool:
    # A bar for a person watching; in logs and pipes a line a minute (nas_proxy.log).
    return not args.no_progress


# The execution settings' fields as the evaluate command's flags name them (for their one-line errors).
_EXECUTION_FLAGS = {"n_jobs": "--n-jobs", "backend": "--backend", "scheduler": "--scheduler"}


def _execution(args: argparse.Namespace) -> ExecutionSettings:
    """The evaluate command's execution settings, checked once (errors name the flags)."""
    from nas_proxy.plan import ExecutionSettings
    from nas_proxy.stacked import FastOptions

    if args.cluster_timeout <= 0:
        raise NasProxyError(f"--cluster-timeout must be positive, got {args.cluster_timeout:g}")
    auto = {"auto": None, "yes": True, "no": False}
    try:
        return ExecutionSettings(
            n_jobs=args.n_jobs, backend=args.backend, scheduler=args.scheduler, device=args.device,
            batch_seeds=auto[args.batch_seeds], batch_candidates=auto[args.batch_candidates],
            fast=FastOptions.parse(args.fast_options), cluster_timeout=args.cluster_timeout,
        )
    except NasProxyError as exc:
        pattern = r"\b(" + "|".join(_EXECUTION_FLAGS) + r")\b"
        raise NasProxyError(re.sub(pattern, lambda m: _EXECUTION_FLAGS[m.group(1)], str(exc), count=2)) from None


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nas_proxy.evaluate import run_evaluation

    execution = _execution(args)
    # A Dask cluster's workers, lost and joined, as it happens; Dask's own log lines say the same,
    # noisily. A stacked task that fell back to one run at a time says so (nas_proxy.plan).
    with log_lines("nas_proxy.cluster", "nas_proxy.plan", quiet=("distributed",) if args.backend == "dask" else ()):
        res = run_evaluation(
            space=args.space, dataset=args.dataset, proxies=args.proxy or [], full=args.full,
            early_stopping=args.early_stopping, sample=args.sample, sample_seed=args.seed, pattern=args.filter,
            epochs=args.epochs, full_epochs=args.full_epochs, curve=args.curve, full_curve=args.full_curve,
            fidelity=args.fidelity, seeds=args.seeds, out_dir=args.out, rankers=args.rankers or (),
            ground_truth=args.ground_truth, data_root=args.data_root, progress=_bar(args), execution=execution,
        )
    print(f"store:    {res.out_dir}")
    print(f"runs:     {res.planned} planned, {res.skipped} already stored, {res.trained} trained now "
          f"({res.ok} ok, {res.diverged} diverged, {res.failed} failed)")
    if res.imported:
        print(f"imported: {res.imported} whole-data rows from {args.ground_truth}")
    if res.scores:
        print(f"scores:   {res.scores} training-free scores")
    print(f"next:     nas-proxy report {res.out_dir}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    p = sub.add_parser("evaluate", help="train candidates on proxies / whole data; store one row per run (resumable)")
    p.add_argument("--space", default="convnet720", help="space name or .toml path (default convnet720)")
    p.add_argument("--dataset", default="fashionmnist", help="name, .npz file or image-folder root")
    p.add_argument("--proxy", action="append", metavar="PATH", help="a proxy .npz file (repeat for several)")
    p.add_argument("--full", action="store_true", help="also train on the whole training set (the ground truth)")
    p.add_argument("--early-stopping", action="store_true",
                   help="also train on the whole set for as many SGD steps as a proxy run")
    p.add_argument("--sample", type=int, default=None, metavar="N", help="stratified sample of N candidates")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument("--filter", default=None, metavar="GLOB", help="shell glob on ids, e.g. 'ConvNet-D3-*'")
    p.add_argument("--epochs", type=int, default=100, help="epochs on a proxy (default 100, as the paper)")
    p.add_argument("--full-epochs", type=int, default=None, metavar="E", help="whole-data epochs (default: --epochs)")
    p.add_argument("--curve", default="", metavar="POINTS",
                   help="learning-curve points of proxy runs: epochs '10,25,50', 'ladder', 'every', steps '100s'")
    p.add_argument("--full-curve", default="", metavar="POINTS",
                   help="the same for whole-data runs, e.g. 'every,100s,500s,2000s' (early stopping read off it)")
    p.add_argument("--fidelity", type=int, default=None, metavar="E",
                   help="judge against whole-data accuracy after E epochs (a recorded curve point)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="S", help="training seeds (default 0)")
    p.add_argument("--out", default="results/runs/latest", metavar="DIR", help="run directory (default %(default)s)")
    p.add_argument("--n-jobs", type=int, default=1, metavar="N", help="workers, one torch thread each (-1: all cores)")
    p.add_argument("--backend", default="loky", choices=["loky", "dask"], help="joblib backend (default loky)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler, e.g. tcp://HOST:8786 (default: a local cluster of --n-jobs processes); "
                        "its workers train on their own device unless --device pins one")
    p.add_argument("--cluster-timeout", type=float, default=30.0, metavar="S",
                   help="Dask: how long to wait for the scheduler, a first worker, or a worker when none is left "
                        "(default 30)")
    p.add_argument("--batch-seeds", default="auto", choices=["auto", "yes", "no"],
                   help="train a candidate's seeds as one stacked network (auto: on a GPU, and on a CPU for "
                        "small avg-pooled nets with instance or group norm, whose stacked blocks fuse)")
    p.add_argument("--batch-candidates", default="auto", choices=["auto", "yes", "no"],
                   help="train candidates of equal depth, width and pooling (and their seeds) as one stacked "
                        "network (auto: on a GPU only)")
    p.add_argument("--fast-options", default="none", metavar="LIST",
                   help="speed switches of stacked runs: channels_last, bf16, compile[=MODE] (GPU options; "
                        "bf16 changes results; default none)")
    p.add_argument("--rankers", default=None, metavar="all|NAME,...", help="training-free rankers to score too")
    p.add_argument("--ground-truth", default=None, metavar="FILE", help="whole-data rows from an exported .csv")
    p.add_argument("--data-root", default=None, help="folder holding the dataset's files")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_runs(args: argparse.Namespace) -> int:
    from nas_proxy.store import open_store

    frame = open_store(args.dir).frame()
    # The learning curve as JSON (empty where a run has none), so a CSV reader gets one plain field.
    frame["curve"] = [json.dumps(list(c)) if c else "" for c in frame["curve"]]
    frame.to_csv(sys.stdout, index=False)
    return 0


def _add_runs(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    p = sub.add_parser("runs", help="print every stored training run as CSV (header first)")
    p.add_argument("dir", metavar="DIR", help="run directory")
    p.set_defaults(func=_cmd_runs)


def _cmd_report(args: argparse.Namespace) -> int:
    from nas_proxy.metrics import DEFAULT_TOPK
    from nas_proxy.report import build_report, write_report

    if args.min_topk < 1:
        raise NasProxyError(f"--min-topk must be at least 1, got {args.min_topk}")
    report = build_report(
        args.dir, topk=args.topk or DEFAULT_TOPK, n_boot=args.bootstrap, seed=args.seed,
        fidelity=args.fidelity, min_topk=args.min_topk,
    )
    paths = write_report(report, args.out, figures=not args.no_figures)
    print(report.markdown())
    print(f"written:  {paths[0].parent} ({', '.join(p.name for p in paths)})", file=sys.stderr)
    return 0


def _add_report(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    p = sub.add_parser("report", help="the paper-style table (markdown, CSV) and figures from a run directory")
    p.add_argument("dir", metavar="DIR", help="run directory")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write (default DIR/report)")
    p.add_argument("--topk", nargs="+", default=None, metavar="K",
                   help="top-k sets: all 50%% 10 30 5%% 10%% (default)")
    p.add_argument("--min-topk", type=int, default=10, metavar="K",
                   help="smallest top-k over which a correlation is shown (default 10; below: n/a, overlap only)")
    p.add_argument("--fidelity", type=int, default=None, metavar="E",
                   help="judge against whole-data accuracy after E epochs (a recorded curve point)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B", help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.set_defaults(func=_cmd_report)


def _cmd_ground_truth(args: argparse.Namespace) -> int:
    from nas_proxy.groundtruth import export_ground_truth, sidecar_path

    path = export_ground_truth(args.dir, args.out, fidelity=args.fidelity)
    print(f"csv:      {path}")
    print(f"protocol: {sidecar_path(path)}")
    return 0


def _add_ground_truth(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    p = sub.add_parser("ground-truth", help="export a run's whole-data rows as a shareable .csv + .json")
    p.add_argument("dir", metavar="DIR", help="run directory with whole-data (--full) runs")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="default results/groundtruth/<dataset>-<space>-e<epochs>.csv")
    p.add_argument("--fidelity", type=int, default=None, metavar="E",
                   help="export only this fidelity (epochs) beside the final accuracy (default: every one recorded)")
    p.set_defaults(func=_cmd_ground_truth)


def _cmd_demo(args: argparse.Namespace) -> int:
    from nas_proxy.demo import run_demo

    result = run_demo(args.out, n_jobs=args.n_jobs, progress=_bar(args), data_root=args.data_root)
    print(result.markdown)
    print(f"written:  {result.out_dir}", file=sys.stderr)
    return 0


def _add_demo(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    p = sub.add_parser("demo", help="the main job, small: build proxies, evaluate candidates, report (minutes on CPU)")
    p.add_argument("--out", default="results/demo", metavar="DIR", help="default results/demo")
    p.add_argument("--n-jobs", type=int, default=None, metavar="N", help="parallel workers (default: up to 2)")
    p.add_argument("--data-root", default=None, help="folder holding Fashion-MNIST's files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


COMMANDS.append(_add_evaluate)
COMMANDS.append(_add_runs)
COMMANDS.append(_add_report)
COMMANDS.append(_add_ground_truth)
COMMANDS.append(_add_demo)


# ----------------------------------------------------------------------------- search
# (section: search)


def _cmd_search(args: argparse.Namespace) -> int:
    from nas_proxy.search import SearchStart, run_search
    from nas_proxy.studies import HEARTBEAT_ATTR

    def started(s: SearchStart) -> None:
        print(f"study:    {s.name} ({s.storage}){'' if s.study.trials else ', new'}")
        print(f"workers:  more join with the same command and --storage {s.storage} (heartbeat every "
              f"{s.study.user_attrs.get(HEARTBEAT_ATTR)} s; each trial samples with its own seed)")
        print(f"search:   {s.space.name} ({len(s.space)} candidates), sampler {s.sampler}, pruner {s.pruner}, "
              f"{s.n_trials} trials ({s.done} done before)")
        print(f"proxy:    {args.proxy} ({s.proxy.id}, {len(s.proxy)} images), {args.epochs} epochs, "
              f"scored on {len(s.test)} {s.test.dataset} test images")

    with log_lines("nas_proxy.studies"):  # waits for other workers, trials started past the budget
        res = run_search(
            space=args.space, proxy=args.proxy, n_trials=args.n_trials, sampler=args.sampler, pruner=args.pruner,
            storage=args.storage, study_name=args.study_name, n_jobs=args.n_jobs, heartbeat=args.heartbeat,
            dataset=args.dataset, epochs=args.epochs, seed=args.seed, test_subset=args.test_subset, top=args.top,
            refit_top=args.refit_top, full_epochs=args.full_epochs, refit_subset=args.refit_subset,
            ground_truth=args.ground_truth, data_root=args.data_root, device=args.device,
            progress=not args.no_progress, trial_bar=_search_bar(args), on_start=started,
        )
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(res.counts.items()))
    print(f"trials:   {counts or 'none'}")
    print(f"budget:   {res.budget}")
    if not res.top:
        print("best:     no complete trial yet")
        return 130 if res.interrupted else 0
    if res.refits:
        print(f"refit:    top {args.refit_top} on {res.refit_images} training images, {res.refit_epochs} epochs")
    if res.ground_truth is not None:
        print(f"truth:    {res.ground_truth.path} ({len(res.ground_truth)} candidates; rank 1 = best)")
    print(res.table())
    if res.interrupted:
        print(f"interrupted: finished trials are stored in {res.start.storage}; rerun the same command to finish "
              "the study", file=sys.stderr)
        return 130
    return 0


def _search_bar(args: argparse.Namespace) -> bool:
    # Optuna's tqdm bar for a person watching; logs and pipes get Optuna's per-trial lines instead.
    return not args.no_progress and sys.stderr.isatty()


def _add_search(sub: argparse._SubParsersAction[OneLineParser]) -> None:
    p = sub.add_parser("search", help="an Optuna study whose objective trains each trial's architecture on a proxy")
    p.add_argument("--space", default="convnet720", help="space name or .toml path (default convnet720)")
    p.add_argument("--proxy", required=True, metavar="PATH", help="proxy .npz file to train trials on")
    p.add_argument("--n-trials", type=int, required=True, metavar="N",
                   help="trials in the study in total, over every worker and rerun (exact)")
    p.add_argument("--sampler", default="tpe", help="tpe (default), random, grid, nsga2 (accuracy vs params)")
    p.add_argument("--pruner", default=None, help="median (default), hyperband, none (nsga2: none)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="RDB URL (sqlite:///x.db, postgresql://...) or journal file (default results/studies/NAME.log)")
    p.add_argument("--study-name", default=None, metavar="NAME",
                   help="default SPACE-PROXYID-SAMPLER-eEPOCHS-sSEED; the same name continues the study")
    p.add_argument("--n-jobs", type=int, default=1, metavar="N", help="parallel trials in this process (threads)")
    p.add_argument("--heartbeat", type=int, default=None, metavar="S",
                   help="seconds between a running trial's heartbeats; a trial silent for two is failed and run "
                        "again (default: the study's, 60 for a new one)")
    p.add_argument("--dataset", default=None, help="must match the proxy's dataset (checked)")
    p.add_argument("--epochs", type=int, default=100, help="epochs per trial on the proxy (default 100, as the paper)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, batch order and the sampler (default 0)")
    p.add_argument("--test-subset", type=int, default=None, metavar="N", help="score on a fixed random N test images")
    p.add_argument("--top", type=int, default=5, metavar="K", help="best trials to print (default 5)")
    p.add_argument("--refit-top", type=int, default=0, metavar="K", help="retrain the K best on the whole training set")
    p.add_argument("--full-epochs", type=int, default=None, metavar="E", help="refit epochs (default: --epochs)")
    p.add_argument("--refit-subset", type=int, default=None, metavar="N", help="refit on N random training images")
    p.add_argument("--ground-truth", default=None, metavar="FILE",
                   help="whole-data CSV (arch_id, accuracy); default results/groundtruth/DATASET-SPACE-e*.csv if any")
    p.add_argument("--data-root", default=None, help="folder holding the dataset's files")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_search)


COMMANDS.append(_add_search)


# ----------------------------------------------------------------------------- wiring

DEBUG_HELP = "on an error, show its traceback too (also NAS_PROXY_DEBUG=1)"


def _add_debug(parser: argparse.ArgumentParser, top: bool = True) -> None:
    # Accepted before and after the command: `nas-proxy --debug evaluate ...` and `... evaluate --debug`.
    default = False if top else argparse.SUPPRESS  # a subcommand must not reset the top-level flag
    parser.add_argument("--debug", action="store_true", default=default, help=DEBUG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_debug(sub, top=False)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nas-proxy", description="Rank neural architectures on tiny proxy training sets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for add in COMMANDS:
        add(sub)
    _add_debug(parser)
    return parser


def _is_environment(exc: BaseException) -> bool:
    """Errors of the machine, not of our code: files, disks, memory."""
    if isinstance(exc, OSError | MemoryError):
        return True
    return type(exc).__name__ == "OutOfMemoryError"  # torch's CUDA OOM (a RuntimeError)


def describe_error(exc: BaseException) -> str:
    """The one line after ``error: ``: our message as it is, an OS error as what failed and where."""
    if isinstance(exc, NasProxyError):
        return one_line(str(exc))
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename is not None else ""
        hints = {errno.ENOSPC: "free some disk space", errno.EACCES: "check its permissions",
                 errno.EPERM: "check its permissions", errno.ENOTDIR: "a part of the path is a file, not a folder",
                 errno.EEXIST: "a file is in the way of a folder",
                 errno.EROFS: "the file system is read-only", errno.EMFILE: "too many open files"}
        hint = f" ({hints[exc.errno]})" if exc.errno in hints else ""
        return one_line(f"{exc.strerror}{where}{hint}")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return one_line(f"out of memory ({exc}); try fewer --n-jobs, a smaller --sample or --device cpu")
    return one_line(f"{type(exc).__name__}: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Command = args.func
    debug = debug_enabled(args.debug)
    with plain_warnings():
        try:
            return func(args)
        except KeyboardInterrupt:
            print("interrupted: finished results are kept; rerun the same command to resume", file=sys.stderr)
            return 130
        except Exception as exc:
            if debug:
                traceback.print_exc()
            if isinstance(exc, NasProxyError) or _is_environment(exc):
                print(f"error: {describe_error(exc)}", file=sys.stderr)
                return 2
            # A bug: short by default, like the rest, but never passed off as the user's fault.
            rerun = "" if debug else "; rerun with --debug (or NAS_PROXY_DEBUG=1) for the traceback"
            print(f"error: internal error ({describe_error(exc)}): a bug, please report it{rerun}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
