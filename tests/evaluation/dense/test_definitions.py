"""The dense task definitions: their layouts name the columns the benchmarks read, and every default is a flag."""
from ace_lora.evaluation.dense.definitions import DENSE_TASKS, RSNA_DETECTION, SIIM_SEGMENTATION, VALIDATION_SCORES
from ace_lora.params.dense import dense_parser, parse_dense_args


def test_layouts_list_the_columns_they_read():
    for layout in (SIIM_SEGMENTATION, RSNA_DETECTION):
        read = [layout.id_column, layout.image_column, layout.mask_column, layout.label_column, layout.boxes_column]
        assert {c for c in read if c} <= set(layout.columns), layout
    assert SIIM_SEGMENTATION.mask_column and not SIIM_SEGMENTATION.boxes_column
    assert RSNA_DETECTION.boxes_column and not RSNA_DETECTION.mask_column


def test_every_default_is_a_flag_and_the_demo_defaults_apply():
    assert set(VALIDATION_SCORES) == set(DENSE_TASKS)
    for name, task in DENSE_TASKS.items():
        flags = {action.dest for action in dense_parser(name)._actions}
        assert set(task.defaults) <= flags and set(task.demo_defaults) <= flags, name
        real, demo = parse_dense_args(name, []), parse_dense_args(name, ["--demo"])
        assert all(getattr(real, k) == v for k, v in task.defaults.items())
        assert all(getattr(demo, k) == v for k, v in task.demo_defaults.items())
        assert parse_dense_args(name, ["--demo", "--epochs", "3"]).epochs == 3  # flags still win
