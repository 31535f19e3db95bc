"""Training runs: from the parsed command line (`launch`) to the epoch loop (`loop`) and its step (`step`),
with the run's state, folder, interrupts, processes (`distributed`), logs and the demo."""
