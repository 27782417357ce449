"""Decode attention read in place from the paged KV cache, on the CPU (float32).

PyTorch has no paged attention for the CPU: the portable path (:mod:`.attention`) gathers each
decoding sequence's K/V blocks into a buffer and calls SDPA on it, which moves every KV byte
three times and pays SDPA's per-call overhead for one query row. vLLM's CPU backend reads the
blocks in place with a kernel of its own; this module does the same with a small C++ loop,
compiled once per machine by :func:`torch.utils.cpp_extension.load_inline` (about 25 s, then
cached under torch's extensions directory) and loaded in well under a second afterwards.

For each sequence, the kernel walks its blocks through the block table and reads each token's
row of keys (every KV head, contiguous) once, scoring every query head against its KV head's
part; takes the softmax over the sequence's own length (no padding, no mask); then walks the
rows of values the same way, summing them with those weights. Its results match the SDPA path within float32 rounding.

:func:`decode_kernel` returns the compiled function, or None when it cannot be had (no C++
compiler, or ``BOTTLENECK_MAP_CPU_KERNEL=0``): the engine then keeps the portable path, and says
why once in its log.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "BOTTLENECK_MAP_CPU_KERNEL"

_SOURCE = r"""
#include <torch/extension.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// exp(x) for x <= 0 (softmax after subtracting the maximum), in a form the compiler vectorizes:
// 2^(x log2 e) = 2^n * 2^f with f in [-0.5, 0.5], 2^f by a degree-6 polynomial (relative error
// about 2e-7), 2^n through the exponent bits; below -87 it is 0.
static inline float exp_nonpositive(float x) {
  x = x < -87.f ? -87.f : x;
  const float t = x * 1.44269504088896341f;
  const float n = __builtin_roundf(t);
  const float f = t - n;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// q [B, H, D]; k_cache, v_cache [blocks, block_size, KV, D]; tables [B, W] int32; lens [B] int32.
torch::Tensor paged_decode(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                           torch::Tensor tables, torch::Tensor lens, double scale) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && k_cache.dtype() == torch::kFloat32 &&
              v_cache.dtype() == torch::kFloat32, "paged_decode: float32 tensors only");
  TORCH_CHECK(tables.dtype() == torch::kInt32 && lens.dtype() == torch::kInt32,
              "paged_decode: int32 block tables and lengths");
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && tables.dim() == 2 && lens.dim() == 1,
              "paged_decode: bad ranks");
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous() &&
              tables.is_contiguous() && lens.is_contiguous(), "paged_decode: contiguous tensors only");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t NB = k_cache.size(0), BS = k_cache.size(1), KV = k_cache.size(2), W = tables.size(1);
  TORCH_CHECK(k_cache.size(3) == D && v_cache.sizes() == k_cache.sizes() && H % KV == 0 &&
              tables.size(0) == B && lens.size(0) == B, "paged_decode: shapes do not agree");
  const int64_t G = H / KV;
  const float* qp = q.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* lp = lens.data_ptr<int32_t>();
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lp[b] >= 1 && lp[b] <= W * BS, "paged_decode: a length outside its block table");
    longest = std::max<int64_t>(longest, lp[b]);
  }
  for (int64_t i = 0; i < B * W; ++i)
    TORCH_CHECK(tp[i] >= 0 && tp[i] < NB, "paged_decode: a block id outside the cache");
  auto out = torch::empty_like(q);
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  const int64_t row = KV * D;  // one token's keys (or values), every KV head: contiguous
  std::vector<float> scores(H * longest), acc(H * D);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = lp[b];
    const int32_t* table = tp + b * W;
    const float* qb = qp + b * H * D;
    float* S = scores.data();
    // scores: each token's row of keys read once, block by block, for every query head
    for (int64_t j = 0, t = 0; t < L; ++j) {
      const float* kb = kp + static_cast<int64_t>(table[j]) * BS * row;
      for (int64_t o = 0; o < BS && t < L; ++o, ++t) {
        const float* k = kb + o * row;
        for (int64_t hq = 0; hq < H; ++hq) {
          const float* qh = qb + hq * D;
          const float* kh = k + (hq / G) * D;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < D; ++d) dot += qh[d] * kh[d];
          S[hq * L + t] = dot * sc;
        }
      }
    }
    for (int64_t hq = 0; hq < H; ++hq) {
      float* Sh = S + hq * L;
      const float mx = *std::max_element(Sh, Sh + L);
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t t = 0; t < L; ++t) {
        Sh[t] = exp_nonpositive(Sh[t] - mx);
        sum += Sh[t];
      }
      const float inv = 1.f / sum;
#pragma omp simd
      for (int64_t t = 0; t < L; ++t) Sh[t] *= inv;
    }
    // values: the same walk, each token's weights times its row of values
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t j = 0, t = 0; t < L; ++j) {
      const float* vb = vp + static_cast<int64_t>(table[j]) * BS * row;
      for (int64_t o = 0; o < BS && t < L; ++o, ++t) {
        const float* v = vb + o * row;
        for (int64_t hq = 0; hq < H; ++hq) {
          const float w = S[hq * L + t];
          const float* vh = v + (hq / G) * D;
          float* a = acc.data() + hq * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] += w * vh[d];
        }
      }
    }
    std::copy(acc.begin(), acc.end(), op + b * H * D);
  }
  return out;
}
"""


def _ninja_on_path() -> None:
    """torch builds with the ``ninja`` on PATH; the ``ninja`` package's, when the venv is not activated."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _built(name: str) -> bool:
    """Whether torch's extensions directory already holds the build of ``name``."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return (Path(_get_build_directory(name, verbose=False)) / f"{name}.so").is_file()
    except Exception:  # a private helper: when it moves, the notice is only shown once too often
        return False


def _cpu_tag() -> str:
    """The CPU's feature flags, hashed: a build with ``-march=native`` is only reused on a CPU like it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return hashlib.sha1((flags + _SOURCE).encode()).hexdigest()[:12]


@functools.cache
def decode_kernel() -> Callable | None:
    """The compiled ``paged_decode(q, k_cache, v_cache, tables, lens, scale)``, or None."""
    if os.environ.get(ENV, "1").strip() in ("0", "false", "no", "off"):
        log.info("paged CPU decode kernel off (%s=0): decode attention gathers the KV blocks", ENV)
        return None
    _ninja_on_path()
    name = f"bmap_paged_decode_{_cpu_tag()}"
    if not _built(name):  # a pause of half a minute deserves a word (WARNING: shown without log setup)
        log.warning("building the paged CPU decode kernel, once for this machine (about 30 s)")
    try:
        from torch.utils.cpp_extension import load_inline

        module = load_inline(
            name,
            cpp_sources=_SOURCE,
            functions=["paged_decode"],
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp-simd"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no headers, a failed build: the portable path serves
        log.warning(
            "paged CPU decode kernel unavailable (%s: %s); decode attention gathers the KV blocks instead",
            type(exc).__name__,
            str(exc).strip().splitlines()[-1] if str(exc).strip() else "",
        )
        return None
    return module.paged_decode
