"""Continuous batching (our engine) against Hugging Face transformers static-batch ``generate``.

Both run the same weights (a built-in preset's deterministic weights loaded into
``LlamaForCausalLM``), the same CPU thread count, and the same mixed-length offline
workload (every request present at t=0, ``ignore_eos`` so each request produces
exactly its requested output length). transformers gets batches of
``--hf-batch-size`` requests in arrival order, left-padded to the longest prompt and
run until the longest output in the batch: that is what static batching costs. Only
requested tokens count as output for either side.

    python benchmarks/bench_engine_vs_hf.py                       # scaled for a 2-core CPU
    python benchmarks/bench_engine_vs_hf.py --num-requests 64 --prompt-len 32:512 --output-len 16:256
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import torch


def _range(text: str) -> tuple[int, int]:
    lo, hi = (int(x) for x in text.split(":"))
    return lo, hi


def workload(n: int, prompt: tuple[int, int], output: tuple[int, int], vocab: int, seed: int):
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(*prompt))] for _ in range(n)]
    outputs = [rng.randint(*output) for _ in range(n)]
    return prompts, outputs


def run_ours(loaded, prompts, outputs, max_num_seqs: int, budget: int) -> tuple[float, int]:
    from bottleneck_map.embedded_engine.core.engine import LLMEngine
    from bottleneck_map.embedded_engine.core.engine_config import EngineConfig
    from bottleneck_map.embedded_engine.core.sequence import SamplingParams

    need = max(len(p) + o for p, o in zip(prompts, outputs, strict=True))
    cfg = EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, max_model_len=need + 16, device="cpu")
    engine = LLMEngine(loaded, cfg)
    engine.generate([prompts[0][:8]], SamplingParams(max_tokens=2))  # warm-up
    params = [SamplingParams(max_tokens=o, ignore_eos=True) for o in outputs]
    t0 = time.perf_counter()
    out = engine.generate(prompts, params)
    dt = time.perf_counter() - t0
    return dt, sum(len(o) for o in out)


def hf_model(loaded, preset: str):
    import transformers

    from bottleneck_map.embedded_engine.model.loader import PRESETS_DIR
    from bottleneck_map.embedded_engine.model.weights import random_hf_state

    config = transformers.AutoConfig.from_pretrained(PRESETS_DIR / preset)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = random_hf_state(loaded.config, seed=0)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "rotary" not in m and not (config.tie_word_embeddings and "lm_head" in m)]:
        raise SystemExit(f"weights do not map: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def run_hf(model, prompts, outputs, batch_size: int) -> tuple[float, int]:
    model.generate(torch.tensor([prompts[0][:8]]), max_new_tokens=2, do_sample=False, pad_token_id=1)  # warm-up
    produced = 0
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        batch, outs = prompts[i : i + batch_size], outputs[i : i + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[1] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        new = max(outs)
        with torch.inference_mode():
            gen = model.generate(
                ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=1
            )
        produced += sum(min(o, gen.shape[1] - width) for o in outs)
    return time.perf_counter() - t0, produced


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="built-in preset")
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--prompt-len", type=_range, default=(32, 256), help="MIN:MAX, uniform")
    ap.add_argument("--output-len", type=_range, default=(16, 128), help="MIN:MAX, uniform")
    ap.add_argument("--hf-batch-size", type=int, default=16)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bottleneck_map.embedded_engine.model.loader import load_model

    loaded = load_model(args.model, device="cpu", dtype="float32", seed=0)
    prompts, outputs = workload(
        args.num_requests, args.prompt_len, args.output_len, loaded.config.vocab_size, args.seed
    )
    print(
        f"model {args.model} ({loaded.config.num_parameters / 1e6:.1f} M params, float32), {args.threads} threads, "
        f"{args.num_requests} requests, prompts {args.prompt_len[0]}-{args.prompt_len[1]}, "
        f"outputs {args.output_len[0]}-{args.output_len[1]} ({sum(outputs)} output tokens)"
    )
    t_ours, n_ours = run_ours(loaded, prompts, outputs, args.max_num_seqs, args.max_num_batched_tokens)
    print(f"ours  continuous batching: {n_ours} tokens in {t_ours:7.2f} s = {n_ours / t_ours:8.1f} tok/s")
    sys.stdout.flush()
    model = hf_model(loaded, args.model)
    t_hf, n_hf = run_hf(model, prompts, outputs, args.hf_batch_size)
    print(f"hf    static batch of {args.hf_batch_size:>3}: {n_hf} tokens in {t_hf:7.2f} s = {n_hf / t_hf:8.1f} tok/s")
    ratio = (n_ours / t_ours) / (n_hf / t_hf)
    print(f"ratio ours / hf: {ratio:.2f}x (target >= 3x on CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
