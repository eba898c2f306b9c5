"""``er-verl``: command-line entry point.

    er-verl prepare-gsm8k --src DIR --out DIR      GSM8K jsonl → verl parquet
    er-verl make-model --shape S --out DIR        offline tokenizer + random-init model
    er-verl simulate ...                          rollout latency with/without speculation (CPU)
    er-verl bench decode ...                      decode tokens/s: plain vs stock STANDALONE vs ours (GPU)
    er-verl bench rollout ...                     a GRPO-like rollout: plain, fixed K, gate, gate + bandit (GPU)
    er-verl quickstart [--work DIR] ...           build a small policy offline, GRPO it with both backends (GPU)
"""

import argparse
import sys


def _prepare_gsm8k(args) -> int:
    from er_verl.data.gsm8k import write_parquet

    for split, path in write_parquet(args.src, args.out, args.limit).items():
        print(f"{split}: {path}")
    return 0


def _make_model(args) -> int:
    from er_verl.data.gsm8k import read_jsonl
    from er_verl.models.tiny import build_random_model, build_tokenizer

    texts = (f"{ex['question']} {ex['answer']}" for ex in read_jsonl(args.text))
    tok_dir = f"{args.out}/tokenizer"
    build_tokenizer(texts, args.vocab_size, tok_dir)
    print(build_random_model(args.shape, tok_dir, args.out, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="er-verl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-gsm8k", help="convert GSM8K jsonl to verl parquet")
    p.add_argument("--src", required=True, help="folder with train.jsonl and test.jsonl")
    p.add_argument("--out", required=True, help="output folder for train.parquet and test.parquet")
    p.add_argument("--limit", type=int, default=None, help="keep only the first N examples per split")
    p.set_defaults(func=_prepare_gsm8k)

    p = sub.add_parser("make-model", help="build an offline tokenizer and a random-init model")
    p.add_argument("--shape", default="qwen2.5-0.5b", help="qwen2.5-0.5b or qwen3-8b")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--text", required=True, help="jsonl with question/answer fields to train the tokenizer on")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_model)

    try:
        from er_verl.control import simulate
    except ImportError:
        simulate = None
    if simulate is not None and hasattr(simulate, "add_arguments"):
        p = sub.add_parser("simulate", help="predict rollout latency with and without speculation (CPU)")
        simulate.add_arguments(p)
        p.set_defaults(func=simulate.main)
    from er_verl.quickstart import run as quickstart

    p = sub.add_parser("quickstart", help="offline: build a small policy, GRPO it with efficient_sglang and sglang")
    quickstart.add_arguments(p)
    p.set_defaults(func=quickstart.main)

    from er_verl.bench import decode

    p = sub.add_parser("bench", help="GPU benchmarks")
    bench = p.add_subparsers(dest="bench", required=True)
    p = bench.add_parser("decode", help="decode tokens/s: plain SGLang vs stock STANDALONE (fp8) vs er_verl")
    decode.add_arguments(p)
    p.set_defaults(func=_bench_decode, parser=p)

    from er_verl.bench import rollout

    p = bench.add_parser("rollout", help="a GRPO-like rollout timed for plain, fixed K, gate, gate + bandit")
    rollout.add_arguments(p)
    p.set_defaults(func=_bench_rollout, parser=p)
    return parser


def _bench_rollout(args) -> int:
    from er_verl.bench import rollout

    argv = sys.argv[3:] if sys.argv[1:3] == ["bench", "rollout"] else []
    return rollout.execute(args.parser, args, argv)


def _bench_decode(args) -> int:
    from er_verl.bench import decode

    argv = sys.argv[3:] if sys.argv[1:3] == ["bench", "decode"] else []
    return decode.execute(decode.normalize(args.parser, args), argv)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
