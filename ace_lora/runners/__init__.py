"""Running many trainings and evaluations: sweeps (`sweep`), one multi-node training job (`submit`), the SLURM
layer both use (`cluster`, through submitit) and the child processes that run the scripts (`scripts`)."""
