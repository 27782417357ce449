import pytest
import torch

from bottleneck_map.embedded_engine.core.sampler import (
    SamplingError,
    _filter_top_k_top_p,
    apply_penalties,
    sample,
    sample_one,
    stop_status,
)
from bottleneck_map.embedded_engine.core.sequence import RequestTrace, SamplingParams, Sequence, SequenceStatus


def _seq(params: SamplingParams, prompt=(1, 2, 3)) -> Sequence:
    return Sequence("r", list(prompt), params, RequestTrace(arrival_ns=0), 0)


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])
    seqs = [_seq(SamplingParams()), _seq(SamplingParams())]
    assert sample(logits, seqs) == [1, 0]


def test_top_k_keeps_only_k_tokens():
    logits = torch.tensor([1.0, 4.0, 3.0, 2.0])
    out = _filter_top_k_top_p(logits, 2, 1.0)
    assert torch.isinf(out[[0, 3]]).all() and torch.isfinite(out[[1, 2]]).all()


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    out = _filter_top_k_top_p(probs.log(), 0, 0.75)
    # 0.5 < 0.75 so the second token stays; 0.8 >= 0.75 so the third is dropped
    assert torch.isfinite(out[:2]).all() and torch.isinf(out[2:]).all()


def test_top_k_one_is_greedy_even_with_temperature():
    logits = torch.randn(100)
    p = SamplingParams(temperature=1.5, top_k=1)
    assert all(sample_one(logits, p) == int(logits.argmax()) for _ in range(20))


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    logits = torch.zeros(2, 1000)
    draws = []
    for seed in (7, 7, 8):
        seq = _seq(SamplingParams(temperature=1.0, seed=seed))
        draws.append([sample(logits[:1], [seq])[0] for _ in range(10)])
    assert draws[0] == draws[1]
    assert draws[0] != draws[2]


def test_temperature_sampling_follows_the_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([0.0, 1.0]).log_softmax(-1)  # not used directly
    logits = torch.tensor([0.25, 0.75]).log()
    p = SamplingParams(temperature=1.0)
    hits = sum(sample_one(logits, p) for _ in range(2000))
    assert 0.70 < hits / 2000 < 0.80


@pytest.mark.parametrize(
    ("params", "token", "expected"),
    [
        (SamplingParams(max_tokens=5), 2, SequenceStatus.FINISHED_STOPPED),  # eos
        (SamplingParams(max_tokens=5, ignore_eos=True), 2, None),
        (SamplingParams(max_tokens=5, stop_token_ids=(77,)), 77, SequenceStatus.FINISHED_STOPPED),
        (SamplingParams(max_tokens=1), 50, SequenceStatus.FINISHED_LENGTH),
        (SamplingParams(max_tokens=5), 50, None),
    ],
)
def test_stop_rules(params, token, expected):
    seq = _seq(params)
    seq.token_ids.append(token)
    assert stop_status(seq, token, eos_token_ids=(0, 2), max_model_len=100) == expected


def test_stop_at_max_model_len():
    seq = _seq(SamplingParams(max_tokens=50, ignore_eos=True))
    seq.token_ids.append(9)
    assert stop_status(seq, 9, (0,), max_model_len=4) == SequenceStatus.FINISHED_LENGTH


def test_invalid_params_are_rejected():
    nan, inf = float("nan"), float("inf")
    bad = [
        {"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": -2}, {"temperature": nan},
        {"temperature": inf}, {"top_p": nan}, {"min_p": 1.5}, {"presence_penalty": 2.5},
        {"frequency_penalty": -inf}, {"repetition_penalty": 0}, {"repetition_penalty": 1e-300},
        {"seed": 2**63}, {"seed": -(2**63) - 1},
    ]  # fmt: skip
    for kw in bad:
        with pytest.raises(ValueError):
            SamplingParams(**kw)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1e-300), SamplingParams(temperature=1.0, top_p=1e-300),
    SamplingParams(temperature=2.0, top_p=1e-45, top_k=1), SamplingParams(temperature=1.0, min_p=1.0),
    SamplingParams(temperature=1.0, top_k=1, seed=-(2**63)), SamplingParams(temperature=1.0, top_k=1, seed=2**63 - 1),
])  # fmt: skip
def test_extreme_but_valid_params_sample_the_most_likely_token(params):
    logits = torch.tensor([[1000.0, 999.0, -1000.0, 3.0]])
    (token,) = sample(logits, [_seq(params)])
    assert token == 0


def test_a_row_that_cannot_be_sampled_fails_alone():
    logits = torch.tensor([[0.0, 1.0, 2.0], [float("nan")] * 3, [2.0, 1.0, 0.0]])
    seqs = [
        _seq(SamplingParams(temperature=1.0, top_k=1)),
        _seq(SamplingParams(temperature=1.0)),
        _seq(SamplingParams()),
    ]
    out = sample(logits, seqs)
    assert out[0] == 2 and out[2] == 0
    assert isinstance(out[1], SamplingError) and "finite" in str(out[1])


def test_min_p_drops_tokens_below_its_share_of_the_top_probability():
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    p = SamplingParams(temperature=1.0, min_p=0.5)  # keeps tokens with probability >= 0.25
    assert {sample_one(logits, p) for _ in range(200)} == {0, 1}


def test_penalties_follow_vllm():
    seq = _seq(SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25), prompt=(0, 1))
    seq.token_ids += [2, 2]  # two output tokens, both id 2
    out = apply_penalties(torch.tensor([4.0, -4.0, 4.0, 4.0]), seq)
    # repetition over prompt and output (divide positive, multiply negative); presence + 2 x frequency on id 2
    assert out.tolist() == [2.0, -8.0, 2.0 - 0.5 - 0.5, 4.0]


def test_penalties_apply_to_greedy_rows_too():
    seq = _seq(SamplingParams(frequency_penalty=2.0), prompt=(5,))
    seq.token_ids.append(0)
    assert sample(torch.tensor([[1.0, 0.5, 0.0]]), [seq]) == [1]


def test_token_logprobs_are_the_raw_log_softmax_with_the_top_k():
    from bottleneck_map.embedded_engine.core.sampler import token_logprobs

    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    ref = torch.log_softmax(logits, dim=-1)
    own, top = token_logprobs(logits, 2, 2)
    assert own == pytest.approx(float(ref[2]))
    assert [t for t, _ in top] == [1, 2] and [v for _, v in top] == pytest.approx([float(ref[1]), float(ref[2])])
    assert token_logprobs(logits.half(), 3, 0) == (pytest.approx(float(ref[3]), abs=1e-3), ())
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=21)
