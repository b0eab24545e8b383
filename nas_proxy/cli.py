"""``nas-proxy``: argparse wiring only. Each command parses, calls the library, prints.

Bad input (a :class:`NasProxyError`) prints one ``error: ...`` line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from nas_proxy.errors import NasProxyError

Command = Callable[[argparse.Namespace], int]
AddCommand = Callable[["argparse._SubParsersAction[_Parser]"], None]

# Each section below appends its ``_add_*`` function; the order is the order of `nas-proxy --help`.
COMMANDS: list[AddCommand] = []


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own usage errors: one line, exit 2, like ours.
        self.exit(2, f"error: {self.prog}: {message}\n")


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


def _add_space(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("space", help="list or inspect search spaces")
    ssub = p.add_subparsers(dest="space_cmd", required=True, parser_class=_Parser)
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


def _add_train(sub: argparse._SubParsersAction[_Parser]) -> None:
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


# ----------------------------------------------------------------------------- evaluate / runs / report / demo
# (section: evaluate)


# ----------------------------------------------------------------------------- search
# (section: search)


# ----------------------------------------------------------------------------- wiring

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nas-proxy", description="Rank neural architectures on tiny proxy training sets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except NasProxyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished results are kept; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
