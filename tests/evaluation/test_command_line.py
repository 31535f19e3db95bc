"""The zero-shot command line: every task's script and `ace-lora-zero-shot TASK` are the same command."""
import pytest

from ace_lora.evaluation.command_line import task_main, zero_shot_main
from ace_lora.evaluation.tasks import TASKS
from tests.conftest import error_exit_line


def test_the_task_comes_first_and_an_unknown_one_is_one_line(capsys):
    line = error_exit_line(capsys, zero_shot_main, ["pathology", "--csv", "x.csv"])
    assert line == ("error: give the task first: ace-lora-zero-shot {" + ",".join(TASKS) + "} [flags] (--help "
                    "after the task lists them)")


@pytest.mark.parametrize("task", list(TASKS))
def test_each_task_s_script_checks_its_flags_before_loading_anything(capsys, task):
    assert error_exit_line(capsys, task_main(task), ["--model", "local-dir:/nonexistent"]) == (
        "error: --csv is required (on the command line or as 'csv:' in --config)")
    assert error_exit_line(capsys, zero_shot_main, [task, "--csv", "x.csv", "--bootstrap", "-1"]) == (
        "error: --bootstrap must be >= 0 (0: no intervals), got -1")


def test_help_without_a_task_prints_the_tasks_and_every_script_takes_no_progress(capsys):
    assert zero_shot_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ace-lora-zero-shot {" + ",".join(TASKS) + "} [flags]")
    from ace_lora.params import parse_with_config
    from ace_lora.params.evaluation import zero_shot_parser
    assert all(parse_with_config(zero_shot_parser(task), ["--no-progress"]).progress is False for task in TASKS)
