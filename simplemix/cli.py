"""The ``simplemix`` command: inspect profiles, run the notebooks, render the book, read a run's status.

Owns the command line; imports every module it dispatches to, lazily.
"""

from __future__ import annotations

import argparse
import sys

from simplemix import resources


def _config_show(args: argparse.Namespace) -> int:
    from simplemix import config

    print(config.dump(config.load_profile(args.profile, args.set)), end="")
    return 0


def _status(args: argparse.Namespace) -> int:
    from simplemix import store

    return store.status_main(args.run)


def _world(args: argparse.Namespace, default: str = "grid"):
    """(profile, world, cells) of a command's --profile, --set, --run and --cell (default: the ``default``
    cells, "grid" or "primary")."""
    from simplemix import config, world

    prof = config.load_profile(args.profile, args.set)
    resolved = world.resolve(prof, args.run or config.default_run_dir(args.profile))
    cells = [resolved.cell(c) for c in args.cell] if args.cell else resolved.cells(default)
    if not getattr(args, "worker", False):  # a launched worker's parent checked already
        _preflight(resolved, cells, getattr(args, "dry_run", False))
    return prof, resolved, cells


def _preflight(resolved, cells=None, dry_run: bool = False) -> None:
    """Stop on preflight problems before any compute; a dry run (which computes nothing) lists them and goes on."""
    from simplemix import config, preflight

    try:
        preflight.check(resolved, cells)
    except config.ConfigError as e:
        if not dry_run:
            raise
        print(f"simplemix: {e}\n(a dry run goes on; a real run stops here)", file=sys.stderr)


