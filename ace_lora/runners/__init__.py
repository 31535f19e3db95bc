"""How the parts of sweeps and jobs run: the scripts as child processes (`scripts`) and SLURM jobs through
submitit (`cluster`); the commands that use them are ace_lora.sweep and ace_lora.submit."""
