"""``./dev`` subcommands (``./dev setup`` is bash: include/scripts/dev-setup.sh).

User-fixable problems print one sentence on stderr and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

from datacloud import config
from datacloud.errors import UserError

log = logging.getLogger("datacloud")


def _inventory_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--inventory", "-i", required=required, help="inventory YAML (default: inventory.yaml, else inventory.example.yaml)"
    )


def cmd_up(args: argparse.Namespace) -> int:
    from datacloud.localstack import Stack

    stack = Stack()
    stack.up(spark=args.spark)
    print(f"Airflow UI:      {stack.airflow_url}  (user admin)")
    print(f"admin password:  {stack.password_file}")
    print(f"MongoDB (FerretDB): {stack.mongo_uri}")
    print(f"Spark Connect:   {stack.connect_url}  (flights transform target: {stack.spark_target})")
    if args.spark:
        print(f"Spark master:    {stack.spark_master}  (UI http://127.0.0.1:{stack.spark_ui_port})")
    print('environment:     eval "$(./dev env)"')
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from datacloud.localstack import Stack

    stack = Stack()
    stopped = stack.down()
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}; data kept in {stack.data_dir}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from datacloud.localstack import SERVICES, Stack

    stack = Stack()
    where = {
        "ferretdb": stack.mongo_uri,
        "spark-connect": stack.connect_url,
        "spark-master": stack.spark_master,
        "spark-worker": "",
        "airflow": stack.airflow_url,
    }
    for name in reversed(SERVICES):
        pid = stack.running(name)
        state = f"running (pgid {pid})" if pid else "stopped"
        print(f"{name:<14} {state:<24} {where.get(name, '')}".rstrip())
    print(f"data: {stack.data_dir}; logs: {stack.run_dir}/<service>.log; flights transform target: {stack.spark_target}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from datacloud.localstack import Stack

    for key, value in Stack().env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from datacloud.inventory import load_inventory

    path = config.resolve_inventory_path(args.inventory)
    try:
        inv = load_inventory(path)
    except UserError as exc:
        for problem in getattr(exc, "problems", [str(exc)]):
            print(f"error: {problem}", file=sys.stderr)
        return 2
    for w in inv.warnings:
        print(f"warning: {w}")
    print(f"{path}: valid ({len(inv.nodes)} nodes, control plane {inv.control_plane.name}, storage {inv.storage_backend})")
    return 0


def cmd_capacity(args: argparse.Namespace) -> int:
    from datacloud import capacity
    from datacloud.inventory import load_inventory

    inv = load_inventory(config.resolve_inventory_path(args.inventory))
    result = capacity.plan(inv)
    print(result.report())
    return 0 if result.ok else 1


def cmd_render(args: argparse.Namespace) -> int:
    from datacloud.inventory import load_inventory
    from datacloud.render import render_all

    inv = load_inventory(config.resolve_inventory_path(args.inventory))
    out = Path(args.out)
    results = render_all(inv, out)
    for stage, rendered in results.items():
        print(f"{stage:<12} {len(rendered.all_objects()):>3} objects  {len(rendered.releases):>2} releases")
    print(f"written to {out}/ (charts: {out / 'charts.yaml'})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from datacloud import mainjob

    first, last = mainjob.parse_range(args.first, args.last)
    return mainjob.run(first, last)


def cmd_test(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "pytest", *args.pytest_args]
    return subprocess.call(argv, cwd=config.REPO_ROOT)


def cmd_lab(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(config.REPO_ROOT))
    try:
        from tests.lab import lab  # the lab is test infrastructure; it lives with the tests
    except ModuleNotFoundError:
        raise UserError("the SSH lab is not part of this checkout yet (tests/lab/lab.py).") from None
    return lab.main(args.lab_args)


def cmd_tunnels(args: argparse.Namespace) -> int:
    try:
        from datacloud import tunnels
    except ModuleNotFoundError:
        raise UserError("./dev tunnels is not part of this checkout yet.") from None
    from datacloud.inventory import load_inventory

    print(tunnels.table(load_inventory(config.resolve_inventory_path(args.inventory))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="./dev", description="datacloud developer entry point")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local stack")
    up.add_argument("--spark", action="store_true", help="also start a Spark standalone master and worker")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the local stack").set_defaults(func=cmd_down)
    sub.add_parser("status", help="which services of the local stack run, and where").set_defaults(func=cmd_status)
    sub.add_parser("env", help="print export lines").set_defaults(func=cmd_env)
    run = sub.add_parser("run", help="the main job on the embedded default: backfill days of 2013 (default the first week)")
    run.add_argument("--from", dest="first", metavar="YYYY-MM-DD", help="first day (default 2013-01-01)")
    run.add_argument("--to", dest="last", metavar="YYYY-MM-DD", help="last day (default 2013-01-07; --from alone: that day)")
    run.set_defaults(func=cmd_run)
    t = sub.add_parser("test", help="run the test suite", add_help=False)
    t.add_argument("pytest_args", nargs=argparse.REMAINDER)
    t.set_defaults(func=cmd_test)
    r = sub.add_parser("render", help="render every manifest and Helm values file")
    _inventory_arg(r)
    r.add_argument("--out", "-o", required=True)
    r.set_defaults(func=cmd_render)
    c = sub.add_parser("capacity", help="capacity report")
    _inventory_arg(c)
    c.set_defaults(func=cmd_capacity)
    v = sub.add_parser("validate", help="validate an inventory")
    _inventory_arg(v)
    v.set_defaults(func=cmd_validate)
    lab = sub.add_parser("lab", help="the SSH lab (lab up N | provision [--stages a,b] | kubeconfig | down)", add_help=False)
    lab.add_argument("lab_args", nargs=argparse.REMAINDER)
    lab.set_defaults(func=cmd_lab)
    tu = sub.add_parser("tunnels", help="how to reach every service from outside")
    tu.add_argument("inventory", nargs="?")
    tu.set_defaults(func=cmd_tunnels)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("DATACLOUD_LOG_LEVEL", "INFO"), format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
