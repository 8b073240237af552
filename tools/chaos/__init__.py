"""`make chaos`: the demo pipeline under a real Airflow (scheduler + LocalExecutor + triggerer),
with one task process SIGKILLed at a random point of each run, then a check that nothing was
lost or duplicated and no transform job was left running.

Modules: `airflow_stack` (the Airflow components as subprocesses, its REST API), `procs` (find
and kill task processes), `kills` (where and when to kill), `checks` (pure accounting),
`runner` (one run after another), `cli` (the command).
"""
