"""The peer group's tag and count, from environments recorded under real launchers
(shared/SLURM-MPI.md) and from the documented variables of the others."""

import pytest

from chjoin.log import Fatal
from chjoin.peers import Process, expand_tasks_per_node, find

PROC = Process(ppid=4242, hostname="c2.cluster", hydra_proxy=0)

# srun -n 4 on one node, rank 0 (recorded)
SRUN_1NODE = {"SLURM_JOB_ID": "8", "SLURM_JOBID": "8", "SLURM_STEP_ID": "0", "SLURM_STEPID": "0",
              "SLURM_STEP_TASKS_PER_NODE": "4", "SLURM_TASKS_PER_NODE": "4", "SLURM_NODEID": "0",
              "SLURM_CPUS_ON_NODE": "4", "SLURM_LOCALID": "0", "SLURM_PROCID": "0"}

# srun -N3 -n7 --exclusive, a rank on c3 (recorded: node 2 has 2 tasks, 2 CPUs)
SRUN_3NODES_C3 = {"SLURM_JOB_ID": "25", "SLURM_STEP_ID": "0", "SLURM_NODEID": "2",
                  "SLURM_STEP_TASKS_PER_NODE": "3,2(x2)", "SLURM_TASKS_PER_NODE": "3,2(x2)",
                  "SLURM_CPUS_ON_NODE": "2", "SLURM_JOB_CPUS_PER_NODE": "4(x3)"}

# mpirun --oversubscribe -n 4 on one node (recorded, Open MPI 4.1.4)
MPIRUN = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
          "OMPI_COMM_WORLD_LOCAL_RANK": "1", "PMIX_NAMESPACE": "1371865089", "PMIX_RANK": "1",
          "OMPI_MCA_orte_hnp_uri": "1371865088.0;tcp://192.0.2.2:34753"}

# mpirun -n 7 inside salloc -N3: the orted daemons are a one-task-per-node Slurm step, and the
# ranks inherit that step's variables (recorded: LOCAL_SIZE 3/2/2)
MPIRUN_IN_SLURM = {**MPIRUN, "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "SLURM_JOB_ID": "31",
                   "SLURM_STEP_ID": "0", "SLURM_STEP_TASKS_PER_NODE": "1(x3)",
                   "SLURM_NODEID": "1", "SLURM_CPUS_ON_NODE": "4"}

# mpirun.mpich -n 4 (recorded, MPICH 4.0.2 hydra)
HYDRA = {"PMI_RANK": "2", "PMI_SIZE": "4", "PMI_FD": "6", "MPI_LOCALNRANKS": "4",
         "MPI_LOCALRANKID": "2"}

# srun --mpi=pmix, rank 3 on c2 (recorded): no PMIX_LOCAL_SIZE, so Slurm counts
SRUN_PMIX = {"SLURM_JOB_ID": "40", "SLURM_STEP_ID": "0", "SLURM_NODEID": "1",
             "SLURM_STEP_TASKS_PER_NODE": "1,2(x2)", "PMIX_RANK": "3",
             "PMIX_NAMESPACE": "slurm.pmix.40.0", "SLURM_MPI_TYPE": "pmix"}


@pytest.mark.parametrize("text, counts", [
    ("4", [4]), ("3,2(x2)", [3, 2, 2]), ("2(x3),1", [2, 2, 2, 1]), ("1(x3)", [1, 1, 1]),
])
def test_slurm_compressed_task_list_expands_one_entry_per_node(text, counts):
    assert expand_tasks_per_node(text) == counts


@pytest.mark.parametrize("text", ["", "a", "2,,3", "2(x)", "2(x3", "2(x3)z", "(x2)", "2(y2)"])
def test_a_malformed_slurm_task_list_is_named_in_the_error(text):
    with pytest.raises(Fatal) as error:
        expand_tasks_per_node(text)
    assert str(error.value) == f"SLURM_STEP_TASKS_PER_NODE: can't parse {text!r}"


def test_srun_one_node_counts_this_step_and_tags_job_and_step():
    group = find(SRUN_1NODE, PROC)
    assert (group.tag, group.count) == ("slurm.8.0", 4)
    assert group.count_source.startswith("Slurm: SLURM_STEP_TASKS_PER_NODE")


def test_srun_counts_this_nodes_tasks_not_the_first_nodes():
    assert find(SRUN_3NODES_C3, PROC).count == 2
    assert find({**SRUN_3NODES_C3, "SLURM_NODEID": "0"}, PROC).count == 3


def test_two_jobs_with_the_same_step_number_get_different_tags():
    other = {**SRUN_1NODE, "SLURM_JOB_ID": "9", "SLURM_JOBID": "9"}
    assert find(SRUN_1NODE, PROC).tag != find(other, PROC).tag


def test_heterogeneous_components_get_different_tags():
    first = find({**SRUN_1NODE, "SLURM_HET_JOB_OFFSET": "0"}, PROC)
    second = find({**SRUN_1NODE, "SLURM_HET_JOB_OFFSET": "1"}, PROC)
    assert first.tag != second.tag


