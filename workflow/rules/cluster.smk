# Before the first sbatch: the SLURM profile's partitions and account must exist on the cluster,
# else the run stops with the setting to change (saelab.cluster).
from saelab.cluster import (
    PROFILE,
    ClusterSettingsError,
    check_slurm_settings,
    cluster_partitions,
    partition_file_names,
    user_accounts,
)


def check_slurm_profile():
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm":
        return
    try:
        check_slurm_settings(
            *profile_partitions_and_accounts(),
            known_partitions=cluster_partitions(),
            known_accounts=user_accounts(),
        )
    except ClusterSettingsError as err:
        raise WorkflowError(str(err)) from None


def profile_partitions_and_accounts():
    """Partitions and accounts the run would submit to, each with where it is set."""
    partitions, accounts = {}, {}
    partition_file = getattr(workflow.executor_settings, "partition_config", None)
    if partition_file:
        for name in partition_file_names(partition_file):
            partitions[name] = (
                f"{partition_file} (the profile's slurm-partition-config)"
            )
    for job in workflow.dag.needrun_jobs():
        for key, found in (
            ("slurm_partition", partitions),
            ("slurm_account", accounts),
        ):
            value = job.resources.get(key)
            if value:
                found.setdefault(
                    str(value),
                    f"{PROFILE} (default-resources, or --set-resources {key})",
                )
    return partitions, accounts


onstart:
    check_slurm_profile()
