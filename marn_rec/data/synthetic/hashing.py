"""Seeded randomness of the generator: counter-based hashes and derived seeds.

Per-item and per-user quantities (image noise, title words, shop, brand, user interests) are hashes
of ``(seed, tag, key)``, so they need no per-item table and are the same in every batch. Each such
quantity has its own tag below; per-batch ``torch.Generator`` seeds derive from
``(seed, split tag, batch index)`` (split tags 1 and 2, in :mod:`.config`).

The hashes use only integer ops, additions and multiplications, so a key's value does not depend on
where it sits in a tensor: an item's features are bit-identical whatever else is in the batch.
"""

import math

import torch

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF

# Hash streams: each per-item or per-user random quantity has its own salt.
_TAG_CATALOG, _TAG_ID_MAP, _TAG_USER, _TAG_FAVORITE = 11, 12, 13, 14
_TAG_SHOP, _TAG_BRAND, _TAG_SHOP_BIAS, _TAG_BRAND_BIAS = 21, 22, 23, 24
_TAG_IMAGE_NOISE, _TAG_STAT_NOISE = 31, 32
_TAG_IMAGE_GROUP = 37
_TAG_TITLE_LENGTH, _TAG_TITLE_KIND, _TAG_TITLE_DIM, _TAG_TITLE_SLOT = 41, 42, 43, 44
# Per-item modality quality (SyntheticTaobaoConfig's quality knobs), one uniform per item each.
_TAG_IMAGE_QUALITY, _TAG_TITLE_QUALITY, _TAG_STAT_QUALITY = 35, 45, 36


def _mix32(x):
    """Avalanche of a 32-bit value (lowbias32-style) for Python ints and int64 tensors alike.

    Multipliers stay below 2**31, so products of 32-bit values fit in int64 without relying on
    signed overflow.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x68E31DA5) & _MASK32
    return x ^ (x >> 16)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _derive_seed(*parts: int) -> int:
    """A 64-bit seed that depends on every part (seed, tags, batch index)."""
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (p & _MASK64))
    return h


def _hash_bits(keys: torch.Tensor, salt: int) -> torch.Tensor:
    """32 pseudo-random bits (int64) per non-negative int64 key; a pure function of (key, salt)."""
    k = keys.long()
    x = _mix32((k & _MASK32) ^ (salt & _MASK32))
    x = _mix32(x ^ ((k >> 32) & _MASK32))
    return _mix32(x ^ ((salt >> 32) & _MASK32))


def _hash_uniform(keys: torch.Tensor, salt: int) -> torch.Tensor:
    """Uniform float32 in the open interval (0, 1) per key (top 24 bits, exact in float32)."""
    return ((_hash_bits(keys, salt) >> 8).float() + 0.5) * (2.0**-24)


def _hash_normal(keys: torch.Tensor, salt: int) -> torch.Tensor:
    """About standard normal float32 per key: Irwin-Hall sum of 4 hashed uniforms, rescaled.

    Only additions and multiplications, so a key's value is bit-identical wherever it sits in a
    tensor (vectorised log/cos may differ from their scalar tails in the last bit). Range +-3.46.
    """
    total = _hash_uniform(keys, _derive_seed(salt, 0))
    for j in range(1, 4):
        total = total + _hash_uniform(keys, _derive_seed(salt, j))
    return (total - 2.0) * math.sqrt(3.0)


def _categorical(probs: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws from a 1-d probability vector (works for ``n == 0``, unlike multinomial)."""
    cdf = torch.cumsum(probs.double(), 0)
    u = torch.rand(n, generator=generator, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.numel() - 1)
