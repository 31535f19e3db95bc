"""Image-text retrieval: ranks, recall, precision and duplicate reports on hand-made embeddings, and the
script and training validation on the tiny model."""
import json

import numpy as np
import pandas as pd
import pytest

import train
from ace_lora.data.synthetic import write_demo_dataset
from ace_lora.errors import UserInputError
from ace_lora.evaluation.retrieval import ranks_of, retrieval_columns, retrieval_metrics
from zero_shot_eval import retrieval


def unit(*rows):
    x = np.array(rows, dtype=float)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ranks_count_wrong_items_scored_above_the_best_correct_one():
    similarity = np.array([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8], [0.7, 0.6, 0.4]])
    correct = np.eye(3, dtype=bool)
    np.testing.assert_array_equal(ranks_of(similarity, correct), [1, 2, 3])
    correct[2, 0] = True  # two correct items: the best of them counts
    assert ranks_of(similarity, correct)[2] == 1


def test_metrics_on_known_ranks_with_duplicate_reports_and_classes():
    # Three images; images 0 and 2 share the same report text (up to whitespace).
    images = unit([1, 0, 0], [0, 1, 0], [0.6, 0.8, 0])
    texts_emb = unit([1, 0.1, 0], [0.9, 1, 0], [1, 0.1, 0])
    texts = ["No acute process.", "Small effusion.", "No  acute process. "]
    result = retrieval_metrics(images, texts_emb, texts, classes=["normal", "effusion", "normal"],
                               image_ids=["a", "b", "c"])
    m = result.metrics
    assert m["n_images"] == 3 and m["n_distinct_reports"] == 2
    # image->text over the 2 distinct reports: a -> 'No acute' (rank 1); b -> 'Small effusion' (rank 1);
    # c (0.6, 0.8) scores 'Small effusion' higher than its own 'No acute' report: rank 2.
    assert result.ranks.query("direction == 'image_to_text'")["rank"].tolist() == [1, 1, 2]
    assert m["i2t_recall@1"] == pytest.approx(2 / 3) and m["i2t_recall@5"] == 1.0
    assert m["i2t_mean_rank"] == pytest.approx(4 / 3) and m["i2t_median_rank"] == 1.0
    # text->image: 'No acute' is correct for a and c, a scores highest: rank 1; 'Small effusion': b is
    # second after c (0.6*0.67 + 0.8*0.74 > 0.74): rank 2.
    t2i = result.ranks.query("direction == 'text_to_image'").set_index("query")["rank"]
    assert t2i.to_dict() == {"No acute process.": 1, "Small effusion.": 2}
    assert m["t2i_recall@1"] == 0.5 and m["t2i_mean_rank"] == 1.5
    # Precision@1 (class-aware): image c's top report is 'Small effusion' (class effusion) != normal.
    assert m["i2t_precision@1"] == pytest.approx(2 / 3)
    assert m["t2i_precision@1"] == pytest.approx(1 / 2)


def test_columns_are_found_or_named():
    assert retrieval_columns(["Path", "Sex", "Report Impression"]) == ("Path", "Report Impression")
    assert retrieval_columns(["image_path", "report", "split"]) == ("image_path", "report")
    with pytest.raises(UserInputError, match="no report text column"):
        retrieval_columns(["Path"], source="x.csv")
    with pytest.raises(UserInputError, match="no image column 'file'"):
        retrieval_columns(["Path", "report"], image_column="file")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return write_demo_dataset(str(tmp_path_factory.mktemp("data")), n_train=12, n_test_per_class=3)


def test_script_writes_metrics_and_ranks(tiny_model_name, demo_data, tmp_path):
    out = tmp_path / "out"
    assert retrieval.main(["--model", tiny_model_name, "--csv", demo_data.test_csv, "--output-dir", str(out),
                           "--device", "cpu", "--num-workers", "0", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["n_images"] == 15 and metrics["n_distinct_reports"] == 5  # one impression per class
    assert metrics["text_column"] == "Report Impression" and "i2t_precision@5" in metrics
    ranks = pd.read_csv(out / "ranks.csv")
    assert len(ranks) == 15 + 5 and ranks["rank"].between(1, 15).all()
    i2t = ranks[ranks["direction"] == "image_to_text"]["rank"]
    assert metrics["i2t_recall@1"] == pytest.approx((i2t <= 1).mean())


def test_retrieval_is_a_training_validation_task(tiny_model_name, demo_data, tmp_path):
    out = tmp_path / "run"
    train.main(["--model", tiny_model_name, "--train-csv", demo_data.train_csv, "--output-dir", str(out),
                "--batch-size", "4", "--epochs", "1", "--num-workers", "0", "--device", "cpu", "--no-progress",
                "--eval-datasets", f"retrieval:{demo_data.test_csv}"])
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= record["retrieval_i2t_recall@1"] <= 1 and record["retrieval_t2i_mean_rank"] >= 1
