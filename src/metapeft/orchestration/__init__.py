"""Running metapeft from a workflow scheduler.

:mod:`metapeft.orchestration.airflow` builds Airflow 3 DAGs (TaskFlow API) from parameters: one that fine-tunes
for a task (profile → recommend → tune → register → monitor) and one that keeps the selector learning (bench
new runs → retrain → evaluate → promote). It needs the ``airflow`` extra (``pip install 'metapeft[airflow]'``);
this package itself imports nothing of Airflow.
"""
