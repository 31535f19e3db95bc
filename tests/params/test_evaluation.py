"""The evaluation command lines: every script that reads images takes the image-cache flags, fp32 by default."""
from ace_lora.evaluation.tasks import TASKS
from ace_lora.params import default_num_workers, parse_with_config
from ace_lora.params.evaluation import predict_parser, retrieval_parser, zero_shot_parser


def test_every_image_reading_script_takes_the_cache_flags_and_evaluates_in_fp32(tmp_path):
    parsers = [zero_shot_parser(name) for name in TASKS] + [retrieval_parser("r"), predict_parser("p")]
    base = {"zero": ["--csv", "x.csv"], "retrieval": ["--csv", "x.csv"], "predict": ["a.png", "--classes", "x"]}
    for parser in parsers:
        argv = base["predict" if parser is parsers[-1] else "retrieval" if parser is parsers[-2] else "zero"]
        args = parse_with_config(parser, argv + ["--image-cache", str(tmp_path), "--image-cache-rebuild"])
        assert args.image_cache == str(tmp_path) and args.image_cache_rebuild
        assert args.precision == "fp32" and args.num_workers == default_num_workers()
        assert parse_with_config(parser, argv).image_cache is None
