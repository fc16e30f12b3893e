"""metapeft's two DAGs for Apache Airflow 3: copy this file into your Airflow ``dags/`` folder (the scheduler, the DAG
processor and the workers need ``pip install 'metapeft[airflow]'``).

- ``metapeft_task``: profile → recommend → tune → register → monitor, for the task a run's conf names:
  ``airflow dags trigger metapeft_task --conf '{"task": "/data/reviews", "trials": 8}'``
- ``metapeft_meta``: bench the design's runs not yet done (one mapped task per run, spread over the workers) →
  retrain → evaluate → promote the selector.

The defaults below come from the environment the DAG processor parses this file in; each run's conf overrides any
of them (the DAG's parameters list them all, with help). The experience store and MLflow are left to each worker's
own ``METAPEFT_STORE`` and ``MLFLOW_TRACKING_URI`` (a parameter's default shows in Airflow's UI: keep passwords out).
"""

import os

from metapeft.orchestration.airflow import MetaDagOptions, TaskDagOptions, meta_dag, task_dag

env = os.environ.get

metapeft_task = task_dag(
    TaskDagOptions(task=env("METAPEFT_AIRFLOW_TASK"), trials=int(env("METAPEFT_AIRFLOW_TRIALS", "4")))
)
metapeft_meta = meta_dag(
    MetaDagOptions(suite=env("METAPEFT_AIRFLOW_SUITE"), design=env("METAPEFT_AIRFLOW_DESIGN")),
    schedule=env("METAPEFT_AIRFLOW_META_SCHEDULE"),  # e.g. @weekly; unset: runs are triggered
)
