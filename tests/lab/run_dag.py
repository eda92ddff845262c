"""Run one DAG for real with ``dag.test()`` in this process, then print its outcome.

    python tests/lab/run_dag.py DAG_ID '{"inventory": "...", ...}' [LOGICAL_DATE]

LOGICAL_DATE (ISO 8601) names the run's data interval (a scheduled DAG's day).

The tests start it as a child process with the environment of their lab and
their own AIRFLOW_HOME (migrated metadata DB), so Airflow's configuration is
never shared with the test process. The last line is ``RESULT <json>``: the
run's state and every task instance (task_id, map_index, state, try_number).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "include"))


def load_dag(dag_id: str):
    path = ROOT / "dags" / f"{dag_id}.py"
    spec = importlib.util.spec_from_file_location(f"dag_{dag_id}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, dag_id)()


def main() -> int:
    dag_id, conf = sys.argv[1], json.loads(sys.argv[2])
    dag = load_dag(dag_id)
    kw = {}
    if len(sys.argv) > 3:
        from datetime import datetime

        kw["logical_date"] = datetime.fromisoformat(sys.argv[3])
    try:
        run = dag.test(run_conf=conf, **kw)
    except Exception as exc:
        print("RESULT " + json.dumps({"state": "error", "error": f"{type(exc).__name__}: {exc}", "tis": []}))
        return 0
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id).all()
        rows = [
            {
                "task_id": ti.task_id,
                "map_index": ti.map_index,
                "state": str(getattr(ti.state, "value", ti.state)),
                "try_number": ti.try_number,
                "rendered_map_index": ti.rendered_map_index,
            }
            for ti in tis
        ]
    state = run.state.value if hasattr(run.state, "value") else str(run.state)
    print("RESULT " + json.dumps({"state": state, "run_id": run.run_id, "tis": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
