"""One zero-shot evaluation script per data set (the released names), plus retrieval, segmentation and
detection. Each is thin: the command line lives in ace_lora.evaluation.command_line and ace_lora.params."""
