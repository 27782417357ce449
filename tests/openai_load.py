"""A closed-loop load through the official ``openai`` client: ``concurrency`` workers each send
streaming completions back to back; every request's client-side TTFT and E2E are kept."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

TEXT = (
    "the model server answers requests while the scheduler batches sequences and the cache holds "
    "keys and values for every token of every running request across many layers of attention"
)
WORDS = tuple(TEXT.split())


@dataclass
class ClientRecord:
    ttft_s: float
    e2e_s: float
    chunks: int


def prompt_of(words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def run_load(
    base_url: str,
    model: str,
    *,
    requests: int,
    concurrency: int,
    prompt_words: tuple[int, int],
    max_tokens: int,
    seed: int = 0,
    timeout_s: float = 600.0,
) -> list[ClientRecord]:
    """Send ``requests`` streaming completions (prompts of ``prompt_words`` = (min, max) words,
    exactly ``max_tokens`` output tokens) with ``concurrency`` in flight."""
    import openai

    client = openai.OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key="none", timeout=timeout_s, max_retries=0)
    rng = random.Random(seed)
    jobs = [prompt_of(rng.randint(*prompt_words), seed * 100_003 + i) for i in range(requests)]
    lock = threading.Lock()
    out: list[ClientRecord] = []
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if not jobs or errors:
                    return
                prompt = jobs.pop()
            try:
                t0 = time.perf_counter()
                first = None
                chunks = 0
                stream = client.completions.create(
                    model=model,
                    prompt=prompt,
                    max_tokens=max_tokens,
                    temperature=0.0,
                    stream=True,
                    extra_body={"ignore_eos": True, "min_tokens": max_tokens},
                )
                for _ in stream:
                    chunks += 1
                    if first is None:
                        first = time.perf_counter()
                end = time.perf_counter()
                with lock:
                    out.append(ClientRecord((first or end) - t0, end - t0, chunks))
            except BaseException as exc:  # noqa: BLE001 - reported to the caller below
                with lock:
                    errors.append(exc)
                return

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out
