"""`python -m ace_lora.submit`: one training job on SLURM (ace_lora.runners.submit)."""
import sys

from ace_lora.runners.submit import main

if __name__ == "__main__":
    sys.exit(main())
