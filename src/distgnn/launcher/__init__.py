"""The `launch` command: plan (pure data) -> runners (local, ssh) -> supervision -> RunResult.

    config.py       LaunchConfig, the validated user choices
    plan.py         plan_run / RunPlan / ProcessSpec, format_plan, plan_to_json (pure)
    runner.py       LocalRunner, SshRunner (OpenSSH, batch mode, host keys checked)
    remote_exec.py  remote wrapper: stops its command's group when ssh's stdin closes
    probe.py        per-host pre-flight: ports free, address is the host's, GPU count
    supervise.py    Supervisor, RunResult, ProcessFailure, the root-cause report
    monitor.py      the launcher's own /metrics and the run's Prometheus targets file
    rundir.py       the run folder's layout (plan.json, logs/, status.json)
    run.py          one launch end to end
    cli.py          `launch` argv -> LaunchConfig -> run
"""