def test_mpirun_uses_local_size_and_pmix_namespace():
    group = find(MPIRUN, PROC)
    assert (group.tag, group.count) == ("ompi.1371865089", 4)
    assert group.count_source == "Open MPI: OMPI_COMM_WORLD_LOCAL_SIZE"


def test_mpirun_inside_slurm_job_wins_over_the_daemons_step():
    group = find(MPIRUN_IN_SLURM, PROC)
    assert (group.tag, group.count) == ("ompi.1371865089", 2)


def test_hydra_counts_local_ranks_and_tags_by_proxy():
    group = find(HYDRA, Process(ppid=77, hydra_proxy=70))
    assert (group.tag, group.count) == ("hydra.70", 4)


def test_hydra_without_a_proxy_falls_back_to_the_parent_pid():
    assert find(HYDRA, Process(ppid=77)).tag == "ppid.77"


def test_srun_pmix_without_local_size_is_counted_by_slurm():
    group = find(SRUN_PMIX, PROC)
    assert (group.tag, group.count) == ("slurm.40.0", 2)


def test_pmix_local_size_counts_when_set():
    group = find({"PMIX_NAMESPACE": "prterun-vm-19461@1", "PMIX_LOCAL_SIZE": "3"}, PROC)
    assert (group.tag, group.count) == ("pmix.prterun-vm-19461@1", 3)


def test_cray_pals():
    group = find({"PALS_LOCAL_SIZE": "8", "PALS_APID": "abc-123", "PALS_RANKID": "5"}, PROC)
    assert (group.tag, group.count) == ("pals.abc-123", 8)


def test_flux_on_one_node_counts_the_job():
    env = {"FLUX_JOB_ID": "f3ETxsR9H", "FLUX_JOB_SIZE": "4", "FLUX_JOB_NNODES": "1",
           "FLUX_TASK_RANK": "2", "FLUX_TASK_LOCAL_ID": "2"}
    assert (find(env, PROC).tag, find(env, PROC).count) == ("flux.f3ETxsR9H", 4)


def test_flux_even_spread_divides_and_uneven_is_refused():
    env = {"FLUX_JOB_ID": "f1", "FLUX_JOB_SIZE": "6", "FLUX_JOB_NNODES": "3"}
    assert find(env, PROC).count == 2
    with pytest.raises(Fatal, match="per-node count is unknown; give --join-ct"):
        find({**env, "FLUX_JOB_SIZE": "7"}, PROC)
    assert find({**env, "FLUX_JOB_SIZE": "7"}, PROC, count=3).count == 3


def test_lsf_counts_this_host_in_the_host_list():
    env = {"LSB_JOBID": "1234", "LSB_MCPU_HOSTS": "c1 4 c2 2 c3 1"}
    group = find(env, PROC)
    assert (group.tag, group.count) == ("lsf.1234", 2)


def test_lsf_array_elements_get_different_tags():
    env = {"LSB_JOBID": "1234", "LSB_MCPU_HOSTS": "c2 2"}
    assert find({**env, "LSB_JOBINDEX": "1"}, PROC).tag != find({**env, "LSB_JOBINDEX": "2"},
                                                                 PROC).tag


def test_slurm_cpus_on_node_is_the_last_resort():
    env = {"SLURM_JOB_ID": "5", "SLURM_CPUS_ON_NODE": "3", "SLURM_TASKS_PER_NODE": "3"}
    group = find(env, PROC)
    assert (group.tag, group.count, group.count_source) == ("slurm.5", 3, "SLURM_CPUS_ON_NODE")


def test_command_line_wins_over_the_environment():
    group = find(SRUN_1NODE, PROC, tag="mine", count=2)
    assert (group.tag, group.tag_source, group.count, group.count_source) == \
        ("mine", "command line", 2, "command line")


def test_command_line_count_keeps_the_launchers_tag():
    assert find(SRUN_1NODE, PROC, count=2).tag == "slurm.8.0"


def test_parent_pid_is_the_last_resort_tag():
    group = find({}, PROC, count=2)
    assert (group.tag, group.tag_source) == ("ppid.4242", "parent pid")


@pytest.mark.parametrize("env, count", [({}, None), ({}, 0), ({}, -1),
                                        ({"SLURM_CPUS_ON_NODE": "0"}, None)])
def test_no_valid_size(env, count):
    with pytest.raises(Fatal, match="^join: no valid peer group size found$"):
        find(env, PROC, count=count)


def test_environment_counts_may_carry_trailing_text_like_ch_run():
    assert find({"SLURM_CPUS_ON_NODE": "1foo"}, PROC).count == 1


def test_environment_count_without_digits_names_the_variable():
    with pytest.raises(Fatal, match="^SLURM_CPUS_ON_NODE: no digits found$"):
        find({"SLURM_CPUS_ON_NODE": "a"}, PROC)


def test_empty_tag_is_refused():
    with pytest.raises(Fatal, match="^join: peer group tag cannot be empty string$"):
        find({}, PROC, tag="", count=1)
