"""A small decoder-only transformer language model in Flax NNX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from root_optax.demo._config import Config
from root_optax.demo._data import VOCAB_SIZE

ADAMW_PARAMS = ("embed", "head", "norm")
"""Parameter-path patterns that the orthogonalizing optimizers send to AdamW: the
token and position embeddings, the output head and every norm scale. The
remaining 2-D kernels (attention and MLP projections) are the matrices."""


class CausalSelfAttention(nnx.Module):
    """Multi-head causal self-attention with one fused ``(d, 3d)`` projection."""

    def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(
                "root_optax.demo.TransformerLM: d_model must be divisible by "
                f"num_heads, got d_model={d_model}, num_heads={num_heads}."
            )
        self.num_heads = num_heads
        self.qkv = nnx.Linear(d_model, 3 * d_model, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(
            d_model,
            d_model,
            use_bias=False,
            kernel_init=nnx.initializers.zeros_init(),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, d_model = x.shape
        head_dim = d_model // self.num_heads
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.reshape(batch, length, d_model))


class Block(nnx.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
        self.attn_norm = nnx.RMSNorm(d_model, rngs=rngs)
        self.attn = CausalSelfAttention(d_model, num_heads, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(d_model, rngs=rngs)
        self.mlp_in = nnx.Linear(d_model, 4 * d_model, use_bias=False, rngs=rngs)
        self.mlp_out = nnx.Linear(
            4 * d_model,
            d_model,
            use_bias=False,
            kernel_init=nnx.initializers.zeros_init(),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))


class TransformerLM(nnx.Module):
    """Token + learned position embeddings, pre-norm blocks, final norm, head.

    The head is a separate (untied) ``(d_model, vocab_size)`` matrix; residual
    output projections start at zero, so the untrained model is a bigram model
    of the embeddings.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        max_len: int,
        rngs: nnx.Rngs,
    ):
        init = nnx.initializers.normal(stddev=0.02)
        self.token_embed = nnx.Embed(
            vocab_size, d_model, embedding_init=init, rngs=rngs
        )
        self.pos_embed = nnx.Embed(max_len, d_model, embedding_init=init, rngs=rngs)
        self.blocks = nnx.List(
            [Block(d_model, num_heads, rngs=rngs) for _ in range(num_layers)]
        )
        self.final_norm = nnx.RMSNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(
            d_model, vocab_size, use_bias=False, kernel_init=init, rngs=rngs
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Logits ``(batch, length, vocab_size)`` for int tokens ``(batch, length)``."""
        positions = jnp.arange(tokens.shape[-1])
        x = self.token_embed(tokens) + self.pos_embed(positions)[None]
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))


def loss_fn(model: TransformerLM, windows: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy in nats over ``windows`` ``(batch, L + 1)``."""
    logits = model(windows[:, :-1])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:])
    return losses.mean()


def build_model(cfg: Config) -> TransformerLM:
    """The model, initialised from ``cfg.seed`` (identical for every optimizer)."""
    return TransformerLM(
        vocab_size=VOCAB_SIZE,
        d_model=cfg.d_model,
        num_layers=cfg.layers,
        num_heads=cfg.heads,
        max_len=cfg.seq_len,
        rngs=nnx.Rngs(cfg.seed),
    )
