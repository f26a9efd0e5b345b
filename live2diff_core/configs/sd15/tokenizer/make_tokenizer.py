#!/usr/bin/env python3
"""Regenerate the shipped SD1.5 CLIP tokenizer files (``vocab.json`` and ``merges.txt``) offline.

Stable Diffusion 1.x uses the original OpenAI CLIP byte-level BPE tokenizer (49408 tokens). No model hub is
reachable from this project's build machines, so the vocabulary is rebuilt from the original CLIP merge list
``bpe_simple_vocab_16e6.txt.gz`` as shipped inside the ``open_clip_torch`` wheel on PyPI (the wheel is only
downloaded, never installed, and is not a dependency of the pack).

How the CLIP vocabulary is defined (this is what the original CLIP ``SimpleTokenizer`` builds at start-up):

* the merge file's first line is a header; the next ``49152 - 256 - 2 = 48894`` lines are the merges used;
* ids ``0..255``: the 256 byte symbols of the GPT-2 style reversible byte->unicode table, in table order
  (printable bytes first, then the remapped ones);
* ids ``256..511``: the same 256 symbols with the end-of-word marker ``</w>`` appended;
* ids ``512..49405``: one token per merge, the concatenation of the merge's two parts, in merge order;
* ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407.

``merges.txt`` is written in the Hugging Face layout: a ``#version: 0.2`` header followed by the 48894 merges.
``tokenizer_config.json`` / ``special_tokens_map.json`` are small hand-written files next to this script (SD1.5
conventions: max length 77, lower-casing, ``<|endoftext|>`` as pad and unk token); this script does not touch them.

Usage::

    python make_tokenizer.py                       # pip-downloads open_clip_torch==3.3.0 (no deps) to a temp dir
    python make_tokenizer.py --bpe /path/to/bpe_simple_vocab_16e6.txt.gz
    python make_tokenizer.py --bpe /path/to/open_clip_torch-3.3.0-py3-none-any.whl
    python make_tokenizer.py --check               # only verify the files already here

The result is checked with ``transformers.CLIPTokenizer``: "a photo of a cat" must give
``[49406, 320, 1125, 539, 320, 2368, 49407]``.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPEN_CLIP_PIN = "open_clip_torch==3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
#: sha256 of ``bpe_simple_vocab_16e6.txt.gz`` (identical in the OpenAI CLIP repository and in open_clip).
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
NUM_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
EXPECTED = {"a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407]}


def byte_symbols() -> list[str]:
    """The 256 byte symbols of the reversible byte->unicode table, in vocabulary order.

    Printable latin-1 bytes ("!".."~", "¡".."¬", "®".."ÿ") stand for themselves and come first; every other
    byte ``b`` (control characters, space, ...) is given the code point ``256 + n`` (``n`` counting those bytes
    in increasing byte order) and comes after them.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    kept = set(printable)
    others = [b for b in range(256) if b not in kept]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def read_bpe_gz(source: Path) -> bytes:
    """Return the gzip bytes of the CLIP merge file from a ``.txt.gz`` file or from a wheel that contains it."""
    if source.suffix == ".whl" or zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(BPE_MEMBER)
    return source.read_bytes()


def download_bpe() -> bytes:
    """``pip download --no-deps`` the pinned open_clip_torch wheel into a temp dir and extract the merge file."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", OPEN_CLIP_PIN, "-d", tmp], check=True
        )
        (wheel,) = Path(tmp).glob("*.whl")
        return read_bpe_gz(wheel)


def build(gz_bytes: bytes) -> tuple[dict[str, int], list[str]]:
    """Vocabulary (token -> id) and the list of merges (``"a b"`` strings) as defined in the module docstring."""
    digest = hashlib.sha256(gz_bytes).hexdigest()
    if digest != BPE_SHA256:
        raise SystemExit(f"unexpected bpe_simple_vocab_16e6.txt.gz (sha256 {digest}, expected {BPE_SHA256})")
    lines = gzip.GzipFile(fileobj=io.BytesIO(gz_bytes)).read().decode("utf-8").split("\n")
    merges = lines[1 : 1 + NUM_MERGES]
    if len(merges) != NUM_MERGES or any(len(m.split()) != 2 for m in merges):
        raise SystemExit("merge file does not have the expected layout")
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(vocab) != 49408:
        raise SystemExit(f"vocabulary has {len(vocab)} distinct tokens for {len(tokens)} entries, expected 49408")
    return vocab, merges


def write(vocab: dict[str, int], merges: list[str], out: Path) -> None:
    """Write ``vocab.json`` (one entry per line, id order) and ``merges.txt`` (HF layout)."""
    body = ",\n".join(f"{json.dumps(tok, ensure_ascii=False)}: {idx}" for tok, idx in vocab.items())
    (out / "vocab.json").write_text("{\n" + body + "\n}\n", encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def check(folder: Path) -> None:
    """Tokenize the reference prompts with transformers' CLIPTokenizer (and the fast one when it is distinct)."""
    import transformers

    classes = [transformers.CLIPTokenizer]
    fast = getattr(transformers, "CLIPTokenizerFast", None)
    if fast is not None and fast is not transformers.CLIPTokenizer:
        classes.append(fast)
    for cls in classes:
        tok = cls.from_pretrained(str(folder))
        assert len(tok) == 49408, (cls.__name__, len(tok))
        assert tok.bos_token_id == 49406 and tok.eos_token_id == 49407 and tok.pad_token_id == 49407
        assert tok.model_max_length == 77
        for text, ids in EXPECTED.items():
            got = tok(text).input_ids
            assert got == ids, (cls.__name__, text, got)
        print(f"{cls.__module__}.{cls.__name__}: ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz, or an open_clip_torch wheel")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: next to this script)")
    parser.add_argument("--check", action="store_true", help="only check the existing files")
    args = parser.parse_args()
    if not args.check:
        vocab, merges = build(read_bpe_gz(args.bpe) if args.bpe else download_bpe())
        write(vocab, merges, args.out)
        print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}")
    check(args.out)


if __name__ == "__main__":
    main()
