"""`python -m ace_lora.sweep`: the sweep command (ace_lora.runners.sweep)."""
import sys

from ace_lora.runners.sweep import main

if __name__ == "__main__":
    sys.exit(main())
