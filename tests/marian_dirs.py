"""Marian (opus-mt) model directories for tests, made on the spot (no downloads): SentencePiece models
trained on a few hundred generated sentences, and a randomly initialised MarianMTModel of a given shape."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import torch

WORDS = (
    "ein eine der die das mann frau kind hund katze spielt läuft sitzt auf dem im park schnee ball rot blau "
    "großen kleinen zwei drei menschen straße wasser strand vor einem haus a the man woman child dog cat plays "
    "runs sits on in park snow ball red blue big small two three people street water beach in front of house ."
).split()

# two odd shapes: name -> (d_model, heads, encoder layers, decoder layers, d_ff, activation, shared vocabulary)
SHAPES = {"shared-swish": (48, 3, 2, 3, 80, "swish", True), "separate-gelu": (40, 5, 3, 1, 24, "gelu", False)}


def sentences(n: int, seed: int) -> list[str]:
    """Short sentences of the word list, capitalised as text is (with a few words SentencePiece has not seen)."""
    g = random.Random(seed)
    out = [" ".join(g.choice(WORDS) for _ in range(g.randint(2, 12))).capitalize() for _ in range(n)]
    return out + ["Zebras grasen (unbekannt) 42!", ">>deu<< Ein Hund.", ""]


def train_spm(lines: list[str], size: int) -> tuple[bytes, list[str]]:
    """A unigram SentencePiece model of ``size`` pieces, serialized, and its pieces by id."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=size, character_coverage=1.0, minloglevel=2
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    return buf.getvalue(), [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def marian_vocab(pieces: list[str], size: int) -> dict[str, int]:
    """Marian's layout: </s> 0, <unk> 1, the pieces, a language code, <pad> last (id size - 1: both sides of
    a model with separate vocabularies share the pad id)."""
    vocab = {"</s>": 0, "<unk>": 1}
    for p in pieces:
        if p != "<s>":
            vocab.setdefault(p, len(vocab))
    vocab[">>deu<<"] = len(vocab)
    while len(vocab) < size - 1:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    return vocab


EOS_BIAS = 6.0


def make_marian_dir(out: Path, shape: str) -> Path:
    """A MarianMTModel directory (config, weights, source.spm, target.spm, vocab.json) of ``shape``."""
    import transformers

    d, h, n_enc, n_dec, d_ff, act, shared = SHAPES[shape]
    out.mkdir(parents=True)
    text = sentences(300, 1)
    src_model, src_pieces = train_spm(text, 150)
    tgt_model, tgt_pieces = (src_model, src_pieces) if shared else train_spm(text[::-1] + sentences(100, 7), 120)
    (out / "source.spm").write_bytes(src_model)
    (out / "target.spm").write_bytes(tgt_model)
    size = max(len(src_pieces), len(tgt_pieces)) + 4
    vocab = marian_vocab(src_pieces, size)
    (out / "vocab.json").write_text(json.dumps(vocab))
    tok_config = {"tokenizer_class": "MarianTokenizer", "separate_vocabs": not shared}
    tgt_vocab = vocab
    if not shared:
        tgt_vocab = marian_vocab(tgt_pieces, size)
        (out / "target_vocab.json").write_text(json.dumps(tgt_vocab))
        tok_config["target_vocab_file"] = str(out / "target_vocab.json")
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config))
    cfg = transformers.MarianConfig(
        vocab_size=len(vocab),
        decoder_vocab_size=len(tgt_vocab),
        d_model=d,
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=h,
        decoder_attention_heads=h,
        encoder_ffn_dim=d_ff,
        decoder_ffn_dim=d_ff,
        max_position_embeddings=64,
        pad_token_id=vocab["<pad>"],
        decoder_start_token_id=vocab["<pad>"],
        eos_token_id=0,
        forced_eos_token_id=None,
        scale_embedding=True,
        activation_function=act,
        share_encoder_decoder_embeddings=shared,
        init_std=0.3,  # far from uniform logits, so greedy decoding takes varied paths
    )
    torch.manual_seed(0)
    model = transformers.MarianMTModel(cfg).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_(0, 0.5)
        model.final_logits_bias[0, 0] = EOS_BIAS  # </s> likely enough that outputs end at varied lengths
    model.save_pretrained(out)
    return out