def _onpolicy(args: argparse.Namespace) -> int:
    from simplemix import onpolicy

    prof, world, cells = _world(args)
    for cell in cells:
        if args.dry_run:
            for row in onpolicy.plan(world, cell):
                print(f"{cell.id}: {row['stage']} {row['key']}: {row['prompts']} prompts x "
                      f"{prof.sampling.num_samples} samples = {row['samples']} samples in {row['shards']} shards; "
                      f"{row['state']} (run {world.run_dir})")
            continue
        for name, entry in onpolicy.on_policy_pairs(world, cell).items():
            print(f"{cell.id}: {name:<8} {entry.key} {'cached' if entry.hit else 'computed'}  {entry.path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from simplemix import config, launch, methods

    args.run = str(Path(args.run or config.default_run_dir(args.profile)).resolve())
    prof, world, cells = _world(args, default="primary")
    if len(cells) != 1:
        raise config.ConfigError(f"train: choose one cell with --cell; profile {prof.name!r} has "
                                 f"{[c.id for c in world.cells()]}")
    cell, run_dir = cells[0], args.run
    if args.method == "simplemix" and args.on_fraction is not None and not 0 <= args.on_fraction <= 1:
        raise config.ConfigError(f"--on-fraction must be in [0, 1], got {args.on_fraction}")
    methods.check(prof, args.method)
    common = {"on_fraction": args.on_fraction, "max_steps": args.max_steps}
    launched = prof.training.num_processes > 1 and not args.worker
    if launched:
        files = launch.accelerate_files(prof, Path(run_dir) / "launch")
        forwarded = ["--profile", args.profile, "--method", args.method, "--run", run_dir, "--cell", cell.id]
        forwarded += [f"--set={kv}" for kv in args.set]
        forwarded += [x for k, v in common.items() if v is not None for x in (f"--{k.replace('_', '-')}", str(v))]
        command = launch.worker_command(files[0], forwarded)
        if args.dry_run:
            print(f"{args.method} in cell {cell.id} of profile {prof.name!r}: data stages here, training in "
                  f"{prof.training.num_processes} processes (run {run_dir})")
            print(launch.describe(command, list(files)))
            return 0
        entry = methods.train_method(world, cell, args.method, train_fn=launch.launched_train(command),
                                     **common)[-1]
    else:
        if args.dry_run:
            print(f"{args.method} in cell {cell.id} of profile {prof.name!r}: one process, "
                  f"{prof.training.finetuning} fine-tuning (run {run_dir}); no launch command")
            return 0
        entry = methods.train_method(world, cell, args.method, upto_round=args.upto_round, **common)[-1]
    if not args.worker:  # the launcher reports what its workers stored
        state = "trained by the launched workers" if launched else "cached" if entry.hit else "computed"
        print(f"train {entry.key} {state}  {entry.path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from simplemix import config, runner

    from simplemix import world

    prof = config.load_profile(args.profile)  # fail on a bad profile before anything executes
    resolved = world.resolve(prof, config.default_run_dir(args.profile, args.runs_dir))
    _preflight(resolved, dry_run=args.dry_run)
    if args.dry_run:
        from simplemix import plan

        print(plan.report(plan.plan(resolved, runner.notebooks(args.only))))
        return 0
    gpus = [g for g in args.gpus.split(",") if g] if args.gpus else None
    return runner.run_notebooks(args.profile, only=args.only, runs_dir=args.runs_dir, jobs=args.jobs, gpus=gpus,
                                force=args.force)


def _book(args: argparse.Namespace) -> int:
    from simplemix import runner

    return runner.build_book(args.run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simplemix", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser("config", help="profiles and their resolved settings")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    show = cfg_sub.add_parser("show", help="print the resolved profile as YAML")
    show.add_argument("--profile", default="smoke", help="profile name or path to a YAML recipe")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a key, e.g. training.beta=0.2 (repeatable)")
    show.set_defaults(func=_config_show)

    st = sub.add_parser("status", help="list the stages of a run directory and their state")
    st.add_argument("--run", required=True, help="run directory, e.g. runs/smoke")
    st.set_defaults(func=_status)

    onp = sub.add_parser("onpolicy", help="sample, score and pair on-policy data for a profile")
    onp.add_argument("--profile", default="smoke")
    onp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    onp.add_argument("--run", default=None, help="run directory (default runs/<profile>)")
    onp.add_argument("--cell", action="append", default=[], help="a cell id (repeatable; default: every cell)")
    onp.add_argument("--dry-run", action="store_true", help="print what would be computed and what is cached")
    onp.set_defaults(func=_onpolicy)

    tr = sub.add_parser("train", help="train one method (through accelerate launch when the profile has "
                                      "training.num_processes > 1)")
    tr.add_argument("--profile", default="smoke")
    tr.add_argument("--method", required=True, choices=["off", "on", "simplemix", "hypo", "dpo_mix_p"])
    tr.add_argument("--on-fraction", type=float, default=None, help="SimpleMix's r (default mixing.on_policy_fraction)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    tr.add_argument("--run", default=None, help="run directory (default runs/<profile>)")
    tr.add_argument("--cell", action="append", default=[],
                    help="the cell id, <policy label>__<dataset label> (default: the profile's primary cell)")
    tr.add_argument("--max-steps", type=int, default=None, help="stop each training run after this many steps")
    tr.add_argument("--dry-run", action="store_true", help="print the launch command and configs; compute nothing")
    tr.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # set by the launcher
    tr.add_argument("--upto-round", type=int, default=None, help=argparse.SUPPRESS)
    tr.set_defaults(func=_train)

    run = sub.add_parser("run", help="execute the book's notebooks with papermill into runs/<profile>/")
    run.add_argument("--profile", default="smoke")
    run.add_argument("--only", nargs="*", default=None, help="notebook names (or prefixes) to run")
    run.add_argument("--runs-dir", default=None,
                     help="where run directories live (default $SIMPLEMIX_RUNS, else the checkout's runs/, else ./runs)")
    run.add_argument("--jobs", type=int, default=1, help="notebooks executed at once (default 1)")
    run.add_argument("--gpus", default=None, help="comma-separated GPU ids; notebooks run in parallel, one per GPU")
    run.add_argument("--force", action="store_true", help="re-execute notebooks that are up to date")
    run.add_argument("--dry-run", action="store_true",
                     help="list every stage each chapter would request, what is shared and stored, and the work")
    run.set_defaults(func=_run)

    book = sub.add_parser("book", help="render the executed notebooks of a run and the chapters to HTML")
    book.add_argument("--run", default="runs/smoke")
    book.set_defaults(func=_book)

    args = parser.parse_args(argv)
    from simplemix.config import ConfigError
    from simplemix.data import DataValidationError
    from simplemix.store import StageOutputError

    try:
        if args.command != "status":  # every other command reads recipes, data or notebooks
            resources.require()
        return args.func(args)
    except ConfigError as e:
        print(f"simplemix: config error: {e}", file=sys.stderr)
        return 2
    except (DataValidationError, StageOutputError) as e:  # the message names the file, row and field
        print(f"simplemix: data error: {e}", file=sys.stderr)
        return 2
    except resources.MissingProjectFiles as e:
        print(f"simplemix: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
